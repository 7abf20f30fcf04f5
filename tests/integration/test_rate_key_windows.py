"""The per-rate-key window in the claim scripts (group `r:<key>`, QueueLimits'
rate_per_key_*): parking past a key whose window is full, the parked jobs coming back by
time (q.rate_due) as many as the window has room for, and a handler's push-back
(RateLimited, through release.lua's delay) holding the key's jobs until it ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from conveyor.config import Settings
from conveyor.jobs.blocked import Blocked
from conveyor.jobs.model import FALLBACK_RETRY, Job, JobDefaults, JobSpec, JobState, now_ms
from conveyor.jobs.queues import QueueSettings
from conveyor.redis import QueueKeys, RedisQueue, connect

pytestmark = pytest.mark.usefixtures("clean")
KEYS = QueueKeys("default")


@pytest.fixture
async def queue(settings: Settings) -> AsyncIterator[RedisQueue]:
    client = connect(settings.redis_url)
    yield RedisQueue(client, settings)
    await client.aclose()


def keyed(key: str) -> Job:
    spec = JobSpec(type="noop", rate_key=key)
    return spec.new_job("alice", defaults=JobDefaults(2, 1000, FALLBACK_RETRY), now=now_ms())


async def claim(queue: RedisQueue, count: int = 10) -> tuple[list[Job], int]:
    claims, next_wake = await queue.claim(
        "default", count, worker_id="w", token="t", lease_ms=10_000
    )
    return [c.job for c in claims], next_wake


async def claim_when_due(queue: RedisQueue) -> list[Job]:
    """The next claim that gets jobs, looking again each time the last one said work is
    due (its next_wake, the Redis clock), for 5 s at most."""
    async with asyncio.timeout(5):
        while True:
            jobs, next_wake = await claim(queue)
            if jobs:
                return jobs
            assert next_wake > 0, "a parked key is due at some time"
            await asyncio.sleep(max(next_wake - now_ms(), 5) / 1000)


async def test_a_full_key_is_parked_then_let_back_as_its_window_opens(queue: RedisQueue) -> None:
    """Guards the window and the park by time: with 2 starts per key per 300 ms, one claim
    of 10 takes 2 jobs of each key and the unkeyed job, parks the rest of key `a` under
    `r:a` with q.rate_due at the window's opening (the claim's next_wake), says why; the
    next claim to get jobs comes no sooner than that opening and takes only the window's
    room (2), the last one staying parked and due again."""
    await queue.configure(
        QueueSettings("default", rate_per_key_jobs=2, rate_per_key_interval_ms=300)
    )
    a = [keyed("a") for _ in range(5)]
    b = [keyed("b") for _ in range(2)]
    plain = keyed("")
    await queue.enqueue([*a, *b, plain])
    first, next_wake = await claim(queue)
    assert [j.id for j in first] == [a[0].id, a[1].id, b[0].id, b[1].id, plain.id]
    started = max(j.start_time or 0 for j in first[:2])
    assert await queue.redis.zcard(KEYS.parked_prefix + "r:a") == 3
    opens = float(await queue.redis.zscore(KEYS.rate_due, "r:a") or 0)
    assert opens == min(j.start_time or 0 for j in first[:2]) + 301 and next_wake <= opens
    blocked = (await queue.waiting("default", a[2].id)).blocked("default")
    assert blocked == Blocked.rate_key_limited("default", "a", 2, 300, int(opens))
    assert (await queue.queue_stats("default")).settings.rate_per_key_jobs == 2

    second = await claim_when_due(queue)
    assert [j.id for j in second] == [a[2].id, a[3].id]
    assert all((j.start_time or 0) >= opens for j in second)
    assert all((j.start_time or 0) > started + 300 for j in second)
    assert await queue.redis.zcard(KEYS.parked_prefix + "r:a") == 1
    assert await queue.redis.zscore(KEYS.rate_due, "r:a") is not None, "due again"
    [last] = await claim_when_due(queue)
    assert last.id == a[4].id
    assert await queue.redis.zcard(KEYS.rate_due) == 0
    assert await queue.redis.sismember(KEYS.parked_groups, "r:a") == 0


async def test_a_push_back_holds_the_key_then_lets_it_go(queue: RedisQueue) -> None:
    """Guards RateLimited's scripts: releasing a leased job with a delay leaves it
    SCHEDULED with its attempt unspent, holds its key's other jobs (parked, saying until
    when) even though the queue has no per-key rate, lets another key's job run, and once
    the time has come both run."""
    await queue.configure(QueueSettings("default"))
    pushed, same, other = keyed("p"), keyed("p"), keyed("q")
    await queue.enqueue([pushed])
    [running], _ = await claim(queue)
    assert running.attempt == 1
    lease = (await queue.hot("default", running.id) or {})["lease"]
    assert await queue.release("default", [(running, lease)], delay_ms=300) == 1
    hot = await queue.hot("default", pushed.id) or {}
    assert (hot["state"], hot["attempt"]) == (str(int(JobState.SCHEDULED)), "0")
    due = int(hot["run_at"])
    await queue.enqueue([same, other])
    taken, _ = await claim(queue)
    assert [j.id for j in taken] == [other.id], "another key is not held back"
    blocked = (await queue.waiting("default", same.id)).blocked("default")
    assert blocked == Blocked.rate_key_limited("default", "p", 0, 0, due)
    later = await claim_when_due(queue)
    assert sorted(j.id for j in later) == sorted([pushed.id, same.id])
    assert all((j.start_time or 0) >= due for j in later)
    assert {j.id: j.attempt for j in later}[pushed.id] == 1, "the push-back spent no attempt"


async def test_removing_the_rate_lets_parked_jobs_back_at_once(queue: RedisQueue) -> None:
    """Guards configure's unpark of rate groups: with the per-key rate removed, a key's
    parked jobs are back in line for the next claim, not at the old window's opening."""
    await queue.configure(
        QueueSettings("default", rate_per_key_jobs=1, rate_per_key_interval_ms=60_000)
    )
    jobs = [keyed("slow") for _ in range(3)]
    await queue.enqueue(jobs)
    assert len((await claim(queue))[0]) == 1
    assert (await claim(queue))[0] == []
    await queue.configure(QueueSettings("default"))
    assert sorted(j.id for j in (await claim(queue))[0]) == sorted(j.id for j in jobs[1:])


async def test_a_key_whose_parked_jobs_were_cancelled_leaves_the_parked_groups(
    queue: RedisQueue,
) -> None:
    """Guards the claim's due rate groups against a leak: a key whose parked jobs were all
    cancelled before its window opened leaves q.rate_due and the set of parked groups at
    the first claim after the opening (its unpark finds the parked set empty)."""
    await queue.configure(
        QueueSettings("default", rate_per_key_jobs=1, rate_per_key_interval_ms=100)
    )
    first, parked = keyed("gone"), keyed("gone")
    await queue.enqueue([first, parked])
    assert [j.id for j in (await claim(queue))[0]] == [first.id]
    assert await queue.redis.sismember(KEYS.parked_groups, "r:gone") == 1
    assert (await queue.cancel("default", parked.id, now_ms())).state == JobState.QUEUED
    opens = float(await queue.redis.zscore(KEYS.rate_due, "r:gone") or 0)
    async with asyncio.timeout(5):
        while await queue.redis.zcard(KEYS.rate_due):
            await asyncio.sleep(max(opens - now_ms(), 5) / 1000)
            assert (await claim(queue))[0] == []
    assert await queue.redis.smembers(KEYS.parked_groups) == set()
