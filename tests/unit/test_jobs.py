"""The job model: validation of submit requests and the wire and hot-state round trips."""

from __future__ import annotations

import pytest
from google.protobuf import timestamp_pb2

from conveyor.errors import InvalidArgument
from conveyor.jobs.model import (
    FALLBACK_RETRY,
    Job,
    JobDefaults,
    JobSpec,
    JobState,
    now_ms,
    spec_from_proto,
    valid_job_id,
)
from conveyor.v1 import job_service_pb2 as pb

DEFAULTS = JobDefaults(3, 1000, FALLBACK_RETRY)


def violations(request: pb.SubmitJobRequest, limit: int = 1024) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        spec_from_proto(request, max_payload_bytes=limit)
    return {v.field: v.description for v in caught.value.violations}


def test_defaults_fill_in_queue_and_priority() -> None:
    spec = spec_from_proto(pb.SubmitJobRequest(type="noop"), max_payload_bytes=1024)
    assert spec == JobSpec(type="noop", queue="default", priority=5)


def test_priority_zero_is_kept_not_defaulted() -> None:
    spec = spec_from_proto(pb.SubmitJobRequest(type="noop", priority=0), max_payload_bytes=1024)
    assert spec.priority == 0


def test_every_bad_field_is_reported_at_once() -> None:
    request = pb.SubmitJobRequest(
        type="no spaces allowed",
        queue="{hash-tag}",
        priority=10,
        max_attempts=101,
        idempotency_key="k" * 257,
    )
    request.timeout.FromSeconds(-1)
    bad = violations(request)
    assert set(bad) == {"type", "queue", "priority", "max_attempts", "idempotency_key", "timeout"}


def test_missing_type_is_required() -> None:
    assert violations(pb.SubmitJobRequest()) == {"type": "required"}


def test_payload_over_the_limit_is_refused() -> None:
    request = pb.SubmitJobRequest(type="noop")
    request.payload.update({"blob": "x" * 2000})
    assert "payload" in violations(request, limit=1024)


def test_run_at_more_than_a_year_ahead_is_refused() -> None:
    request = pb.SubmitJobRequest(type="noop")
    request.run_at.CopyFrom(timestamp_pb2.Timestamp(seconds=now_ms() // 1000 + 400 * 86400))
    assert "run_at" in violations(request)


def test_future_run_at_makes_a_scheduled_job() -> None:
    now = now_ms()
    job = JobSpec(type="noop", run_at=now + 60_000).new_job(
        "alice", defaults=JobDefaults(3, 1000, FALLBACK_RETRY), now=now
    )
    assert job.state is JobState.SCHEDULED
    assert job.run_at == now + 60_000
    past = JobSpec(type="noop", run_at=now - 60_000).new_job(
        "alice", defaults=JobDefaults(3, 1000, FALLBACK_RETRY), now=now
    )
    assert past.state is JobState.QUEUED and past.run_at == now


def test_request_hash_tells_requests_apart() -> None:
    a = JobSpec(type="noop", payload={"n": 1}, idempotency_key="k")
    assert (
        a.request_hash()
        == JobSpec(type="noop", payload={"n": 1}, idempotency_key="x").request_hash()
    )
    assert a.request_hash() != JobSpec(type="noop", payload={"n": 2}).request_hash()


def make_job() -> Job:
    return JobSpec(type="sleep", payload={"seconds": 1.5, "tags": ["a"]}).new_job(
        "alice", defaults=JobDefaults(3, 5000, FALLBACK_RETRY), now=now_ms()
    )


def test_hot_state_round_trip_keeps_every_field() -> None:
    job = make_job()
    job.attempt, job.progress, job.progress_message, job.error = 2, 42.5, "half", "boom"
    job.trace_parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    hot = {k: str(v) for k, v in job.to_hot().items()}
    back = Job.from_hot(hot)
    job.request_hash = ""
    assert back == job


def test_proto_carries_ids_states_and_times() -> None:
    job = make_job()
    msg = job.to_proto()
    assert valid_job_id(msg.id) and msg.owner == "alice"
    assert msg.state == JobState.QUEUED.value
    assert msg.create_time.ToMilliseconds() == job.create_time
    assert msg.timeout.ToMilliseconds() == 5000
    assert dict(msg.payload)["seconds"] == 1.5
    assert not msg.HasField("start_time")


def test_job_ids_are_uuid7_and_unique() -> None:
    ids = {make_job().id for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i[14] == "7" for i in ids)
    assert not valid_job_id("not-a-uuid") and not valid_job_id("")


@pytest.mark.parametrize("text", ["\x00", "a\x00", "\\\x00", "\\\\\x00"])
def test_payload_with_a_nul_is_refused(text: str) -> None:
    """Guards PostgreSQL: jsonb cannot store NUL, so it is refused at submit, anywhere."""
    request = pb.SubmitJobRequest(type="noop")
    request.payload.update({"nested": {"list": [text]}})
    assert violations(request) == {"payload": "must not contain NUL characters"}
    request = pb.SubmitJobRequest(type="noop")
    request.payload.update({text: 1})
    assert violations(request) == {"payload": "must not contain NUL characters"}


@pytest.mark.parametrize("text", ["\\u0000", "\\\\\\u0000", "u0000", "\\"])
def test_payload_with_the_text_of_an_escape_is_kept(text: str) -> None:
    """Guards against the false alarm the fuzz suite found: a backslash followed by
    "u0000" is six ordinary characters, not a NUL."""
    request = pb.SubmitJobRequest(type="noop")
    request.payload.update({text: text})
    spec = spec_from_proto(request, max_payload_bytes=1024)
    assert spec.payload == {text: text}


def test_a_delay_runs_the_job_that_long_after_acceptance() -> None:
    """Guards `delay`: SCHEDULED until acceptance + delay; exclusive with run_at; the
    request hash (idempotent retries) does not depend on when it was accepted."""
    request = pb.SubmitJobRequest(type="noop", idempotency_key="k")
    request.delay.FromMilliseconds(1500)
    spec = spec_from_proto(request, max_payload_bytes=1024)
    job = spec.new_job("alice", defaults=DEFAULTS, now=10_000)
    assert job.state is JobState.SCHEDULED and job.run_at == 11_500
    later = spec.new_job("alice", defaults=DEFAULTS, now=20_000)
    assert later.request_hash == job.request_hash
    both = pb.SubmitJobRequest(type="noop")
    both.delay.FromMilliseconds(10)
    both.run_at.FromMilliseconds(10)
    assert violations(both) == {"delay": "set run_at or delay, not both"}
    negative = pb.SubmitJobRequest(type="noop")
    negative.delay.FromMilliseconds(-5)
    assert "delay" in violations(negative)


def test_durations_and_times_protobuf_holds_invalid_are_refused() -> None:
    """Guards the well-known types: a Duration whose nanos have the other sign than its
    seconds, or a Timestamp with negative nanos, converts to milliseconds but is invalid
    (protobuf's JSON refuses it), so it is INVALID_ARGUMENT rather than a surprise later."""
    request = pb.SubmitJobRequest(type="noop")
    request.timeout.seconds, request.timeout.nanos = 5, -1
    request.run_at.seconds, request.run_at.nanos = 10, -5
    assert set(violations(request)) == {"timeout", "run_at"}
