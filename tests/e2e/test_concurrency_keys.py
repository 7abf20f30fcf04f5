"""Concurrency keys across real processes (issue 25, item 3): a queue's
max_running_per_key holds per key over all workers, measured from the database's attempt
times, while other keys' jobs flow past a key at its cap; a waiting job names its key;
a sharded queue keeps each key on one shard, so its cap is exact; the limit is set with
UpdateQueueLimits' mask and the CLI. The concurrency_key field's way from the request to
the job, its row and schedule templates is checked with rate_key's, in
test_key_fields.py."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from pathlib import Path

import psycopg
import pytest

from conveyor.client import AsyncClient, JobState, submit_request
from conveyor.db.bulk import psycopg_dsn
from conveyor.errors import InvalidArgument
from conveyor.v1 import job_pb2
from tests.e2e.test_queue_shards import shards_of
from tests.e2e.test_queues import most_at_once, start_worker, until_blocked, until_done
from tests.processes import Keys, Service, Stack

S = JobState


def attempts_by_key(stack: Stack, job_ids: list[str]) -> dict[str, list[tuple[int, int]]]:
    """Every attempt's (start, finish) in ms, by the job's concurrency key, from the
    database (job_attempts joined to jobs)."""
    with psycopg.connect(psycopg_dsn(stack.env["CONVEYOR_DATABASE_URL"])) as conn:
        rows = conn.execute(
            "SELECT j.concurrency_key, a.start_time, a.finish_time FROM job_attempts a "
            "JOIN jobs j ON j.id = a.job_id WHERE a.job_id = ANY(%s)",
            (job_ids,),
        ).fetchall()
    found: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for key, start, finish in rows:
        found[key].append((int(start), int(finish)))
    return found


async def test_200_jobs_over_10_keys_never_overlap_within_a_key_nor_wait_on_a_held_one(
    stack: Stack, workers: list[Service], alice: AsyncClient, admin: AsyncClient,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Guards the issue's acceptance test: with max_running_per_key 1 and two workers of 4
    slots each, 200 short jobs over 10 keys all succeed with no two attempts of one key
    overlapping (intervals from job_attempts), and a key whose job is held running (a
    gate file) holds back its own next job only: the 200 all finish while it is held, and
    its waiting job says that its key is at the limit."""
    queue = "ckeys"
    await admin.update_queue_limits(queue, max_running_per_key=1)
    start_worker(stack, workers, queue, 4)
    start_worker(stack, workers, queue, 4)
    gate, log = tmp_path / "gate", tmp_path / "hold.log"
    held = await alice.submit_many(
        [submit_request("test.hold", {"gate": str(gate), "log": str(log)}, queue=queue,
                        concurrency_key="stuck")
         for _ in range(2)]
    )  # fmt: skip
    waiting = await until_blocked(alice, held[1].id, "concurrency key 'stuck'")
    jobs = await alice.submit_many(
        [submit_request("sleep", {"seconds": 0.02, "steps": 1}, queue=queue,
                        concurrency_key=f"customer-{i % 10}")
         for i in range(200)]
    )  # fmt: skip
    ids = [j.id for j in jobs]
    await until_done(alice, ids, within=60)
    assert (await alice.get(held[0].id)).state == S.RUNNING, "still held while the 200 ran"
    assert (await alice.get(held[1].id)).state == S.QUEUED
    gate.touch()
    await until_done(alice, [j.id for j in held], within=30)
    by_key = attempts_by_key(stack, [*ids, *(j.id for j in held)])
    peaks = {key: most_at_once(spans) for key, spans in by_key.items()}
    everything = [span for spans in by_key.values() for span in spans]
    print(f"\nconcurrency keys: 200 jobs over 10 keys, per-key peaks "
          f"{sorted(set(peaks.values()))}, all keys together peaked at "
          f"{most_at_once(everything)} running")  # fmt: skip
    assert sorted(by_key) == sorted([*(f"customer-{i}" for i in range(10)), "stuck"])
    assert sum(len(spans) for spans in by_key.values()) == 202, "one attempt each"
    assert set(peaks.values()) == {1}
    assert most_at_once(everything) > 1, "different keys ran side by side"
    for job_id in [*ids, *(j.id for j in held)]:
        assert (await alice.get(job_id)).state == S.SUCCEEDED
    assert waiting.concurrency_key == "stuck"
    assert waiting.blocked_reason == (
        f"concurrency key 'stuck' is at its concurrency limit in queue '{queue}' (1 of 1 running)"
    )
    assert waiting.raw.blocked == job_pb2.BlockedReason(
        kind=job_pb2.BLOCKED_KIND_CONCURRENCY_KEY, queue=queue, concurrency_key="stuck",
        running=1, limit=1,
    )  # fmt: skip


