"""The queue's per-minute tallies against a real Redis (scripts/_common.lua `tally`,
queue_stats.lua): every tally hash expires, the per-minute ones only once they have left the
history, and GetQueueStats' history is exactly the stored minutes of its window."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from conveyor.config import Settings
from conveyor.jobs.model import FALLBACK_RETRY, Job, JobDefaults, JobSpec, JobState, now_ms
from conveyor.redis import QueueKeys, RedisQueue, connect
from tests.builders import ended

pytestmark = pytest.mark.usefixtures("clean")

RECENT_MINUTES = 15  # scripts/_common.lua
SECOND_TTL = 120
MINUTE_TTL = (RECENT_MINUTES + 2) * 60


@pytest.fixture
async def queue(settings: Settings) -> AsyncIterator[RedisQueue]:
    client = connect(settings.redis_url)
    yield RedisQueue(client, settings)
    await client.aclose()


def new_job() -> Job:
    spec = JobSpec(type="noop")
    return spec.new_job("alice", defaults=JobDefaults(2, 1000, FALLBACK_RETRY), now=now_ms())


async def test_every_tally_expires_and_a_minute_outlives_its_place_in_the_history(
    queue: RedisQueue,
) -> None:
    """Guards the hot path's saving (a hash's EXPIRE only from the call that creates one of
    its fields): ends written into fields that already exist, and a cancel, leave every
    tally hash with a time to live: a second's at most 2 minutes, a minute's long enough
    to be read until it leaves the 16-minute window (more than 16 minutes), never forever."""
    jobs = [new_job() for _ in range(4)]
    await queue.enqueue(jobs)
    claims, _ = await queue.claim("default", 3, worker_id="w", token="t", lease_ms=10_000)
    states = [JobState.SUCCEEDED, JobState.SUCCEEDED, JobState.DEAD]
    for claim, state in zip(claims, states, strict=True):  # one call each
        end = ended(claim.job.id, state)
        assert await queue.finish_many([(claim.job, claim.lease, end)]) == [True]
    left = next(job for job in jobs if job.id not in {c.job.id for c in claims})
    await queue.cancel("default", left.id, finish_time=now_ms())
    prefix = QueueKeys("default").stats_prefix
    keys = [key async for key in queue.redis.scan_iter(match=f"{prefix}*")]
    minutes = [key for key in keys if key.startswith(f"{prefix}m")]
    seconds = [key for key in keys if key not in minutes]
    assert minutes and seconds
    for key in seconds:
        assert 0 < await queue.redis.ttl(key) <= SECOND_TTL
    for key in minutes:
        assert (RECENT_MINUTES + 1) * 60 < await queue.redis.ttl(key) <= MINUTE_TTL
    counted = {"s": 0, "d": 0, "c": 0}
    for key in minutes:
        for outcome, n in (await queue.redis.hgetall(key)).items():
            counted[str(outcome)] += int(n)
    assert counted == {"s": 2, "d": 1, "c": 1}


async def test_the_history_is_the_stored_minutes_of_its_window_and_no_other(
    queue: RedisQueue,
) -> None:
    """Minutes stored from 17 before now to 1 after: GetQueueStats answers 16 consecutive
    minutes ending with the current one, each with exactly its stored counts (minutes of
    the window with none stored as zeros), and none from before the window."""
    prefix = QueueKeys("default").stats_prefix
    now = now_ms() // 60_000
    for offset in range(-17, 2):
        if offset != -5:  # a quiet minute: no hash at all
            minute = now + offset
            await queue.redis.hset(
                f"{prefix}m{minute}",
                mapping={"s": minute % 97, "r": 1, "d": 2, "c": 3},
            )
    stats = await queue.queue_stats("default")
    history = stats.recent_minutes
    assert len(history) == RECENT_MINUTES + 1
    assert history[-1].minute in (now, now + 1)  # now, unless a minute began meanwhile
    assert [m.minute for m in history] == list(range(history[0].minute, history[-1].minute + 1))
    for m in history:
        stored = (m.minute % 97, 1, 2, 3) if m.minute != now - 5 else (0, 0, 0, 0)
        assert (m.succeeded, m.retried, m.dead, m.cancelled) == stored
