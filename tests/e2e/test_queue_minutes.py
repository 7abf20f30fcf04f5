"""GetQueueStats' recent minutes (QueueStats.recent_minutes) across real processes, on both
Redis shapes: jobs of known outcomes are counted in the minutes they ended in, the history
is RECENT_MINUTES (15, scripts/_common.lua) whole minutes and the current one, oldest
first, consecutive, and a sharded queue's minutes are the sums of its shards' tallies.

Which minute an attempt lands in is Redis's clock at its end, so the assertions allow the
test's minutes (from the first submit to the read), usually one: every count outside them
is 0 and the counts inside them add up to the outcomes."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from datetime import timedelta

from google.protobuf.duration_pb2 import Duration

from conveyor.client import AsyncClient, submit_request
from conveyor.jobs.shards import placements
from conveyor.redis import QueueKeys, connect
from conveyor.v1 import job_pb2, job_service_pb2, queue_pb2
from tests.e2e.test_queues import start_worker, until_done
from tests.processes import Service, Stack

HISTORY = 15 + 1  # RECENT_MINUTES whole minutes, then the current one
OUTCOMES = ("succeeded", "retried", "dead", "cancelled")
FAST_RETRY = job_pb2.RetryPolicy(
    initial_backoff=Duration(nanos=10_000_000), max_backoff=Duration(nanos=10_000_000)
)


def outcome_requests(queue: str) -> list[job_service_pb2.SubmitJobRequest]:
    """3 jobs that succeed, 2 that die at once, 1 that fails, is retried and dies: 3
    succeeded, 1 retried and 3 dead attempts."""
    return [
        *[submit_request("noop", queue=queue) for _ in range(3)],
        *[submit_request("fail", {"permanent": True}, queue=queue) for _ in range(2)],
        submit_request("fail", queue=queue, max_attempts=2, retry=FAST_RETRY),
    ]


async def run_outcomes(alice: AsyncClient, queue: str, cancelled: int) -> None:
    """The jobs of `outcome_requests` run to their end, and `cancelled` delayed jobs are
    cancelled before they are due (each counted as cancelled)."""
    jobs = await alice.submit_many(outcome_requests(queue))
    later = await alice.submit_many(
        [submit_request("noop", queue=queue, delay=timedelta(hours=1)) for _ in range(cancelled)]
    )
    for job in later:
        await alice.cancel(job.id)
    await until_done(alice, [job.id for job in jobs])


def check_history(
    minutes: Sequence[queue_pb2.QueueMinute], since: float, until: float, expected: dict[str, int]
) -> None:
    """HISTORY consecutive whole minutes, oldest first, the last one the minute of the read
    (between `since` and `until`, epoch seconds); the counts of the minutes from `since`'s
    to the last add up to `expected` and every other minute's are 0."""
    starts = [m.start_time.seconds for m in minutes]
    assert len(minutes) == HISTORY
    assert all(start % 60 == 0 for start in starts)
    assert all(m.start_time.nanos == 0 for m in minutes)
    assert [b - a for a, b in itertools.pairwise(starts)] == [60] * (HISTORY - 1)
    first, last = math.floor(since / 60) * 60, math.floor(until / 60) * 60
    assert first <= starts[-1] <= last
    ours = [m for m in minutes if m.start_time.seconds >= first]
    others = [m for m in minutes if m.start_time.seconds < first]
    assert {name: sum(getattr(m, name) for m in ours) for name in OUTCOMES} == expected
    assert all(getattr(m, name) == 0 for m in others for name in OUTCOMES)


async def test_recent_minutes_count_each_outcome_in_the_minute_it_ended(
    stack: Stack, workers: list[Service], alice: AsyncClient, admin: AsyncClient
) -> None:
    """Guards issue 24's overview history: jobs that succeed, die, fail and are retried,
    or are cancelled are counted by outcome in the minutes they ended in (usually the one
    now, the last of 16 consecutive whole minutes, oldest first), agreeing with the last
    minute's totals; minutes before the test are zeros, not missing."""
    queue = "minutes"
    start_worker(stack, workers, queue, 4)
    since = time.time()
    await run_outcomes(alice, queue, cancelled=2)
    [stats] = await admin.queue_stats(queue)
    until = time.time()
    expected = {"succeeded": 3, "retried": 1, "dead": 3, "cancelled": 2}
    check_history(stats.recent_minutes, since, until, expected)
    last_minute = {name: getattr(stats, f"{name}_last_minute") for name in OUTCOMES}
    assert last_minute == expected


async def test_a_sharded_queues_minutes_are_its_shards_tallies_added_up(
    stack: Stack, workers: list[Service], alice: AsyncClient, admin: AsyncClient
) -> None:
    """Guards the history of a queue of 3 shards (on a cluster, on several primaries): its
    jobs end on more than one shard, and each minute GetQueueStats answers with is the sum of that
    minute's tally on each shard, read straight from Redis; the sums count every outcome."""
    queue = "minutes-sharded"
    await admin.update_queue_limits(queue, shards=3)
    start_worker(stack, workers, queue, 4)
    since = time.time()
    for _ in range(3):  # 18 jobs, so every shard very likely has some
        await run_outcomes(alice, queue, cancelled=1)
    [stats] = await admin.queue_stats(queue)
    until = time.time()
    expected = {"succeeded": 9, "retried": 3, "dead": 9, "cancelled": 3}
    check_history(stats.recent_minutes, since, until, expected)

    cluster = stack.env["CONVEYOR_REDIS_CLUSTER"] == "true"
    redis = connect(stack.env["CONVEYOR_REDIS_URL"], cluster=cluster)
    try:
        shards_seen = set()
        for minute in stats.recent_minutes:
            number = minute.start_time.seconds // 60
            summed = dict.fromkeys(OUTCOMES, 0)
            for shard in placements(queue, 3):
                counts = await redis.hmget(
                    f"{QueueKeys(shard).stats_prefix}m{number}", ["s", "r", "d", "c"]
                )
                for name, count in zip(OUTCOMES, counts, strict=True):
                    summed[name] += int(count or 0)
                    if count:
                        shards_seen.add(shard)
            assert summed == {name: getattr(minute, name) for name in OUTCOMES}
    finally:
        await redis.aclose()
    assert len(shards_seen) >= 2, "the jobs ended on more than one shard"
