"""Concurrency keys in the domain: the request field's checks and fingerprint, and how a
sharded queue's per-key cap is given to its shards (whole, not shared out) and read back."""

from __future__ import annotations

import pytest

from conveyor.errors import InvalidArgument
from conveyor.jobs.model import JobSpec, spec_from_proto
from conveyor.jobs.queues import LimitChange, QueueSettings, QueueStats
from conveyor.v1 import job_service_pb2 as pb
from conveyor.v1 import queue_pb2


def test_a_concurrency_key_is_checked_kept_and_fingerprinted_only_when_set() -> None:
    """Guards the field: printable and at most 256 characters (a violation on the field
    otherwise), kept on the spec and its job, and part of the fingerprint an idempotency
    key is compared with, while an unkeyed request's fingerprint is what it was (stored
    fingerprints of older jobs still match their retried submits)."""
    spec = spec_from_proto(
        pb.SubmitJobRequest(type="noop", concurrency_key="c" * 256), max_payload_bytes=1024
    )
    assert spec.concurrency_key == "c" * 256
    for bad in ("c" * 257, "new\nline"):
        with pytest.raises(InvalidArgument) as refused:
            spec_from_proto(
                pb.SubmitJobRequest(type="noop", concurrency_key=bad), max_payload_bytes=1024
            )
        assert [v.field for v in refused.value.violations] == ["concurrency_key"]
    plain = JobSpec(type="noop")
    assert JobSpec(type="noop", concurrency_key="").request_hash() == plain.request_hash()
    assert JobSpec(type="noop", concurrency_key="a").request_hash() != plain.request_hash()
    assert JobSpec(type="noop", concurrency_key="a").request_hash() != (
        JobSpec(type="noop", concurrency_key="b").request_hash()
    )


def test_each_shard_holds_the_whole_per_key_cap_and_the_stats_say_it_once() -> None:
    """Guards the sharding rule: a key's jobs live in one shard, so every shard gets the
    queue's whole max_running_per_key (not a share, and no "at least the shard count"
    rule), and the merged stats report it once, not summed over the shards."""
    settings = LimitChange.from_proto(
        queue_pb2.QueueLimits(max_running_per_key=1, shards=3), ["max_running_per_key", "shards"]
    ).applied_to(QueueSettings("hot"))
    assert [s.max_running_per_key for s in settings.per_shard()] == [1, 1, 1]
    assert settings.limits_proto().max_running_per_key == 1
    parts = [QueueStats(s, 0, 0, 0, (0,) * 10, None, 0, 0, 0, 0) for s in settings.per_shard()]
    assert QueueStats.merged(parts).settings.max_running_per_key == 1
    with pytest.raises(InvalidArgument) as refused:
        LimitChange(max_running_per_key=-1).applied_to(QueueSettings("hot"))
    assert [v.field for v in refused.value.violations] == ["limits.max_running_per_key"]
    kept = LimitChange(max_running=4).applied_to(settings)
    assert kept.max_running_per_key == 1, "a change that does not name it keeps it"
