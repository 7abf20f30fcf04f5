"""The retention sweeper against real stores (PostgreSQL and SQLite, a real folder store,
a real Redis): only jobs past `finish_time + retention` go, with their objects, attempts,
artifact rows and hot state; batches repeat until nothing expired is left."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from conveyor.config import Settings
from conveyor.db import Database, JobStore
from conveyor.db.artifacts import ArtifactStore
from conveyor.jobs.artifacts import Artifact, artifact_key
from conveyor.jobs.model import FALLBACK_RETRY, Job, JobDefaults, JobSpec, JobState, now_ms
from conveyor.jobs.retention import resolve_retention_ms
from conveyor.objects.local import LocalStore
from conveyor.redis import RedisQueue, connect
from conveyor.scheduling.sweeper import Sweeper
from tests.builders import ended

pytestmark = pytest.mark.usefixtures("clean")


def test_retention_comes_from_the_request_else_the_type_else_the_server() -> None:
    assert resolve_retention_ms(5000, 60, 3600) == 5000
    assert resolve_retention_ms(None, 60, 3600) == 60_000
    assert resolve_retention_ms(None, None, 3600) == 3_600_000
    assert resolve_retention_ms(None, 0, 3600) is None  # the type keeps its jobs forever
    assert resolve_retention_ms(None, None, 0) is None


async def _finished(store: JobStore, retention_ms: int | None) -> Job:
    defaults = JobDefaults(3, 1000, FALLBACK_RETRY, retention_ms)
    job = JobSpec(type="noop").new_job("alice", defaults=defaults, now=now_ms())
    [stored] = await store.insert([job])
    assert isinstance(stored, Job)
    await store.write_outcomes([ended(job.id, JobState.SUCCEEDED)])
    return job


async def test_the_sweeper_deletes_expired_jobs_with_everything_they_hold(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    store, artifacts = JobStore(db), ArtifactStore(db)
    objects = LocalStore(tmp_path / "objects", base_url="http://x")
    redis = connect(settings.redis_url)
    queue = RedisQueue(redis, settings)
    try:
        expired = [await _finished(store, 1) for _ in range(5)]
        kept = await _finished(store, 3_600_000)
        forever = await _finished(store, None)
        unfinished = JobSpec(type="noop").new_job(
            "alice", defaults=JobDefaults(3, 1000, FALLBACK_RETRY, 1), now=now_ms()
        )
        await store.insert([unfinished])
        for job in [*expired, kept, forever]:
            key = artifact_key(job.id, "out.txt")
            objects.put(key, io.BytesIO(b"data"))
            await artifacts.record(Artifact(job.id, "out.txt", key, 4, "text/plain", "", 0))
        await queue.enqueue([expired[0]])
        sweeper = Sweeper(artifacts, objects, queue, batch=2, interval=60)
        deleted = await sweeper.sweep(now_ms() + 1000)
        assert deleted == 5 and sweeper.stats.objects == 5
        for job in expired:
            assert await store.get(job.id) is None
            assert objects.stat(artifact_key(job.id, "out.txt")) is None
            assert await artifacts.of_job(job.id) == []
        assert await queue.hot(expired[0].queue, expired[0].id) is None
        assert await store.attempts(expired[0].id) == []
        for job in (kept, forever, unfinished):
            assert await store.get(job.id) is not None
        assert objects.stat(artifact_key(kept.id, "out.txt")) is not None
        assert await sweeper.sweep(now_ms() + 1000) == 0
    finally:
        await redis.aclose()


async def test_a_job_replayed_after_it_was_found_expired_is_not_deleted(db: Database) -> None:
    """The delete re-checks expiry: a job made unfinished meanwhile (RetryJob) stays."""
    store, artifacts = JobStore(db), ArtifactStore(db)
    defaults = JobDefaults(3, 1000, FALLBACK_RETRY, 1)
    job = JobSpec(type="noop").new_job("alice", defaults=defaults, now=now_ms())
    await store.insert([job])
    await store.cancel(job.id, "alice")
    later = now_ms() + 1000
    [(found, _, _)] = await artifacts.expired(later, 10)
    assert found == job.id
    replayed = await store.replay(job.id, "alice", 3)
    assert replayed.state is JobState.QUEUED
    assert await artifacts.delete_jobs([job.id], later) == 0
    assert await store.get(job.id) is not None
