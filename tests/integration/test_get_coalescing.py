"""Concurrent GetJobs share Redis round trips: JobOperations hands their hot reads to one
pipeline (`RedisQueue.look_many`) instead of one round trip per call, each caller still gets
its own job, and a lone read is a plain call. On real Redis and the test database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from conveyor.api.jobs import JobOperations
from conveyor.config import Settings
from conveyor.db import Database, JobStore
from conveyor.jobs.model import JobSpec
from conveyor.jobs.queues import Waiting
from conveyor.redis import EventHub, RedisQueue, connect
from conveyor.server.auth import Principal, Role

ALICE = Principal("alice", Role.USER)
Looked = tuple[dict[str, str] | None, Waiting | None]


@pytest.fixture
async def ops(db: Database, settings: Settings) -> AsyncIterator[JobOperations]:
    redis = connect(settings.redis_url)
    hub = EventHub(redis)
    yield JobOperations(JobStore(db), RedisQueue(redis, settings), hub, settings)
    await hub.close()
    await redis.aclose()


async def test_concurrent_reads_share_pipelines(
    ops: JobOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = await ops.submit_many(
        ALICE, [JobSpec(type="noop", queue="coalesced", payload={"i": i}) for i in range(40)]
    )
    batches: list[int] = []
    real = ops.queue.look_many

    async def counted(refs: Sequence[tuple[str, str]]) -> list[Looked]:
        batches.append(len(refs))
        return await real(refs)

    monkeypatch.setattr(ops.queue, "look_many", counted)

    got = await asyncio.gather(*(ops.get(ALICE, job.id) for job in jobs))
    assert [job.id for job in got] == [job.id for job in jobs]
    assert [job.payload for job in got] == [{"i": i} for i in range(40)]
    assert sum(batches) == 40
    assert len(batches) < 40 / 2, f"40 concurrent reads made {len(batches)} round trips"

    batches.clear()
    assert (await ops.get(ALICE, jobs[3].id)).payload == {"i": 3}
    assert batches == [1]
