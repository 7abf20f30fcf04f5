"""The per-concurrency-key cap in the claim scripts (group `c:<key>`, QueueLimits'
max_running_per_key): parking past a key at its cap, and every way a lease ends letting
the key's next job back in line."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from conveyor.config import Settings
from conveyor.jobs.blocked import Blocked
from conveyor.jobs.model import FALLBACK_RETRY, Job, JobDefaults, JobSpec, JobState, now_ms
from conveyor.jobs.queues import QueueSettings
from conveyor.redis import QueueKeys, RedisQueue, connect
from tests.builders import ended

pytestmark = pytest.mark.usefixtures("clean")


@pytest.fixture
async def queue(settings: Settings) -> AsyncIterator[RedisQueue]:
    client = connect(settings.redis_url)
    yield RedisQueue(client, settings)
    await client.aclose()


def keyed(key: str, owner: str = "alice") -> Job:
    spec = JobSpec(type="noop", concurrency_key=key)
    return spec.new_job(owner, defaults=JobDefaults(2, 1000, FALLBACK_RETRY), now=now_ms())


async def claim(queue: RedisQueue, count: int = 10, lease_ms: int = 10_000) -> list[Job]:
    claims, _ = await queue.claim("default", count, worker_id="w", token="t", lease_ms=lease_ms)
    return [c.job for c in claims]


async def test_a_key_at_its_cap_is_parked_and_others_pass_it(queue: RedisQueue) -> None:
    """Guards the per-key cap at claim: with max_running_per_key 1, one claim of 10 takes
    one job of each key (the others of a key wait parked, not blocking the line), the
    parked jobs say which key holds them back, and count as queued."""
    await queue.configure(QueueSettings("default", max_running_per_key=1))
    a = [keyed("cust-a") for _ in range(3)]
    b = [keyed("cust-b") for _ in range(2)]
    plain = keyed("")  # no key: only its owner's group
    await queue.enqueue([*a, *b, plain])
    first = await claim(queue)
    assert [j.id for j in first] == [a[0].id, b[0].id, plain.id]
    assert await queue.redis.zcard(QueueKeys("default").tag + ":parked:c:cust-a") == 2
    blocked = (await queue.waiting("default", a[1].id)).blocked("default")
    assert blocked == Blocked.concurrency_key_limit("default", "cust-a", running=1, limit=1)
    assert blocked.text == (
        "concurrency key 'cust-a' is at its concurrency limit in queue 'default' (1 of 1 running)"
    )
    assert blocked.to_proto().concurrency_key == "cust-a"
    stats = await queue.queue_stats("default")
    assert stats.queued == 3 and stats.running == 3
    assert stats.settings.max_running_per_key == 1


async def test_finish_cancel_and_expiry_each_let_the_keys_next_job_run(
    queue: RedisQueue,
) -> None:
    """Guards the `c:` group's bookkeeping on every end of a lease: a finished, a
    cancelled and an expired running job of a key at its cap each let exactly the key's
    next parked job back in line (a leak would hold the key back for good)."""
    await queue.configure(QueueSettings("default", max_running_per_key=1))
    jobs = [keyed("k") for _ in range(4)]
    await queue.enqueue(jobs)
    [running] = await claim(queue)
    assert await claim(queue) == []  # the rest is parked behind the key
    lease = (await queue.hot("default", running.id) or {})["lease"]
    assert await queue.finish_many([(running, lease, ended(running.id, JobState.SUCCEEDED))])
    [second] = await claim(queue)
    assert second.id == jobs[1].id
    assert (await queue.cancel("default", second.id, now_ms())).state == JobState.RUNNING
    [third] = await claim(queue, lease_ms=50)
    assert third.id == jobs[2].id
    async with asyncio.timeout(5):
        while True:  # the 50 ms lease runs out: the claim reclaims it, the key's count drops
            claims, _ = await queue.claim("default", 5, worker_id="w2", token="t2", lease_ms=9999)
            if claims:
                break
            await asyncio.sleep(0.02)
    # One of the key's two waiting jobs runs (the reclaimed one went back in line behind
    # the one its end let back), the other is parked again: still one at a time.
    assert len(claims) == 1 and claims[0].job.id in {jobs[2].id, jobs[3].id}
    keys = QueueKeys("default")
    assert await queue.redis.hget(keys.running, "c:k") == "1"
    assert await queue.redis.zcard(keys.tag + ":parked:c:k") == 1


async def test_a_key_counts_with_its_owner_and_a_raised_cap_unparks(queue: RedisQueue) -> None:
    """Guards how the caps combine: a job runs only while both its owner's and its key's
    groups have room, and raising the per-key cap (configure) lets parked jobs back."""
    await queue.configure(QueueSettings("default", max_running_per_owner=2, max_running_per_key=1))
    a1, a2, b1, c1 = keyed("a"), keyed("a"), keyed("b"), keyed("c")
    other = keyed("c", owner="bob")
    await queue.enqueue([a1, a2, b1, c1, other])
    first = await claim(queue)
    # a2 waits on key a, c1 on alice's cap of 2; key c still has room for bob's job.
    assert [j.id for j in first] == [a1.id, b1.id, other.id]
    await queue.configure(QueueSettings("default", max_running_per_owner=5, max_running_per_key=3))
    assert sorted(j.id for j in await claim(queue)) == sorted([a2.id, c1.id])


@pytest.mark.parametrize(
    ("limits", "key", "group"),
    [
        (QueueSettings("default", max_running_per_key=1), "k", "c:k"),
        (QueueSettings("default", max_running_per_owner=1), "", "o:alice"),
    ],
    ids=["concurrency-key", "owner"],
)
async def test_a_group_whose_parked_jobs_were_cancelled_leaves_the_parked_groups(
    queue: RedisQueue, limits: QueueSettings, key: str, group: str
) -> None:
    """Guards q.parked_groups against a leak: a cap group's parked set emptied by cancels
    (cancel takes the job out of its parked set only) leaves the set of parked groups when
    its next lease ends, instead of staying there for good (every configure walks each
    member)."""
    await queue.configure(limits)
    running, parked = keyed(key), keyed(key)
    await queue.enqueue([running, parked])
    assert [j.id for j in await claim(queue)] == [running.id]
    keys = QueueKeys("default")
    assert await queue.redis.sismember(keys.parked_groups, group) == 1
    assert (await queue.cancel("default", parked.id, now_ms())).state == JobState.QUEUED
    lease = (await queue.hot("default", running.id) or {})["lease"]
    assert await queue.finish_many([(running, lease, ended(running.id, JobState.SUCCEEDED))])
    assert await queue.redis.zcard(keys.parked_prefix + group) == 0
    assert await queue.redis.smembers(keys.parked_groups) == set()
