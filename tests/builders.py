"""Small constructors for test data that the code under test would otherwise make, and
the in-process worker (real Redis and database) that integration tests run jobs on."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from conveyor.config import Settings
from conveyor.db import Database, JobStore
from conveyor.handlers import Registry
from conveyor.jobs.attempts import AttemptEnd, AttemptOutcome
from conveyor.jobs.model import JobState, now_ms
from conveyor.redis import EventHub, RedisQueue, connect
from conveyor.worker.runner import Worker

_OUTCOMES = {
    JobState.SUCCEEDED: AttemptOutcome.SUCCEEDED,
    JobState.CANCELLED: AttemptOutcome.CANCELLED,
}


def ended(
    job_id: str,
    state: JobState,
    attempt: int = 1,
    *,
    fence: int = 0,
    error: str = "",
    worker_id: str = "test-worker",
) -> AttemptEnd:
    """The end of attempt `attempt` of a job as a worker holding `fence` would write it."""
    now = now_ms()
    return AttemptEnd(
        id=job_id,
        state=state,
        attempt=attempt,
        fence=fence,
        error=error,
        progress=100.0 if state is JobState.SUCCEEDED else 0.0,
        progress_message="",
        start_time=now - 1,
        finish_time=None if state is JobState.RETRYING else now,
        run_at=now + 1000 if state is JobState.RETRYING else None,
        outcome=_OUTCOMES.get(state, AttemptOutcome.FAILED),
        worker_id=worker_id,
        ended=now,
    )


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, registry: Registry
) -> AsyncIterator[tuple[Worker, JobStore, RedisQueue]]:
    """A started Worker for `registry`'s handlers, with its store and queue; stopped and
    every connection closed on exit."""
    db = Database(settings.database_url)
    store = JobStore(db)
    cluster = settings.redis_cluster
    redis = connect(settings.redis_url, cluster=cluster)
    blocking = connect(settings.redis_url, cluster=cluster, blocking=True)
    queue = RedisQueue(redis, settings)
    hub = EventHub(redis)
    worker = Worker(
        settings, queue=queue, blocking=blocking, hub=hub, store=store, registry=registry
    )
    await worker.start()
    try:
        yield worker, store, queue
    finally:
        await worker.stop(2.0)
        await hub.close()
        await blocking.aclose()
        await redis.aclose()
        await store.close()
        await db.close()
