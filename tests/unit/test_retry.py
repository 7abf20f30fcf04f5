"""Retry policies: the delay stays within the documented bounds, layers override field by
field, and bad policies are refused with one violation per field."""

from __future__ import annotations

import random

import pytest

from conveyor.errors import InvalidArgument
from conveyor.jobs.model import spec_from_proto
from conveyor.jobs.retry import RetryOverrides, RetryPolicy, retry
from conveyor.v1 import job_pb2, job_service_pb2


def test_delays_grow_by_the_multiplier_up_to_the_cap_within_the_jitter_band() -> None:
    policy = RetryPolicy(initial_ms=100, max_ms=1000, multiplier=3.0, jitter=0.25)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 100), (2, 300), (3, 900), (4, 1000), (50, 1000)]:
        assert policy.ceiling_ms(attempt) == ceiling
        delays = [policy.delay_ms(attempt, rng) for _ in range(2000)]
        assert min(delays) >= ceiling * 0.75 and max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling * 0.2, "the jitter is actually random"


def test_no_jitter_means_exact_delays() -> None:
    policy = RetryPolicy(initial_ms=250, max_ms=10_000, multiplier=2.0, jitter=0.0)
    assert [policy.delay_ms(n) for n in (1, 2, 3)] == [250, 500, 1000]


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert RetryPolicy(1000, 5000, 100.0, 0.0).delay_ms(10_000) == 5000


def test_overrides_layer_field_by_field_and_keep_max_above_initial() -> None:
    base = RetryPolicy(initial_ms=1000, max_ms=300_000, multiplier=2.0, jitter=0.5)
    typed = retry(initial=2, jitter=0.0).over(base)
    assert typed == RetryPolicy(2000, 300_000, 2.0, 0.0)
    request = RetryOverrides(max_ms=500).over(typed)
    assert request == RetryPolicy(2000, 2000, 2.0, 0.0)


def test_a_submitted_policy_is_validated_field_by_field() -> None:
    req = job_service_pb2.SubmitJobRequest(type="noop")
    req.retry.CopyFrom(job_pb2.RetryPolicy(multiplier=0.5, jitter=1.5))
    req.retry.initial_backoff.seconds = -1
    with pytest.raises(InvalidArgument) as bad:
        spec_from_proto(req, max_payload_bytes=1024)
    assert {v.field for v in bad.value.violations} == {
        "retry.initial_backoff",
        "retry.multiplier",
        "retry.jitter",
    }


def test_a_policy_changes_the_idempotency_fingerprint() -> None:
    plain = job_service_pb2.SubmitJobRequest(type="noop", idempotency_key="k")
    tuned = job_service_pb2.SubmitJobRequest(type="noop", idempotency_key="k")
    tuned.retry.jitter = 0.0
    a = spec_from_proto(plain, max_payload_bytes=1024)
    b = spec_from_proto(tuned, max_payload_bytes=1024)
    assert a.request_hash() != b.request_hash()


def test_a_handler_policy_with_bad_fields_fails_at_import() -> None:
    with pytest.raises(ValueError, match="multiplier"):
        retry(multiplier=0.5)
