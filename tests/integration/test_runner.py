"""The worker engine in-process against real Redis and PostgreSQL: outcomes are written to
the database first, and Redis converges to whatever the database already holds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conveyor.config import Settings
from conveyor.db import JobStore
from conveyor.handlers import JobContext, Registry
from conveyor.jobs.model import FALLBACK_RETRY, Job, JobDefaults, JobSpec, JobState, now_ms
from conveyor.redis import RedisQueue
from conveyor.worker.runner import Worker
from tests.builders import ended, running_worker

pytestmark = pytest.mark.usefixtures("clean")


class Gate:
    """A handler that waits until the test opens the gate."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, payload: dict[str, Any], ctx: JobContext) -> None:
        self.started.set()
        await self.release.wait()


@pytest.fixture
async def parts(settings: Settings) -> AsyncIterator[tuple[Worker, JobStore, RedisQueue, Gate]]:
    gate = Gate()
    registry = Registry()
    registry.register("gate", gate)
    async with running_worker(settings, registry) as (worker, store, queue):
        try:
            yield worker, store, queue, gate
        finally:
            gate.release.set()


async def submit(store: JobStore, queue: RedisQueue) -> Job:
    job = JobSpec(type="gate").new_job(
        "alice", defaults=JobDefaults(3, 10_000, FALLBACK_RETRY), now=now_ms()
    )
    await store.insert([job])
    await queue.enqueue([job])
    return job


async def hot_state(queue: RedisQueue, job: Job, state: JobState) -> None:
    async with asyncio.timeout(10):
        while True:
            hot = await queue.hot(job.queue, job.id)
            if hot is not None and int(hot["state"]) == state:
                return
            await asyncio.sleep(0.05)


async def test_success_is_written_to_the_database_and_redis(
    parts: tuple[Worker, JobStore, RedisQueue, Gate],
) -> None:
    worker, store, queue, gate = parts
    job = await submit(store, queue)
    await asyncio.wait_for(gate.started.wait(), 10)
    assert job.id in worker.running
    gate.release.set()
    await hot_state(queue, job, JobState.SUCCEEDED)
    stored = await store.get(job.id)
    assert stored is not None and stored.state is JobState.SUCCEEDED and stored.attempt == 1
    assert not worker.running and not worker.recording


async def test_redis_converges_to_a_terminal_state_already_in_the_database(
    parts: tuple[Worker, JobStore, RedisQueue, Gate],
) -> None:
    """As after a worker died between its database write and its Redis write: the job runs
    again, its late outcome is refused by the database, and Redis takes the database's state."""
    worker, store, queue, gate = parts
    job = await submit(store, queue)
    await asyncio.wait_for(gate.started.wait(), 10)
    earlier = ended(job.id, JobState.DEAD, error="earlier attempt")
    [result] = await store.write_outcomes([earlier])
    assert result.applied
    gate.release.set()
    await hot_state(queue, job, JobState.DEAD)
    stored = await store.get(job.id)
    assert stored is not None and stored.error == "earlier attempt"
    assert worker.recorder.stats.stale_writes == 1
