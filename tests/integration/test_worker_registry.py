"""The worker registry and the release of a dead worker's leases, against a real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from conveyor.config import Settings
from conveyor.jobs.model import FALLBACK_RETRY, Job, JobDefaults, JobSpec, now_ms
from conveyor.redis import Claim, QueueKeys, RedisQueue, connect
from conveyor.redis.workers import SERVED_KEY, WORKERS_KEY, WorkerInfo, WorkerRegistry

pytestmark = pytest.mark.usefixtures("clean")
QUEUE = "default"


@pytest.fixture
async def queue(settings: Settings) -> AsyncIterator[RedisQueue]:
    client = connect(settings.redis_url)
    yield RedisQueue(client, settings)
    await client.aclose()


def new() -> Job:
    spec = JobSpec(type="noop")
    return spec.new_job("alice", defaults=JobDefaults(3, 1000, FALLBACK_RETRY), now=now_ms())


async def claim(queue: RedisQueue, worker: str, count: int = 10) -> list[Claim]:
    claims, _ = await queue.claim(QUEUE, count, worker_id=worker, token=worker, lease_ms=30_000)
    return claims


def info(worker: str) -> WorkerInfo:
    now = now_ms()
    return WorkerInfo(worker, "host", [QUEUE], ["noop"], 4, 0, now, now)


async def test_release_makes_only_the_dead_workers_leases_due_however_many_sweep(
    queue: RedisQueue,
) -> None:
    """Guards the fenced, idempotent release: three sweepers at once release the dead
    worker's two leases once, leave another worker's lease alone, and the next claim
    reclaims the two as lost attempts that say why; a job already taken over is untouched."""
    await queue.enqueue([new(), new(), new()])
    dead = await claim(queue, "dead", 2)
    [other] = await claim(queue, "other")
    await queue.redis.delete(QueueKeys(QUEUE).wake)
    counts = await asyncio.gather(*(queue.release_worker(QUEUE, "dead") for _ in range(3)))
    assert sorted(counts) == [0, 0, 2]
    assert await queue.redis.llen(QueueKeys(QUEUE).wake) == 2, "a claimer woken per job"

    reclaimed = await claim(queue, "rescuer")
    assert sorted(c.job.id for c in reclaimed) == sorted(c.job.id for c in dead)
    for c in reclaimed:
        assert c.job.attempt == 2
        assert [(a.attempt, a.worker_id, a.error) for a in c.lost] == [
            (1, "dead", "lease released: worker dead stopped announcing itself")
        ]
    assert await queue.release_worker(QUEUE, "dead") == 0, "taken over: nothing of it left"
    assert await queue.heartbeat(QUEUE, {other.job.id: other.lease}, 30_000) == []


async def test_a_slow_worker_renewing_before_any_claim_keeps_its_job(queue: RedisQueue) -> None:
    """Guards the lease as the judge: a worker released as dead that renews before anyone
    claims keeps its job, as one renewing an expired lease just in time does, and a lease
    that lapses later is reported as what it is, not as a death."""
    await queue.enqueue([new()])
    [held] = await claim(queue, "slow")
    assert await queue.release_worker(QUEUE, "slow") == 1
    assert await queue.heartbeat(QUEUE, {held.job.id: held.lease}, 30_000) == []
    assert await claim(queue, "rescuer") == [], "renewed: nothing to reclaim"
    assert await queue.heartbeat(QUEUE, {held.job.id: held.lease}, 1) == []
    deadline = time.monotonic() + 5
    while not (reclaimed := await claim(queue, "rescuer")):
        assert time.monotonic() < deadline, "the lapsed lease was never reclaimed"
        await asyncio.sleep(0.01)
    assert [a.error for a in reclaimed[0].lost] == [
        "lease expired: worker slow stopped renewing it"
    ]


async def test_a_sweep_releases_a_dead_workers_leases_once_and_forgets_it(
    queue: RedisQueue,
) -> None:
    """Guards the sweep: a worker whose announcement expired stays in the registry (hidden
    from `live`) until a sweep has released its leases; two live workers sweeping at once
    release them once; then its id and its queues' record are gone."""
    registry = WorkerRegistry(queue.redis, queue.scripts)
    first = await registry.announce(info("dead"), ttl_ms=100)
    assert not first.was_alive, "a new worker has no previous announcement"
    await queue.enqueue([new(), new()])
    assert len(await claim(queue, "dead")) == 2

    deadline = time.monotonic() + 5
    while await queue.redis.exists("cv:worker:dead"):
        assert time.monotonic() < deadline, "the announcement never expired"
        await asyncio.sleep(0.01)
    assert [w.worker_id for w in await registry.live()] == []
    assert await queue.redis.zscore(WORKERS_KEY, "dead") is not None, "kept for the sweep"

    assert not (await registry.announce(info("live-1"), ttl_ms=1000)).was_alive
    again = await registry.announce(info("live-1"), ttl_ms=1000)
    assert again.was_alive and again.stale == [], "silent for less than its lifetime"
    again = await registry.announce(info("live-1"), ttl_ms=100)
    assert again.stale == ["dead"]
    sweeps = await asyncio.gather(
        registry.sweep(queue, again.stale, "live-1"), registry.sweep(queue, again.stale, "live-2")
    )
    assert sum(s.get("dead", 0) for s in sweeps) == 2
    assert await queue.redis.zscore(WORKERS_KEY, "dead") is None
    assert await queue.redis.hget(SERVED_KEY, "dead") is None
    assert len(await claim(queue, "live-1")) == 2
