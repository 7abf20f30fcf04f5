"""Rate keys across real processes (issue 25, item 4): a queue's rate per key holds for
each key over all workers, measured from the database's attempt start times, while keys
do not share a window and other jobs flow past a key whose window is full; a waiting job
names its key and when it may start; the rate is set with UpdateQueueLimits' mask and the
CLI. The rate_key field's way from the request to the job, its row and schedule templates
is checked with concurrency_key's, in test_key_fields.py."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from pathlib import Path

import psycopg
import pytest
from google.protobuf.duration_pb2 import Duration

from conveyor.client import AsyncClient, JobState, submit_request
from conveyor.db.bulk import psycopg_dsn
from conveyor.errors import InvalidArgument
from conveyor.jobs.model import format_time
from conveyor.v1 import job_pb2
from tests.e2e.test_queues import (
    most_in_window,
    spans,
    start_worker,
    until_blocked,
    until_done,
)
from tests.processes import Keys, Service, Stack


def starts_by_key(stack: Stack, job_ids: list[str]) -> dict[str, list[int]]:
    """Every attempt's start in ms, by the job's rate key, from the database
    (job_attempts joined to jobs)."""
    with psycopg.connect(psycopg_dsn(stack.env["CONVEYOR_DATABASE_URL"])) as conn:
        rows = conn.execute(
            "SELECT j.rate_key, a.start_time FROM job_attempts a "
            "JOIN jobs j ON j.id = a.job_id WHERE a.job_id = ANY(%s)",
            (job_ids,),
        ).fetchall()
    found: dict[str, list[int]] = defaultdict(list)
    for key, start in rows:
        found[key].append(int(start))
    return found


async def test_each_rate_key_keeps_its_own_window_and_holds_back_only_its_jobs(
    stack: Stack, workers: list[Service], alice: AsyncClient, admin: AsyncClient
) -> None:
    """Guards the issue's acceptance test: with 5 starts per key per second and two
    workers of 4 slots each (spare slots), 40 jobs over 2 keys never start a 6th job of
    one key within any 1 s window (every start checked, from job_attempts), the two keys
    together do start more than 5 in some second (they do not share a window), unkeyed
    jobs submitted behind the backlog all finish before the keys' last job starts (no head
    of line blocking), and a waiting job names its key, its rate and when it may start."""
    queue = "rkeys"
    await admin.update_queue_limits(queue, rate_per_key_jobs=5, rate_per_key_interval=1.0)
    start_worker(stack, workers, queue, 4)
    start_worker(stack, workers, queue, 4)
    keyed = await alice.submit_many(
        [submit_request("noop", queue=queue, rate_key=f"partner-{i % 2}") for i in range(40)]
    )
    waiting = await until_blocked(alice, keyed[-1].id, "rate key 'partner-1'")
    plain = await alice.submit_many([submit_request("noop", queue=queue) for _ in range(20)])
    await until_done(alice, [j.id for j in [*keyed, *plain]], within=60)
    by_key = starts_by_key(stack, [j.id for j in keyed])
    busiest = {key: most_in_window(starts, 1000) for key, starts in by_key.items()}
    everything = [t for starts in by_key.values() for t in starts]
    seconds = (max(everything) - min(everything)) / 1000
    print(f"\nrate keys 5/s: 40 jobs over 2 keys in {seconds:.1f}s, busiest 1 s per key "
          f"{busiest}, both keys {most_in_window(everything, 1000)}")  # fmt: skip
    assert sorted(by_key) == ["partner-0", "partner-1"]
    assert [len(starts) for starts in by_key.values()] == [20, 20], "one attempt each"
    assert set(busiest.values()) == {5}, "no key started a 6th job within a second"
    assert most_in_window(everything, 1000) > 5, "the keys do not share a window"
    plain_finished = max(finish for _, finish in spans(stack, [j.id for j in plain]))
    assert plain_finished < max(everything), "unkeyed jobs ran past the keys' backlog"

    opens = waiting.raw.blocked.until.ToMilliseconds()
    assert waiting.rate_key == "partner-1"
    assert waiting.blocked_reason == (
        f"rate key 'partner-1' is rate limited (5 per 1000 ms) until {format_time(opens)}"
    )
    assert waiting.raw.blocked == job_pb2.BlockedReason(
        kind=job_pb2.BLOCKED_KIND_RATE_KEY, queue=queue, rate_key="partner-1", rate_jobs=5,
        rate_interval=Duration(seconds=1), until=waiting.raw.blocked.until,
    )  # fmt: skip


async def test_a_handlers_push_back_holds_its_job_and_its_key_without_spending_an_attempt(
    stack: Stack, workers: list[Service], alice: AsyncClient, tmp_path: Path
) -> None:
    """Guards RateLimited: a handler raising it once (retry_after 1 s) has its job wait
    SCHEDULED until then with its attempt not spent, then succeed on attempt 1 (one
    attempt on record) no sooner; a job of the same key submitted meanwhile waits, saying
    which key and until when, and starts no sooner either (the queue has no per-key rate:
    the push-back alone holds it); a job of another key starts at once."""
    queue = "rkeys-throttle"
    start_worker(stack, workers, queue, 4)
    flag = tmp_path / "throttled"
    first = await alice.submit(
        "test.throttled_once", {"flag": str(flag), "seconds": 1.0}, queue=queue,
        rate_key="partner",
    )  # fmt: skip
    async with asyncio.timeout(20):
        async for update in alice.watch(first.id):
            if update.job.state == JobState.SCHEDULED:
                pushed = update.job
                break
    assert flag.exists() and pushed.attempt == 0, "the throttled attempt is not spent"
    due = pushed.raw.run_at.ToMilliseconds()
    same = await alice.submit("noop", queue=queue, rate_key="partner")
    other = await alice.submit("noop", queue=queue, rate_key="elsewhere")
    waiting = await until_blocked(alice, same.id, "rate key 'partner' was pushed back")
    await until_done(alice, [first.id, same.id, other.id], within=30)
    by_id = dict(zip([first.id, same.id, other.id],
                     spans(stack, [first.id, same.id, other.id]), strict=True))  # fmt: skip
    print(f"\nRateLimited 1 s: due at +0, first ran at +{by_id[first.id][0] - due} ms, its "
          f"key's other at +{by_id[same.id][0] - due} ms, another key's at "
          f"{by_id[other.id][0] - due} ms")  # fmt: skip
    done = await alice.get(first.id)
    assert done.state == JobState.SUCCEEDED and done.attempt == 1
    assert list(starts_by_key(stack, [first.id]).values()) == [[by_id[first.id][0]]]
    assert by_id[first.id][0] >= due and by_id[same.id][0] >= due
    assert by_id[other.id][0] < due, "another key's job was not held back"
    assert waiting.raw.blocked == job_pb2.BlockedReason(
        kind=job_pb2.BLOCKED_KIND_RATE_KEY, queue=queue, rate_key="partner",
        until=pushed.raw.run_at,
    )  # fmt: skip
    assert waiting.blocked_reason == (
        f"rate key 'partner' was pushed back by a handler until {format_time(due)}"
    )


async def test_a_process_isolated_handler_may_push_back_too(
    stack: Stack, workers: list[Service], alice: AsyncClient, tmp_path: Path
) -> None:
    """Guards RateLimited across the isolation wire: raised in a handler's own process, it
    too leaves the job SCHEDULED with its attempt unspent, and the job then succeeds on
    attempt 1."""
    queue = "rkeys-isolated"
    start_worker(stack, workers, queue, 2)
    flag = tmp_path / "throttled"
    job = await alice.submit(
        "test.throttled_once_isolated", {"flag": str(flag), "seconds": 0.2}, queue=queue,
        rate_key="partner",
    )  # fmt: skip
    states = []
    async with asyncio.timeout(30):
        async for update in alice.watch(job.id):
            states.append((update.job.state, update.job.attempt))
            if update.job.state == JobState.SUCCEEDED:
                break
    assert (JobState.SCHEDULED, 0) in states
    assert states[-1] == (JobState.SUCCEEDED, 1)


async def test_a_sharded_queue_keeps_each_rate_key_on_one_shard_and_its_whole_rate(
    stack: Stack, workers: list[Service], alice: AsyncClient, admin: AsyncClient
) -> None:
    """Guards per-key rates on a sharded queue: a key's jobs go to one shard (chosen by the
    key), which holds the key's whole rate, so 4 per second on 2 shards is 4 per key, not
    2 shared out, and never 5."""
    queue = "rkeys-spread"
    await admin.update_queue_limits(queue, shards=2, rate_per_key_jobs=4, rate_per_key_interval=1.0)
    start_worker(stack, workers, queue, 4)
    keyed = await alice.submit_many(
        [submit_request("noop", queue=queue, rate_key=f"k{i % 3}") for i in range(24)]
    )
    await until_done(alice, [j.id for j in keyed], within=60)
    busiest = {
        k: most_in_window(s, 1000) for k, s in starts_by_key(stack, [j.id for j in keyed]).items()
    }
    print(f"\nsharded rate keys 4/s: busiest 1 s per key {busiest}")
    assert set(busiest.values()) == {4}


async def test_the_per_key_rate_is_set_by_its_mask_validated_and_shown(
    stack: Stack, keys: Keys, admin: AsyncClient
) -> None:
    """Guards the setting: UpdateQueueLimits naming rate_per_key_jobs and
    rate_per_key_interval changes them alone; a negative rate, a rate without a window and
    a window without a rate are INVALID_ARGUMENT on their field; GetQueueStats and
    `conveyor queues limits Q --rate-per-key N --per-key-interval S` show it. (The
    rate_key field's own checks are test_key_fields.py's, shared with concurrency_key.)"""
    queue = f"rkeys-{uuid.uuid4().hex[:8]}"
    await admin.update_queue_limits(queue, max_running=5)
    with pytest.raises(InvalidArgument) as no_window:
        await admin.update_queue_limits(queue, rate_per_key_jobs=3)
    assert {v.field for v in no_window.value.violations} == {"limits.rate_per_key_interval"}
    changed = await admin.update_queue_limits(queue, rate_per_key_jobs=3, rate_per_key_interval=2.5)
    limits = changed.limits
    assert (limits.max_running, limits.rate_per_key_jobs) == (5, 3)
    assert limits.rate_per_key_interval.ToMilliseconds() == 2500
    with pytest.raises(InvalidArgument) as negative:
        await admin.update_queue_limits(queue, rate_per_key_jobs=-1)
    assert {v.field for v in negative.value.violations} == {"limits.rate_per_key_jobs"}
    removed = await admin.update_queue_limits(queue, rate_per_key_jobs=0)
    assert removed.limits.rate_per_key_jobs == 0
    assert not removed.limits.HasField("rate_per_key_interval")
    with pytest.raises(InvalidArgument) as lone_window:
        await admin.update_queue_limits(queue, rate_per_key_interval=1.0)
    assert {v.field for v in lone_window.value.violations} == {"limits.rate_per_key_interval"}
    out = stack.cli("queues", "limits", queue, "--rate-per-key", "4", "--per-key-interval",
                    "0.5", "--json", key=keys.admin)  # fmt: skip
    shown_limits = json.loads(out.stdout)["queues"][0]["limits"]
    assert (shown_limits["rate_per_key_jobs"], shown_limits["rate_per_key_interval"]) == (
        4,
        "0.500s",
    )
    [stats] = await admin.queue_stats(queue)
    assert stats.limits.rate_per_key_jobs == 4
    shown = stack.cli("queues", "limits", queue, key=keys.admin)
    assert "rate_per_key=4 per 0.5s" in shown.stdout
