"""AttemptRecorder: how a worker writes what became of its attempts, fenced.

Two rules make a worker that froze past its lease (SIGSTOP, a long GC pause, a partition)
harmless when it wakes up:

- **Take over before running.** A claim that reclaimed a job from a lost attempt first bumps
  the job's fence in the database (and records the lost attempt). From then on the lost
  attempt's outcome, carrying the old fence, is refused. If the lost attempt's outcome got
  there first, the job has finished and the new claim does not run it.
- **Database first, then Redis.** An outcome is committed to PostgreSQL (fenced by fence and
  attempt number), then to Redis (fenced by the lease token). A refused database write is a
  stale write: it is counted and logged, and Redis is brought to the state the database
  holds, which the lease check turns into a no-op when a newer attempt owns the job there.

Writes are group-committed (one statement, then one pipeline, for all outcomes that ended
meanwhile) and retried while a store is unreachable, so an outage delays outcomes but never
loses them; the attempt keeps its lease meanwhile.

An end that other jobs wait for (the database's write says so) is then resolved
(conveyor.jobs.dependencies): its dependents counted down, cancelled or released, and the
released enqueued, group-committed too. Should the worker die before, the reconciler
resolves it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from conveyor.batching import Batcher
from conveyor.db import JobStore
from conveyor.db.dependencies import DependencyStore
from conveyor.db.rows import WriteResult
from conveyor.errors import Unavailable
from conveyor.jobs.attempts import Attempt, AttemptEnd, AttemptOutcome
from conveyor.jobs.dependencies import Resolution
from conveyor.jobs.model import Job, JobState, now_ms
from conveyor.redis import Claim, RedisQueue

log = logging.getLogger(__name__)

R = TypeVar("R")

RETRY_SECONDS = 1.0


@dataclass(slots=True)
class RecorderStats:
    stale_writes: int = 0


class AttemptRecorder:
    def __init__(
        self,
        store: JobStore,
        queue: RedisQueue,
        closing: Callable[[], bool],
        on_stale: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.on_stale = on_stale
        self.queue = queue
        self.stats = RecorderStats()
        self._closing = closing
        # Two group-commit stages, so the database write of one batch overlaps the Redis
        # write of the previous one.
        self._db: Batcher[AttemptEnd, WriteResult] = Batcher(store.write_outcomes)
        self._redis: Batcher[tuple[Job, str, AttemptEnd], bool] = Batcher(queue.finish_many)
        self.dependencies = DependencyStore(store.db)
        self._resolver: Batcher[str, Resolution] = Batcher(self._resolve)

    async def take_over(self, claim: Claim) -> bool:
        """Fence off a reclaimed job's lost attempts; False if the job must not run here."""
        job, lost = claim.job, claim.lost
        taken = await self._until_done(job, lambda: self.store.fence(job.id, lost))
        if self._closing() and taken is None:
            return False
        if taken is not None:
            job.fence = taken
            log.warning(
                "job %s: took over from lost attempt %d (worker %s); fence now %d",
                job.id,
                lost[-1].attempt,
                lost[-1].worker_id,
                taken,
            )
            return True
        current = await self._until_done(job, lambda: self.store.get(job.id))
        log.info("job %s finished before its reclaim could run it", job.id)
        if current is not None:
            await self._converge(claim, current)
        return False

    async def record(self, claim: Claim, end: AttemptEnd) -> bool:
        """Write an attempt's end: the database, then Redis (see the module docstring).
        True when the database took it; False when refused as stale, or given up on
        because the worker is closing."""
        result = await self._until_done(claim.job, lambda: self._db.submit(end))
        if result is None:
            return False
        if result.applied:
            await self._until_done(
                claim.job, lambda: self._redis.submit((claim.job, claim.lease, end))
            )
            if result.has_dependents and end.state.terminal:
                await self._resolved(claim.job)
            return True
        current = result.current
        if current is not None and _cancelled_under(end, current):
            await self._say_cancelled_late(claim, end)
            return False
        self.stats.stale_writes += 1
        self.on_stale()
        log.warning(
            "job %s: stale outcome of attempt %d refused (fence %d); the database holds %s",
            end.id,
            end.attempt,
            end.fence,
            "nothing"
            if current is None
            else f"{current.state.label} attempt {current.attempt} fence {current.fence}",
        )
        if current is not None:
            await self._converge(claim, current)
        return False

    async def _resolve(self, ended: Sequence[str]) -> list[Resolution]:
        """Resolve a group of ended jobs in one transaction; the whole resolution is
        answered to the first of them, nothing to the others (one enqueue for all)."""
        done = await self.dependencies.resolve(ended)
        return [done] + [Resolution() for _ in ended[1:]]

    async def _resolved(self, job: Job) -> None:
        """Resolve the end of `job` for its dependents and enqueue those it released."""
        done = await self._until_done(job, lambda: self._resolver.submit(job.id))
        if done is not None:
            await self._until_done(job, lambda: self.queue.after_resolution(done))

    async def _say_cancelled_late(self, claim: Claim, end: AttemptEnd) -> None:
        """The job was cancelled after this attempt's handler had returned: the cancel is
        final, so the outcome is discarded, and the attempt's record says so (replacing
        the API's "cancelled while running", which could not know)."""
        outcome = end.outcome.name.lower().replace("_", " ")
        stopped = Attempt(
            job_id=end.id,
            attempt=end.attempt,
            outcome=AttemptOutcome.CANCELLED,
            worker_id=end.worker_id,
            start_time=end.start_time,
            finish_time=end.ended,
            error=f"cancelled after its handler had ended ({outcome}): "
            + ("its result was discarded" if not end.error else f"discarded: {end.error}"),
        )
        log.info("job %s: cancelled after attempt %d had ended (%s)", end.id, end.attempt, outcome)
        await self._until_done(
            claim.job, lambda: self.store.record_cancelled(stopped, replace=True)
        )

    async def _converge(self, claim: Claim, current: Job) -> None:
        """Bring Redis to the database's state for this job, if this claim's lease still
        holds it there (else Redis belongs to a newer attempt and nothing changes)."""
        if not (current.state.terminal or current.state is JobState.RETRYING):
            return  # the job is back in line or running elsewhere: the lease lapses
        end = AttemptEnd(
            id=current.id,
            state=current.state,
            attempt=current.attempt,
            fence=current.fence,
            error=current.error,
            progress=current.progress,
            progress_message=current.progress_message,
            start_time=current.start_time,
            finish_time=current.finish_time,
            run_at=current.run_at,
            outcome=AttemptOutcome.UNSPECIFIED,
            worker_id="",
            ended=now_ms(),
        )
        await self._until_done(claim.job, lambda: self._redis.submit((claim.job, claim.lease, end)))

    async def _until_done(self, job: Job, write: Callable[[], Awaitable[R]]) -> R | None:
        """Retry `write` while its store is unavailable; None once the worker is closing
        (the lease then lapses and the job runs again elsewhere)."""
        tries = 0
        while True:
            try:
                return await write()
            except Unavailable as exc:
                if self._closing():
                    return None
                tries += 1
                level = logging.WARNING if tries == 1 else logging.DEBUG
                log.log(level, "job %s: not recorded yet (%s); retrying every %gs", job.id, exc,
                        RETRY_SECONDS)  # fmt: skip
                await asyncio.sleep(RETRY_SECONDS)


def _cancelled_under(end: AttemptEnd, current: Job) -> bool:
    """Whether the outcome was refused because a cancel of this very attempt committed
    first (not because a newer attempt took the job)."""
    return (
        current.state is JobState.CANCELLED
        and current.fence == end.fence
        and current.attempt <= end.attempt
    )