async def test_a_sharded_queue_keeps_each_key_on_one_shard_and_its_whole_cap(
    stack: Stack, workers: list[Service], alice: AsyncClient, admin: AsyncClient
) -> None:
    """Guards per-key caps on a sharded queue: a key's jobs all go to one shard (chosen by
    the key), which holds the key's whole cap, so max_running_per_key 2 on 3 shards means
    2 per key, not 2 shared out; unkeyed jobs still spread over every shard."""
    queue = "ckeys-spread"
    await admin.update_queue_limits(queue, shards=3, max_running_per_key=2)
    [stats] = await admin.queue_stats(queue)
    assert stats.limits.max_running_per_key == 2 and stats.limits.shards == 3
    start_worker(stack, workers, queue, 4)
    start_worker(stack, workers, queue, 4)
    keyed = await alice.submit_many(
        [submit_request("sleep", {"seconds": 0.05, "steps": 1}, queue=queue,
                        concurrency_key=f"k{i % 6}")
         for i in range(48)]
    )  # fmt: skip
    plain = await alice.submit_many([submit_request("noop", queue=queue) for _ in range(30)])
    await until_done(alice, [j.id for j in [*keyed, *plain]], within=60)
    for k in range(6):
        mine = [j.id for j in keyed if j.concurrency_key == f"k{k}"]
        assert len(shards_of(stack, mine)) == 1, f"key k{k} is on one shard"
    by_key = attempts_by_key(stack, [j.id for j in keyed])
    peaks = {key: most_at_once(spans) for key, spans in by_key.items()}
    print(f"\nsharded concurrency keys: per-key peaks {peaks}")
    assert set(peaks.values()) <= {1, 2} and max(peaks.values()) == 2
    assert set(shards_of(stack, [j.id for j in plain])) == {0, 1, 2}


async def test_the_per_key_limit_is_set_by_its_mask_validated_and_shown(
    stack: Stack, keys: Keys, admin: AsyncClient
) -> None:
    """Guards the setting: UpdateQueueLimits naming max_running_per_key changes it alone,
    a negative one is INVALID_ARGUMENT on that field, GetQueueStats and `conveyor queues
    limits Q --max-per-key N` show it. (The concurrency_key field's own checks are
    test_key_fields.py's, shared with rate_key.)"""
    queue = f"ckeys-{uuid.uuid4().hex[:8]}"
    await admin.update_queue_limits(queue, max_running=5)
    changed = await admin.update_queue_limits(queue, max_running_per_key=3)
    assert (changed.limits.max_running, changed.limits.max_running_per_key) == (5, 3)
    with pytest.raises(InvalidArgument) as bad:
        await admin.update_queue_limits(queue, max_running_per_key=-1)
    assert {v.field for v in bad.value.violations} == {"limits.max_running_per_key"}
    assert (await admin.queue_stats(queue))[0].limits.max_running_per_key == 3
    out = stack.cli("queues", "limits", queue, "--max-per-key", "4", "--json", key=keys.admin)
    assert json.loads(out.stdout)["queues"][0]["limits"]["max_running_per_key"] == 4
    shown = stack.cli("queues", "limits", queue, key=keys.admin)
    assert "max_per_key=4" in shown.stdout
