"""Fencing, in-process against real Redis and both databases: once a job's lease has been
reclaimed, the attempt that lost it can no longer write its state, its progress or its
outcome; a replay fences off the run before it; and `once()` markers are fenced the same way.

These are the deterministic halves of the SIGSTOP fault test (tests/faults/test_fencing.py):
here each ordering of the race is forced step by step."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from conveyor.config import Settings
from conveyor.db import Database, JobStore
from conveyor.jobs.attempts import AttemptOutcome
from conveyor.jobs.model import FALLBACK_RETRY, Job, JobDefaults, JobSpec, JobState, now_ms
from conveyor.redis import Claim, RedisQueue, connect
from conveyor.telemetry.metrics import WorkerMetrics
from conveyor.worker.recording import AttemptRecorder
from tests.builders import ended

pytestmark = pytest.mark.usefixtures("clean")

LEASE_MS = 100


@dataclass
class Parts:
    store: JobStore
    queue: RedisQueue

    def recorder(self, metrics: WorkerMetrics | None = None) -> AttemptRecorder:
        on_stale = metrics.stale_writes.inc if metrics else lambda: None
        return AttemptRecorder(self.store, self.queue, lambda: False, on_stale=on_stale)

    async def submit(self, max_attempts: int = 3) -> Job:
        job = JobSpec(type="noop").new_job(
            "alice", defaults=JobDefaults(max_attempts, 10_000, FALLBACK_RETRY), now=now_ms()
        )
        await self.store.insert([job])
        await self.queue.enqueue([job])
        return job

    async def claim(self, worker: str, lease_ms: int = 10_000) -> Claim:
        claims, _ = await self.queue.claim(
            "default", 1, worker_id=worker, token=worker, lease_ms=lease_ms
        )
        assert len(claims) == 1
        return claims[0]

    async def claim_after_expiry(self, worker: str) -> Claim:
        """Claim again once the previous lease (LEASE_MS) has run out."""
        async with asyncio.timeout(5):
            while True:
                claims, _ = await self.queue.claim(
                    "default", 1, worker_id=worker, token=worker, lease_ms=10_000
                )
                if claims:
                    return claims[0]
                await asyncio.sleep(LEASE_MS / 1000 / 4)


@pytest.fixture
async def parts(db: Database, settings: Settings) -> AsyncIterator[Parts]:
    redis = connect(settings.redis_url)
    store = JobStore(db)
    yield Parts(store, RedisQueue(redis, settings))
    await store.close()
    await redis.aclose()


async def test_a_stale_outcome_after_a_takeover_is_refused_and_counted(parts: Parts) -> None:
    job = await parts.submit()
    stale = await parts.claim("worker-a", lease_ms=LEASE_MS)
    fresh = await parts.claim_after_expiry("worker-b")
    assert [(x.attempt, x.worker_id) for x in fresh.lost] == [(1, "worker-a")]
    assert fresh.job.attempt == 2

    metrics = WorkerMetrics()
    b, a = parts.recorder(), parts.recorder(metrics)
    assert await b.take_over(fresh)
    assert fresh.job.fence == 1
    await b.record(fresh, ended(job.id, JobState.SUCCEEDED, 2, fence=1, worker_id="worker-b"))
    assert not await parts.queue.progress(stale.job, stale.lease, 50.0, "stale progress")
    await a.record(stale, ended(job.id, JobState.DEAD, 1, fence=0, error="stale outcome"))

    assert a.stats.stale_writes == 1 and b.stats.stale_writes == 0
    assert metrics.registry.get_sample_value("conveyor_stale_writes_refused_total") == 1
    stored = await parts.store.get(job.id)
    assert stored is not None
    assert (stored.state, stored.attempt, stored.error) == (JobState.SUCCEEDED, 2, "")
    hot = await parts.queue.hot("default", job.id)
    assert hot is not None and int(hot["state"]) == JobState.SUCCEEDED and hot["error"] == ""
    attempts = await parts.store.attempts(job.id)
    assert [(x.attempt, x.outcome, x.worker_id) for x in attempts] == [
        (1, AttemptOutcome.LOST, "worker-a"),
        (2, AttemptOutcome.SUCCEEDED, "worker-b"),
    ]


async def test_a_lost_attempt_that_records_first_wins_and_the_reclaim_stands_down(
    parts: Parts,
) -> None:
    job = await parts.submit()
    stale = await parts.claim("worker-a", lease_ms=LEASE_MS)
    fresh = await parts.claim_after_expiry("worker-b")
    a, b = parts.recorder(), parts.recorder()
    await a.record(stale, ended(job.id, JobState.SUCCEEDED, 1, fence=0, worker_id="worker-a"))
    assert a.stats.stale_writes == 0  # the database took it: no newer attempt had fenced it

    assert not await b.take_over(fresh), "a finished job must not run again"
    hot = await parts.queue.hot("default", job.id)
    assert hot is not None and int(hot["state"]) == JobState.SUCCEEDED, "redis converged"
    stored = await parts.store.get(job.id)
    assert stored is not None and (stored.state, stored.attempt) == (JobState.SUCCEEDED, 1)


async def test_an_outcome_is_applied_once(parts: Parts) -> None:
    """A retried write (its first reply lost) finds its own attempt recorded and changes nothing."""
    job = await parts.submit()
    claim = await parts.claim("worker-a")
    end = ended(job.id, JobState.RETRYING, 1, error="boom")
    [first] = await parts.store.write_outcomes([end])
    [again] = await parts.store.write_outcomes([end])
    assert first.applied and not again.applied
    assert again.current is not None and again.current.state is JobState.RETRYING
    assert len(await parts.store.attempts(claim.job.id)) == 1


async def test_a_replay_fences_off_the_run_before_it(parts: Parts) -> None:
    job = await parts.submit()
    old = await parts.claim("worker-a")
    await parts.store.cancel(job.id, "alice")
    await parts.queue.cancel("default", job.id, now_ms())
    replayed = await parts.store.replay(job.id, "alice", 2)
    assert replayed.state is JobState.QUEUED and replayed.fence == 1
    assert replayed.max_attempts == 2  # attempt 0 recorded + a budget of 2
    assert await parts.queue.reconcile("default", [(job.id, 1)]) == (0, [job.id])
    assert await parts.queue.restore([replayed]) == (0, 1)

    [refused] = await parts.store.write_outcomes(
        [ended(job.id, JobState.SUCCEEDED, old.job.attempt, fence=0)]
    )
    assert not refused.applied
    new = await parts.claim("worker-b")
    assert new.job.fence == 1
    [applied] = await parts.store.write_outcomes(
        [ended(job.id, JobState.SUCCEEDED, new.job.attempt, fence=1)]
    )
    assert applied.applied


async def test_once_is_true_once_per_key_and_never_for_a_stale_fence(parts: Parts) -> None:
    job = await parts.submit()
    store = parts.store
    assert await store.claim_effect(job.id, "email", 1, 0)
    assert not await store.claim_effect(job.id, "email", 2, 0), "a retry does not repeat it"
    assert await store.claim_effect(job.id, "receipt", 2, 0), "another key is its own effect"
    claim = await parts.claim("worker-a", lease_ms=LEASE_MS)
    fresh = await parts.claim_after_expiry("worker-b")
    assert await parts.recorder().take_over(fresh)
    assert not await store.claim_effect(job.id, "invoice", claim.job.attempt, 0), "stale fence"
    assert await store.claim_effect(job.id, "invoice", fresh.job.attempt, fresh.job.fence)
    await store.write_outcomes([ended(job.id, JobState.SUCCEEDED, fresh.job.attempt, fence=1)])
    assert not await store.claim_effect(job.id, "late", 9, 1), "a finished job claims nothing"


async def test_lost_attempts_pass_on_until_one_is_recorded(parts: Parts) -> None:
    """A reclaimer that dies before it records the attempt it took over passes that
    attempt on: the next reclaimer records both, so the history has no holes."""
    job = await parts.submit(max_attempts=5)
    await parts.claim("worker-a", lease_ms=LEASE_MS)
    dies_too = await parts.claim_after_expiry("worker-b")
    assert [x.attempt for x in dies_too.lost] == [1]
    await parts.queue.redis.zadd("cv:{default}:leases", {job.id: 0})  # its lease runs out
    third = await parts.claim_after_expiry("worker-c")
    assert [(x.attempt, x.worker_id) for x in third.lost] == [(1, "worker-a"), (2, "worker-b")]
    recorder = parts.recorder()
    assert await recorder.take_over(third)
    await recorder.record(third, ended(job.id, JobState.SUCCEEDED, 3, fence=third.job.fence))
    history = [(x.attempt, x.outcome) for x in await parts.store.attempts(job.id)]
    assert history == [
        (1, AttemptOutcome.LOST),
        (2, AttemptOutcome.LOST),
        (3, AttemptOutcome.SUCCEEDED),
    ]
    hot = await parts.queue.hot("default", job.id)
    assert hot is not None and "lost" not in hot, "recorded, so no longer passed on"


async def cancel_as_the_api(parts: Parts, job: Job) -> None:
    """What JobOperations.cancel does: the database, then Redis, then the stopped attempt."""
    cancelled = await parts.store.cancel(job.id, None)
    found = await parts.queue.cancel(job.queue, job.id, cancelled.finish_time or now_ms())
    if found.stopped is not None:
        await parts.store.record_cancelled(found.stopped)


async def test_a_cancel_of_a_running_attempt_is_on_record(parts: Parts) -> None:
    """Guards the history of a cancelled running job: the attempt the cancel stopped is
    recorded as CANCELLED with its worker, start and end, and the job says attempt 1 (before:
    attempt 0 and no record, as if it had never run)."""
    job = await parts.submit()
    claim = await parts.claim("worker-a")
    await cancel_as_the_api(parts, job)

    stored = await parts.store.get(job.id)
    assert stored is not None and (stored.state, stored.attempt) == (JobState.CANCELLED, 1)
    assert stored.start_time == claim.job.start_time
    [record] = await parts.store.attempts(job.id)
    assert (record.attempt, record.outcome, record.worker_id) == (
        1,
        AttemptOutcome.CANCELLED,
        "worker-a",
    )
    assert record.error == "cancelled while running on worker worker-a"
    assert record.start_time is not None and record.start_time <= record.finish_time


@pytest.mark.parametrize("worker_first", [False, True], ids=["api-first", "worker-first"])
async def test_a_cancel_after_the_handler_returned_says_its_result_was_discarded(
    parts: Parts, worker_first: bool
) -> None:
    """Guards the cancel that commits after the handler returned but before its outcome
    was written: the cancel is final (the job stays CANCELLED, the outcome is refused), and
    the attempt's record says the handler had succeeded and its result was discarded,
    whichever of the API and the worker records the attempt first."""
    job = await parts.submit()
    claim = await parts.claim("worker-a")
    recorder = parts.recorder()
    success = ended(job.id, JobState.SUCCEEDED, 1, worker_id="worker-a")

    cancelled = await parts.store.cancel(job.id, None)
    if worker_first:
        assert not await recorder.record(claim, success)
    found = await parts.queue.cancel(job.queue, job.id, cancelled.finish_time or now_ms())
    assert found.stopped is not None
    await parts.store.record_cancelled(found.stopped)
    if not worker_first:
        assert not await recorder.record(claim, success)

    assert recorder.stats.stale_writes == 0, "a cancel is not a lost attempt"
    stored = await parts.store.get(job.id)
    assert stored is not None and (stored.state, stored.attempt) == (JobState.CANCELLED, 1)
    [record] = await parts.store.attempts(job.id)
    assert (record.outcome, record.worker_id) == (AttemptOutcome.CANCELLED, "worker-a")
    assert record.error == (
        "cancelled after its handler had ended (succeeded): its result was discarded"
    )
