"""The worker engine: claim jobs from Redis, run their handlers, renew leases, record outcomes.

One asyncio task claims (blocking on Redis, never polling), one renews every held lease in a
single script call per queue, one listens for cancellations, and each job runs as its own
task. Outcomes are written in groups: one database transaction, then one Redis pipeline, for
all attempts that ended meanwhile. A job keeps its slot (and its lease) until its outcome is
durably written, so a database outage delays results but never loses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import os
import random
import secrets
import socket
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from redis.asyncio import Redis

from conveyor.batching import Batcher
from conveyor.config import Settings
from conveyor.errors import Unavailable
from conveyor.handlers import JobContext, PermanentError, Registry
from conveyor.handlers.context import PROGRESS_INTERVAL
from conveyor.jobs import Job, JobState, now_ms
from conveyor.queue import Claim, EventHub, RedisQueue
from conveyor.queue.events import Subscription
from conveyor.queue.keys import CANCEL_CHANNEL
from conveyor.store import JobStore, TerminalWrite

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

MAX_ERROR_CHARS = 4000
OUTCOME_RETRY_SECONDS = 1.0
# Claiming pauses while more than this many times `concurrency` outcomes await writing.
MAX_RECORDING = 2


class WorkerState(enum.IntEnum):
    """Mirror of the proto enum `conveyor.v1.WorkerState`."""

    UNSPECIFIED = 0
    RUNNING = 1
    PAUSED = 2
    DRAINING = 3
    STOPPED = 4


@dataclass(slots=True)
class Running:
    claim: Claim
    ctx: JobContext
    task: asyncio.Task[None] | None = None
    # Set when the job must not record an outcome: cancelled by a client or lease lost.
    abandoned: bool = False
    progress: float = 0.0
    pump: asyncio.Task[None] | None = None


@dataclass(slots=True)
class WorkerStats:
    processed: int = 0
    failed: int = 0
    stale_writes: int = 0


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def backoff_ms(attempt: int, settings: Settings) -> int:
    """Exponential backoff with "equal jitter": half fixed, half random, capped."""
    ceiling = min(
        settings.backoff_base_seconds * 2 ** max(attempt - 1, 0), settings.backoff_max_seconds
    )
    return int(1000 * (ceiling / 2 + random.uniform(0, ceiling / 2)))


class Worker:
    def __init__(
        self,
        settings: Settings,
        *,
        queue: RedisQueue,
        blocking: Redis,
        hub: EventHub,
        store: JobStore,
        registry: Registry,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.blocking = blocking
        self.hub = hub
        self.store = store
        self.registry = registry
        self.worker_id = settings.worker_id or default_worker_id()
        self.queues = settings.queue_list
        self.concurrency = settings.worker_concurrency
        self.state = WorkerState.RUNNING
        self.stats = WorkerStats()
        # Handlers executing now: these count against `concurrency`.
        self.running: dict[str, Running] = {}
        # Attempts whose handler has ended and whose outcome is being written. They keep
        # their lease (renewed by the heartbeat) but not their slot, so the next jobs run
        # while the previous ones are recorded; claiming pauses if too many pile up.
        self.recording: dict[str, Running] = {}
        self._token = secrets.token_hex(8)
        self._lease_ms = int(settings.lease_seconds * 1000)
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="handler")
        self._changed = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._stopped = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Set by stop(): loops end at their next turn even if a library swallowed the
        # cancellation (redis-py may turn a cancelled blocking read into a connection error).
        self._closing = False
        # Outcomes go through two group-commit stages, so that the database write of one
        # batch overlaps the Redis write of the previous one.
        self._db_outcomes: Batcher[TerminalWrite, JobState | None] = Batcher(store.write_outcomes)
        self._redis_outcomes: Batcher[tuple[Job, str, TerminalWrite], bool] = Batcher(
            queue.finish_many
        )

    # -- control ---------------------------------------------------------------------------
    def _set_state(self, state: WorkerState) -> None:
        self.state = state
        self.notify()

    def notify(self) -> None:
        """Wake everything waiting for a change of state, slots or status."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        await self._changed.wait()

    def pause(self) -> None:
        if self.state is WorkerState.RUNNING:
            self._set_state(WorkerState.PAUSED)

    def resume(self) -> None:
        if self.state is WorkerState.PAUSED:
            self._set_state(WorkerState.RUNNING)

    def drain(self) -> None:
        """Claim nothing more; stop once the running jobs have ended."""
        if self.state in (WorkerState.RUNNING, WorkerState.PAUSED):
            self._set_state(WorkerState.DRAINING)
            if self._idle:
                self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        cancel_sub = await self.hub.subscribe(CANCEL_CHANNEL)
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="claim"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._cancel_loop(cancel_sub), name="cancel-listener"),
        ]
        log.info(
            "worker %s serving %s with concurrency %d",
            self.worker_id,
            ",".join(self.queues),
            self.concurrency,
        )

    async def stop(self, grace: float) -> None:
        """Stop claiming, give running jobs `grace` seconds, then cancel them.

        A job cancelled here records no outcome: its lease lapses and another worker runs
        it again (at-least-once), which is the right result for work cut off mid-way.
        """
        self.drain()
        if not self._idle:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), grace)
        self._closing = True
        for task in self._tasks:
            task.cancel()
        attempts = [*self.running.values(), *self.recording.values()]
        for running in attempts:
            running.abandoned = True
            if running.task is not None:
                running.task.cancel()
        pending = [*self._tasks, *(r.task for r in attempts if r.task)]
        log.debug("waiting for %d tasks to end", len(pending))
        await asyncio.gather(*pending, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._set_state(WorkerState.STOPPED)
        self._stopped.set()

    # -- claiming --------------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        while not self._closing:
            try:
                await self._claim_once()
            except Unavailable:
                if self._closing:
                    return
                log.warning("redis unavailable; retrying claims in 1s")
                await asyncio.sleep(1.0)

    async def _claim_once(self) -> None:
        if self.state is not WorkerState.RUNNING:
            await self.changed()
            return
        free = self.concurrency - len(self.running)
        if free <= 0 or len(self.recording) >= MAX_RECORDING * self.concurrency:
            self._slot_freed.clear()
            await self._slot_freed.wait()
            return
        claimed, next_wake = 0, -1
        for name in self.queues:
            claims, due = await self.queue.claim(
                name,
                free - claimed,
                worker_id=self.worker_id,
                token=self._token,
                lease_ms=self._lease_ms,
            )
            for claim in claims:
                self._start(claim)
            claimed += len(claims)
            if due >= 0 and (next_wake < 0 or due < next_wake):
                next_wake = due
            if claimed >= free:
                return
        if claimed:
            return  # more may be waiting: look again before blocking
        timeout = self.settings.claim_wait_seconds
        if next_wake >= 0:
            timeout = min(timeout, max((next_wake - now_ms()) / 1000, 0.001))
        await self.queue.wait_for_work(self.blocking, self.queues, timeout)

    # -- running ---------------------------------------------------------------------------
    def _start(self, claim: Claim) -> None:
        job = claim.job
        ctx = JobContext(
            job_id=job.id,
            job_type=job.type,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            loop=asyncio.get_running_loop(),
            on_progress=lambda: self._start_pump(job.id),
        )
        running = Running(claim, ctx)
        self.running[job.id] = running
        running.task = asyncio.create_task(self._run(running), name=f"job-{job.id}")
        self.notify()

    async def _run(self, running: Running) -> None:
        claim = running.claim
        job = claim.job
        start = job.start_time or now_ms()
        try:
            state, error = await self._attempt(running)
        except asyncio.CancelledError:
            state, error = JobState.CANCELLED, "cancelled"
            running.abandoned = True
        self.running.pop(job.id, None)
        self.recording[job.id] = running
        self.stats.processed += 1
        if state is not JobState.SUCCEEDED:
            self.stats.failed += 1
        self._slot_freed.set()
        self.notify()
        try:
            if not running.abandoned:
                await self._flush_progress(running)
                end = self._outcome(job, state, error, start, running.progress)
                await self._record_until_done(claim, end)
        finally:
            if running.pump is not None:
                running.pump.cancel()
            self.running.pop(job.id, None)
            self.recording.pop(job.id, None)
            self._slot_freed.set()
            if self.state is WorkerState.DRAINING and self._idle:
                self._stopped.set()

    @property
    def _idle(self) -> bool:
        """No handler running and no outcome waiting to be written."""
        return not self.running and not self.recording

    async def _attempt(self, running: Running) -> tuple[JobState, str]:
        """Run the handler once; the state the attempt ends in and its error text."""
        job = running.claim.job
        if job.attempt > job.max_attempts:
            return JobState.DEAD, job.error or "no attempts left"
        spec = self.registry.get(job.type)
        if spec is None:
            return JobState.DEAD, f"no handler is registered for job type {job.type!r}"
        timeout = job.timeout_ms / 1000
        if spec.timeout_seconds is not None and not job.timeout_ms:
            timeout = spec.timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                if spec.is_async:
                    await spec.fn(job.payload, running.ctx)
                else:
                    loop = asyncio.get_running_loop()
                    await loop.run_in_executor(self._executor, spec.fn, job.payload, running.ctx)
        except TimeoutError:
            running.ctx.cancel()
            return JobState.RETRYING, f"timed out after {timeout:g}s"
        except PermanentError as exc:
            return JobState.DEAD, _describe(exc)
        except Exception as exc:
            log.info("job %s attempt %d failed: %s", job.id, job.attempt, exc)
            return JobState.RETRYING, _describe(exc)
        return JobState.SUCCEEDED, ""

    def _outcome(
        self, job: Job, state: JobState, error: str, start: int, progress: float
    ) -> TerminalWrite:
        now = now_ms()
        run_at = None
        if state is JobState.RETRYING:
            if job.attempt >= job.max_attempts:
                state = JobState.DEAD
            else:
                run_at = now + backoff_ms(job.attempt, self.settings)
        return TerminalWrite(
            id=job.id,
            state=state,
            attempt=job.attempt,
            error=error,
            progress=100.0 if state is JobState.SUCCEEDED else progress,
            progress_message="",
            start_time=start,
            finish_time=None if state is JobState.RETRYING else now,
            run_at=run_at,
        )

    # -- outcomes --------------------------------------------------------------------------
    async def _record_until_done(self, claim: Claim, end: TerminalWrite) -> None:
        """The database first (the truth), then Redis, each retried while unreachable.

        When the database already holds a terminal state (the job was cancelled, or an
        earlier attempt's worker died between its two writes), Redis is brought to that
        state instead; the Redis write is lease-checked, so it changes nothing when the
        lease is no longer ours.
        """
        state = await self._until_recorded(claim, self._db_outcomes.submit, end)
        if state is None:
            return
        if state is not end.state:
            self.stats.stale_writes += 1
            end = dataclasses.replace(end, state=state)
        done = await self._until_recorded(
            claim, self._redis_outcomes.submit, (claim.job, claim.lease, end)
        )
        if done is False:
            self.stats.stale_writes += 1

    async def _until_recorded(
        self, claim: Claim, write: Callable[[T], Awaitable[R]], item: T
    ) -> R | None:
        """Retry `write` while its store is unavailable; None once the worker is closing
        (the lease then lapses and the job runs again elsewhere)."""
        while True:
            try:
                return await write(item)
            except Unavailable as exc:
                if self._closing:
                    return None
                log.warning("job %s outcome not recorded (%s); retrying", claim.job.id, exc)
                await asyncio.sleep(OUTCOME_RETRY_SECONDS)

    # -- progress --------------------------------------------------------------------------
    def _start_pump(self, job_id: str) -> None:
        running = self.running.get(job_id)
        if running is not None and (running.pump is None or running.pump.done()):
            running.pump = asyncio.create_task(self._pump(running))

    async def _pump(self, running: Running) -> None:
        """Send the newest progress, then wait a moment to coalesce the next reports."""
        while True:
            if not await self._flush_progress(running):
                return
            await asyncio.sleep(PROGRESS_INTERVAL)  # a rate limit on reports, not a poll

    async def _flush_progress(self, running: Running) -> bool:
        value = running.ctx.take_progress()
        if value is None:
            return False
        running.progress = value[0]
        with contextlib.suppress(Unavailable):
            await self.queue.progress(running.claim.job, running.claim.lease, *value)
        self.notify()
        return True

    # -- leases and cancellation -----------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        interval = self.settings.effective_heartbeat_seconds
        while not self._closing:
            await asyncio.sleep(interval)
            try:
                await self._heartbeat()
            except Unavailable:
                log.warning("redis unavailable; leases not renewed")

    async def _heartbeat(self) -> None:
        by_queue: dict[str, dict[str, str]] = {}
        for job_id, running in [*self.running.items(), *self.recording.items()]:
            by_queue.setdefault(running.claim.job.queue, {})[job_id] = running.claim.lease
        for name, leases in by_queue.items():
            for job_id in await self.queue.heartbeat(name, leases, self._lease_ms):
                log.warning("job %s: lease lost; stopping its handler", job_id)
                self._abandon(job_id)

    async def _cancel_loop(self, sub: Subscription) -> None:
        try:
            while True:
                job_id = await sub.get()
                if job_id is not None:
                    self._abandon(job_id)
        finally:
            await self.hub.unsubscribe(sub)

    def _abandon(self, job_id: str) -> None:
        """Stop a job whose outcome no longer matters here (cancelled, or lease lost)."""
        running = self.running.get(job_id)
        if running is None:
            return
        running.abandoned = True
        running.ctx.cancel()
        if running.task is not None:
            running.task.cancel()


def _describe(exc: BaseException) -> str:
    """The error text kept on the job: type, message and the innermost frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    text = f"{type(exc).__name__}: {exc}{where}"
    return text[:MAX_ERROR_CHARS]
