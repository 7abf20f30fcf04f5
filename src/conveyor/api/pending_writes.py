"""PendingWrites: the Redis writes an API process still owes for changes it has committed.

A submit commits the job row, then enqueues the job in Redis (see `conveyor.api.jobs`).
When that enqueue fails — Redis refuses it (out of memory under `noeviction`, a read-only
replica, loading its data) or cannot be reached — the job is still accepted: it is
committed, so the client is answered OK, and telling it otherwise would make a client
without an idempotency key submit it again. The job must then reach Redis soon, not at the
reconciler's next pass (a minute by default): this process remembers it and tries again,
first after 0.1 s, then twice as long each time (jittered) up to
`CONVEYOR_ENQUEUE_RETRY_MAX_SECONDS`, and at once when the health probe sees Redis take
writes again. A RetryJob whose replay Redis refused is remembered the same way, and so is
a cancel whose Redis step failed (Redis's copy would otherwise run once Redis has room).

What is owed is kept per job, not per call: each retry reads the jobs' rows, the truth, and
brings Redis to them. An unfinished job is put in line with `restore.lua`, the reconciler's
own step: it leaves a job Redis already holds alone (and replays one Redis holds finished
under an older fence), so a retry that races the reconciler, another replica or a late
first enqueue is harmless. A CANCELLED row is cancelled in Redis (`cancel.lua`, a no-op for
a job Redis lacks or holds finished). So whatever happened to an owed job meanwhile — a
cancel, then a RetryJob — Redis ends as the database says. A job cancelled while its
enqueue was owed is owed again, so a retry that read its row just before the cancel cannot
leave it in line.

Memory is bounded: ids only (about 150 bytes each), at most `CONVEYOR_ENQUEUE_RETRY_LIMIT`
jobs; past that, and for whatever a stopped process still owed, the reconciler's pass
(`CONVEYOR_RECONCILE_INTERVAL_SECONDS`) enqueues them, as it enqueues jobs of a process
killed between commit and enqueue.

Health (`probe`, run by the gRPC server's probe loop every second): a small write tells
whether Redis takes writes. The API stays SERVING while Redis answers but refuses writes:
it still authenticates, commits and answers every submit (the jobs run once Redis has
room), and reads still work, so taking every API replica out of a load balancer at once
would turn a queue that is behind into a total outage. The condition is reported instead
under its own health service name, `conveyor.redis.writes` (NOT_SERVING while refused),
by the gauge `conveyor_redis_writable`, and by one WARNING per change of condition.
(Unreachable Redis still makes the whole API NOT_SERVING, as before: `Connections.checks`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import AsyncIterator, Sequence

from redis.exceptions import RedisError

from conveyor.config import Settings
from conveyor.db import JobStore
from conveyor.errors import RedisRefused, Unavailable
from conveyor.jobs.blocked import Blocked
from conveyor.jobs.model import Job, JobState, now_ms
from conveyor.redis import RedisQueue
from conveyor.telemetry.metrics import ApiMetrics

log = logging.getLogger(__name__)

# The health service name that reports whether Redis takes writes (see the module).
REDIS_WRITES_HEALTH = "conveyor.redis.writes"
FIRST_DELAY_SECONDS = 0.1
UNREACHABLE = "redis could not be reached"
CANCELLED = "cancelled"
# Rows read per retry (one `IN (...)` query, then one restore call per queue).
BATCH = 1000


def describe(exc: BaseException, them: str = "it") -> str:
    """A failed Redis write of `them` in a few words, for a log line and a waiting job's
    `Blocked.enqueue_pending` cause."""
    if isinstance(exc, RedisRefused):
        return f"redis refused {them} ({exc.reason})"
    if isinstance(exc, Unavailable):
        return UNREACHABLE
    return f"redis failed ({type(exc).__name__})"


def _jobs(count: int) -> str:
    return "1 job" if count == 1 else f"{count} jobs"


class PendingWrites:
    def __init__(
        self, store: JobStore, queue: RedisQueue, settings: Settings, metrics: ApiMetrics
    ) -> None:
        self.store = store
        self.queue = queue
        self.metrics = metrics
        self.limit = settings.enqueue_retry_limit
        self.max_delay = settings.enqueue_retry_max_seconds
        self.reconcile_seconds = settings.reconcile_interval_seconds
        # Job id -> why Redis lacks its latest change (for a waiting job's `blocked`),
        # and when it was owed: a change owed while a retry runs is kept for the next.
        self._owed: dict[str, tuple[str, int]] = {}
        self._ticks = itertools.count()
        self._work = asyncio.Event()  # something is owed
        self._writable = asyncio.Event()  # the probe saw Redis take writes again
        self._refused: str | None = None  # the probe's last finding
        self.enqueued = 0  # jobs this process put in line on a retry

    def __len__(self) -> int:
        return len(self._owed)

    # -- what callers owe ----------------------------------------------------------------
    def enqueue_later(self, jobs: Sequence[Job], exc: BaseException) -> None:
        """Remember committed jobs whose enqueue failed with `exc`, and say so in one
        WARNING line: how many, why, and when they will be enqueued."""
        why = describe(exc)  # of each job, for its `blocked`
        room = max(self.limit - len(self), 0)
        for job in jobs[:room]:
            self._owed[job.id] = (why, next(self._ticks))
        self._changed()
        them = "it" if len(jobs) == 1 else "them"
        left = len(jobs) - min(room, len(jobs))
        if left:
            then = (
                f"{left} of them are past this process's retry limit "
                f"(CONVEYOR_ENQUEUE_RETRY_LIMIT={self.limit}): the reconciler enqueues "
                f"those within {self.reconcile_seconds:g} s"
            )
        else:
            then = (
                f"this process retries every {FIRST_DELAY_SECONDS:g} to {self.max_delay:g} s "
                f"until redis takes {them} (the reconciler's pass, within "
                f"{self.reconcile_seconds:g} s, if this process stops first)"
            )
        log.warning(
            "committed %s but could not enqueue %s: %s; %s",
            _jobs(len(jobs)),
            them,
            describe(exc, them),
            then,
        )

    def cancel_later(self, job: Job, exc: BaseException | None) -> None:
        """Remember a cancel committed in the database whose Redis step failed with `exc`
        (None: it did not fail, but an owed enqueue could still put the job in line)."""
        kept = len(self) < self.limit or job.id in self._owed
        if kept:
            self._owed[job.id] = (CANCELLED, next(self._ticks))
            self._changed()
        if exc is None:
            return
        then = (
            f"this process retries every {FIRST_DELAY_SECONDS:g} to {self.max_delay:g} s "
            "until redis takes it"
            if kept
            else "it is past this process's retry limit, so redis's copy may still run once "
            "(its outcome is then refused)"
        )
        log.warning(
            "cancelled job %s in the database but not in redis: %s; %s", job.id, describe(exc), then
        )

    def owes(self, job_id: str) -> bool:
        """Whether Redis's copy of the job may be older than its row (read the row)."""
        return job_id in self._owed

    def blocked(self, job_id: str) -> Blocked | None:
        """Why a committed job this process has yet to enqueue waits, when Redis refused it
        (None otherwise: an unreachable Redis is reported by GetJob's own read, as
        `Blocked.queue_unreachable`)."""
        why, _ = self._owed.get(job_id, (UNREACHABLE, 0))
        if why in (UNREACHABLE, CANCELLED):
            return None
        return Blocked.enqueue_pending(why)

    def _changed(self) -> None:
        self.metrics.enqueue_pending.set(len(self._owed))
        if self:
            self._work.set()

    # -- health --------------------------------------------------------------------------
    async def probe(self) -> bool:
        """Whether Redis takes writes (a health condition, see the module); logs each change
        of condition once, and nudges the retries when Redis takes writes again."""
        refused = await self.queue.refused_writes()
        if refused != self._refused:
            if refused is not None:
                log.warning(
                    "redis does not take writes (%s): this API still accepts and commits "
                    "jobs, and enqueues them when redis takes writes again",
                    refused,
                )
            else:
                owed = f"; {_jobs(len(self))} owed by this process go in line now" if self else ""
                log.warning("redis takes writes again%s", owed)
                self._writable.set()
            self._refused = refused
        self.metrics.redis_writable.set(0 if refused else 1)
        return refused is None

    # -- the retries ---------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Retry owed writes in the background while the block runs."""
        task = asyncio.create_task(self.run(), name="pending-writes")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if self:
                log.warning(
                    "stopping with %s still to enqueue; the reconciler enqueues them within %g s",
                    _jobs(len(self._owed)),
                    self.reconcile_seconds,
                )

    async def run(self) -> None:
        """Retry until cancelled: back off while Redis (or the database) still fails."""
        delay = FIRST_DELAY_SECONDS
        while True:
            if not self:
                self._work.clear()
                await self._work.wait()
                delay = FIRST_DELAY_SECONDS
            await self._nap(delay)
            try:
                await self._flush()
            except (Unavailable, RedisError) as exc:
                log.debug("owed redis writes still fail (%s); next try within %g s", exc, delay)
                delay = min(delay * 2, self.max_delay)
            except Exception:
                log.exception("retrying owed redis writes failed; trying again")
                delay = min(delay * 2, self.max_delay)
            else:
                delay = FIRST_DELAY_SECONDS

    async def _nap(self, delay: float) -> None:
        """Sleep about `delay` (jittered by up to half, so replicas do not retry in step),
        or less if the probe sees Redis take writes again meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._writable.wait(), delay * random.uniform(0.5, 1.0))
        self._writable.clear()

    async def _flush(self) -> None:
        """Bring Redis to the owed jobs' rows: unfinished ones in line, cancelled ones
        cancelled (finished ones are left alone: their worker wrote Redis already)."""
        while self._owed:
            owed = dict(itertools.islice(self._owed.items(), BATCH))
            rows = await self.store.get_many(list(owed))
            waiting = [job for job in rows if not job.state.terminal]
            restored, _ = await self.queue.restore(waiting)
            for job in rows:
                if job.state is JobState.CANCELLED:
                    found = await self.queue.cancel(
                        job.placement, job.id, job.finish_time or now_ms()
                    )
                    if found.stopped is not None:  # it ran meanwhile: on record, as in cancel
                        await self.store.record_cancelled(found.stopped)
            for job_id, entry in owed.items():
                if self._owed.get(job_id) == entry:  # not owed again since it was read
                    del self._owed[job_id]
            self.enqueued += len(waiting)
            self._changed()
            if waiting:
                log.info(
                    "enqueued %s that redis had refused (%d were not in it yet)",
                    _jobs(len(waiting)),
                    restored,
                )
