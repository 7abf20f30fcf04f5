"""The worker engine: claim jobs from Redis, run their handlers, renew leases, record outcomes.

One asyncio task claims (blocking on Redis, never polling), one renews every held lease in a
single script call per queue, one listens for cancellations, and each job runs as its own
task; the `Announcer` tells the worker registry this process is alive, from a thread of its
own. Outcomes are written by the `AttemptRecorder` (fenced, grouped, database first). A job
keeps its lease until its outcome is durably written, so a database outage delays results
but never loses them.

A sync handler runs in the worker's thread pool, and a thread cannot be stopped: one that
runs on past its timeout or its cancel keeps its thread. Such overrunning handlers are
counted (`overrunning`, in WorkerStatus and `conveyor_worker_overrunning_handlers`) and
keep their slot until they return, so the worker claims only what it has threads for
and, when every slot is held by one, stops claiming instead of losing capacity silently.
Handlers registered with `isolation="process"` run in a child process instead
(`conveyor.worker.isolation`), which cancel and timeout kill.

Draining (SIGTERM or DrainWorker) stops claiming, lets running jobs finish within the grace
period, then stops the rest and releases their leases, so other workers run them at once
instead of after the lease runs out; a released attempt is not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import io
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

from pydantic import BaseModel

from conveyor.config import Settings
from conveyor.db import JobStore
from conveyor.db.artifacts import ArtifactStore
from conveyor.errors import Unavailable
from conveyor.handlers import BaseContext, PermanentError, RateLimited, Registry
from conveyor.handlers.context import (
    PROGRESS_INTERVAL,
    ArtifactStores,
    AttemptFacts,
    new_context,
)
from conveyor.handlers.registry import HandlerSpec
from conveyor.jobs.artifacts import Artifact, artifact_key, result_key
from conveyor.jobs.attempts import AttemptEnd, AttemptOutcome
from conveyor.jobs.failures import describe as _describe
from conveyor.jobs.failures import format_traceback as _traceback
from conveyor.jobs.model import Job, JobState, now_ms
from conveyor.objects import ObjectStore
from conveyor.redis import Claim, EventHub, RedisQueue
from conveyor.redis.connection import AnyRedis
from conveyor.redis.events import Subscription
from conveyor.redis.keys import CANCEL_CHANNEL
from conveyor.redis.workers import WorkerInfo
from conveyor.telemetry import bind_job, tracing
from conveyor.telemetry.metrics import OTHER, WorkerMetrics
from conveyor.worker.announcer import Announcer
from conveyor.worker.dependency_results import results_of
from conveyor.worker.isolation import Attempt, Call, Outcome, ProcessPool, Progress, Setup
from conveyor.worker.recording import AttemptRecorder
from conveyor.worker.shards import ServedShards
from conveyor.worker.wakes import WakeWaiter

log = logging.getLogger(__name__)

# Claiming pauses while more than this many times `concurrency` outcomes await writing:
# enough to keep the database and Redis writes of short jobs in flight back to back (at 2,
# the drain of no-op jobs waited on them), few enough to bound memory in an outage.
MAX_RECORDING = 4
# How a written outcome is counted (conveyor_job_outcomes_total{outcome}).
OUTCOME_LABELS = {
    JobState.SUCCEEDED: "succeeded",
    JobState.RETRYING: "retried",
    JobState.DEAD: "dead",
    JobState.CANCELLED: "cancelled",
}


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
    ctx: BaseContext
    task: asyncio.Task[None] | None = None
    # Set when the job must not record an outcome: cancelled by a client or lease lost.
    abandoned: bool = False
    progress: float = 0.0
    pump: asyncio.Task[None] | None = None
    claimed_ms: int = 0
    # time.monotonic() when the claim was asked for: its lease runs at least from then.
    asked: float = 0.0
    # Set when the claim was dropped before its handler started (`_still_held`).
    dropped: bool = False


@dataclass(slots=True)
class WorkerStats:
    processed: int = 0
    failed: int = 0
    released: int = 0


@dataclass(frozen=True, slots=True)
class Ending:
    """How the handler's run ended, before it becomes the job's new state."""

    state: JobState
    outcome: AttemptOutcome
    error: str = ""
    traceback: str = ""
    result: dict[str, Any] | None = None
    result_ref: str | None = None
    # Set when the handler raised RateLimited: the job waits this long, its attempt unspent.
    retry_after_ms: int | None = None


def _throttled(error: str, retry_after_ms: int) -> Ending:
    """The end of an attempt whose handler raised RateLimited (see `_throttle`)."""
    return Ending(
        JobState.SCHEDULED, AttemptOutcome.UNSPECIFIED, error, retry_after_ms=retry_after_ms
    )


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Worker:
    def __init__(
        self,
        settings: Settings,
        *,
        queue: RedisQueue,
        blocking: AnyRedis,
        hub: EventHub,
        store: JobStore,
        registry: Registry,
        objects: ObjectStore | None = None,
        artifacts: ArtifactStore | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        # Where artifacts and large results go; without them a handler that puts an
        # artifact fails (in-process tests that need neither leave them out).
        self.objects = objects
        self.artifacts = artifacts
        self.queue = queue
        self.blocking = blocking
        self.hub = hub
        self.store = store
        self.registry = registry
        self.worker_id = settings.worker_id or default_worker_id()
        self.choice = settings.queue_choice
        self.queues = list(self.choice.names)
        # Each queue's shards, read again on every heartbeat (see conveyor.worker.shards).
        self.shards = ServedShards(queue, self.queues, settings.default_max_running_per_owner)
        self._wakes = WakeWaiter(queue, blocking, self.queues)
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
        # Sync handlers still running in a thread after their attempt ended (timeout,
        # cancel): each holds its slot until it returns.
        self.overrunning = 0
        # Children for process-isolated handlers; made at start() if a handler needs them.
        self.processes: ProcessPool | None = None
        self._changed = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._stopped = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._drain_timer: asyncio.Task[None] | None = None
        # Set by stop(): loops end at their next turn even if a library swallowed the
        # cancellation (redis-py may turn a cancelled blocking read into a connection error).
        self._closing = False
        self.recorder = AttemptRecorder(
            store, queue, lambda: self._closing, on_stale=self.metrics.stale_writes.inc
        )
        # Dependency results for handlers (ctx.dependency_results), and resolutions.
        self.dependencies = self.recorder.dependencies
        self.announcer = Announcer(settings, self._describe)
        # Where WorkerControl is dialled (`announcer.control_address`), set by the service
        # once its server has bound; announced with the rest (empty: not served).
        self.control_address = ""
        self._host = socket.gethostname()
        self._started = now_ms()
        self.metrics.concurrency.set(self.concurrency)
        self.metrics.running.set_function(lambda: len(self.running))
        self.metrics.overrunning.set_function(lambda: self.overrunning)

    @property
    def _stores(self) -> ArtifactStores | None:
        """Where handlers' artifacts go (None: this worker was made without a store)."""
        if self.objects is None or self.artifacts is None:
            return None
        return ArtifactStores(self.objects, self.artifacts.record, self.artifacts.find)

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

    def drain(self, grace: float | None = None) -> None:
        """Claim nothing more; stop once the running jobs have ended, or after `grace`
        seconds stop them and give their jobs back (None: wait for stop() to decide)."""
        if self.state in (WorkerState.RUNNING, WorkerState.PAUSED):
            self._set_state(WorkerState.DRAINING)
            if self._idle:
                self._stopped.set()
            elif grace is not None:
                self._drain_timer = asyncio.create_task(self._release_after(grace))

    async def _release_after(self, grace: float) -> None:
        if not self._idle:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), grace)
        await self._release_running()

    async def _release_running(self) -> None:
        """Stop the handlers still running and put their jobs back in line at once."""
        attempts = list(self.running.values())
        if not attempts:
            return
        for running in attempts:
            running.abandoned = True  # whatever happens now, this attempt writes nothing
        by_queue: dict[str, list[tuple[Job, str]]] = {}
        for running in attempts:
            claim = running.claim
            by_queue.setdefault(claim.job.placement, []).append((claim.job, claim.lease))
        released = 0
        for name, held in by_queue.items():
            try:
                released += await self.queue.release(name, held)
            except Unavailable:
                log.warning(
                    "redis unavailable: %d job(s) of %s wait for their lease", len(held), name
                )
        self.stats.released += released
        log.info("released %d of %d running job(s) for other workers", released, len(attempts))
        for running in attempts:
            running.ctx.cancel()
            if running.task is not None:
                running.task.cancel()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._start_processes()
        await self._follow_shards()
        cancel_sub = await self.hub.subscribe(CANCEL_CHANNEL)
        await self.announcer.start()
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

    def _start_processes(self) -> None:
        """Start the fork server and the first children, if any handler runs isolated."""
        isolated = [spec for spec in self.registry.specs() if spec.isolation == "process"]
        if not isolated:
            return
        self.processes = ProcessPool(
            Setup(self.settings, self._stores is not None, os.getpid()),
            size=self.settings.effective_process_pool_size,
            preload=[*dict.fromkeys(spec.fn.__module__ for spec in isolated)],
            kill_grace=self.settings.kill_grace_seconds,
        )
        self.processes.start()
        stats = self.processes.stats
        self.metrics.watch_processes(lambda: stats.started, lambda: stats.killed)

    async def stop(self, grace: float) -> None:
        """Stop claiming, give running jobs `grace` seconds, then stop them and release
        their jobs to other workers (their attempt not counted).

        An attempt whose outcome is still being written when the worker closes (its store
        unreachable) keeps its lease until it lapses; the job then runs again elsewhere.
        """
        self.drain()
        await self._release_after(grace)
        self._closing = True
        if self._drain_timer is not None:
            self._drain_timer.cancel()
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
        await self._wakes.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.processes is not None:
            await self.processes.close()
        await self.announcer.stop()
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
        free = self.concurrency - len(self.running) - self.overrunning
        if free <= 0 or len(self.recording) >= MAX_RECORDING * self.concurrency:
            self._slot_freed.clear()
            await self._slot_freed.wait()
            return
        claimed, next_wake = 0, -1
        for name, owner_default in self._claim_order():
            asked = time.monotonic()
            claims, due = await self.queue.claim(
                name,
                free - claimed,
                worker_id=self.worker_id,
                token=self._token,
                lease_ms=self._lease_ms,
                owner_default=owner_default,
            )
            for claim in claims:
                self._start(claim, asked)
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
        await self._wakes.wait(timeout)

    def _claim_order(self) -> Iterator[tuple[str, int | None]]:
        """The physical queues of one claim pass: the queues in their order (strict or
        weighted), each queue's shards in turn (see conveyor.worker.shards)."""
        for name in self.choice.order():
            yield from self.shards.claim_order(name)

    async def _follow_shards(self) -> None:
        """Read the served queues' shard counts; wait on the new shards' wake lists too."""
        if await self.shards.refresh():
            await self._wakes.follow(self.shards.placements())
            log.info("serving %s", ",".join(self.shards.placements()))

    # -- running ---------------------------------------------------------------------------
    def _start(self, claim: Claim, asked: float) -> None:
        job = claim.job
        spec = self.registry.get(job.type)

        async def claim_effect(key: str) -> bool:
            return await self.store.claim_effect(job.id, key, job.attempt, job.fence)

        async def dependency_results() -> dict[str, Any]:
            return await results_of(self.dependencies, self.objects, job.depends_on)

        ctx = new_context(
            _facts(job),
            is_async=spec is None or spec.is_async,
            loop=asyncio.get_running_loop(),
            on_progress=lambda: self._start_pump(job.id),
            claim_effect=claim_effect,
            settings=self.settings,
            stores=self._stores,
            dependency_results=dependency_results,
        )
        running = Running(claim, ctx, claimed_ms=now_ms(), asked=asked)
        if claim.lost:
            self.metrics.reclaimed.inc(job.queue)
        else:
            waited = running.claimed_ms - _ready_ms(job)
            self.metrics.claimed(job.queue, self._type_label(job), max(waited, 0) / 1000)
        self.running[job.id] = running
        running.task = asyncio.create_task(self._run(running), name=f"job-{job.id}")
        self.notify()

    def _type_label(self, job: Job) -> str:
        """A job's type as metrics label it: a type this worker has a handler for, else
        `other` (a user picks the string; see `conveyor.api.known_names`). The queue label needs
        no folding: a worker claims only from the queues it was told to serve."""
        return job.type if self.registry.get(job.type) is not None else OTHER

    async def _run(self, running: Running) -> None:
        job = running.claim.job
        bind_job(job.id, job.attempt, job.type, job.queue)
        if not (job.trace_parent and tracing.enabled()):
            await self._run_and_record(running)
            return
        with tracing.attempt_span(
            job.trace_parent,
            tracing.job_attributes(job.id, job.type, job.queue, job.attempt),
            ready_ms=None if running.claim.lost else _ready_ms(job),
            claimed_ms=running.claimed_ms,
        ) as span:
            outcome, error = await self._run_and_record(running)
            tracing.set_outcome(span, outcome, error)

    async def _run_and_record(self, running: Running) -> tuple[str, str]:
        """Run the attempt and write its outcome; returns the outcome's metric label
        (succeeded, retried, dead), or why none was written (abandoned, stale), and the
        attempt's error."""
        claim = running.claim
        job = claim.job
        ending: Ending | None = None
        started = time.monotonic()
        try:
            if not claim.lost or await self.recorder.take_over(claim):
                ending = await self._attempt(running)
        except asyncio.CancelledError:
            running.abandoned = True
        ran = time.monotonic() - started
        self.running.pop(job.id, None)
        self.recording[job.id] = running
        if ending is not None:
            self.stats.processed += 1
            if ending.state not in (JobState.SUCCEEDED, JobState.SCHEDULED):
                self.stats.failed += 1
        self._slot_freed.set()
        self.notify()
        outcome, error = "dropped" if running.dropped else "abandoned", ""
        try:
            if ending is not None and ending.retry_after_ms is not None and not running.abandoned:
                outcome, error = await self._throttle(running, ending.retry_after_ms), ending.error
            elif ending is not None and not running.abandoned:
                await self._flush_progress(running)
                end = self._end(claim, ending, running.progress)
                outcome, error = OUTCOME_LABELS[end.state], end.error
                if await self.recorder.record(claim, end):
                    self.metrics.ended(job.queue, self._type_label(job), outcome, ran)
                else:
                    outcome = "stale"
        finally:
            if running.pump is not None:
                running.pump.cancel()
            self.running.pop(job.id, None)
            self.recording.pop(job.id, None)
            self._slot_freed.set()
            if self.state is WorkerState.DRAINING and self._idle:
                self._stopped.set()
        return outcome, error

    @property
    def _idle(self) -> bool:
        """No handler running and no outcome waiting to be written."""
        return not self.running and not self.recording

    async def _attempt(self, running: Running) -> Ending | None:
        """Run the handler once (or not at all, if no attempt is left). None: the claim
        was dropped before the handler started (`_still_held`), so nothing is written."""
        claim = running.claim
        job = claim.job
        if claim.exhausted:
            lost = claim.lost[-1].attempt if claim.lost else job.attempt
            return Ending(
                JobState.DEAD,
                AttemptOutcome.LOST,
                f"attempt {lost} of {job.max_attempts} was lost ({job.error}); no attempts left",
            )
        spec = self.registry.get(job.type)
        if spec is None:
            return Ending(
                JobState.RETRYING,
                AttemptOutcome.FAILED,
                f"worker {self.worker_id} has no handler for job type {job.type!r}",
            )
        if not await self._still_held(running):
            return None
        timeout = job.timeout_ms / 1000
        try:
            async with asyncio.timeout(timeout):
                payload = spec.parse(job.payload)
                if spec.isolation == "process":
                    outcome = await self._in_process(spec, payload, running)
                    if outcome.retry_after_ms is not None:
                        return _throttled(outcome.error, outcome.retry_after_ms)
                    if outcome.failed:
                        state = JobState.DEAD if outcome.permanent else JobState.RETRYING
                        return Ending(
                            state, AttemptOutcome.FAILED, outcome.error, outcome.traceback
                        )
                    returned = outcome.result
                elif spec.is_async:
                    returned = await spec.fn(payload, running.ctx)
                else:
                    returned = await self._in_thread(spec, payload, running.ctx)
        except TimeoutError:
            running.ctx.cancel()
            return Ending(
                JobState.RETRYING, AttemptOutcome.TIMED_OUT, f"timed out after {timeout:g}s"
            )
        except RateLimited as exc:
            log.info("job %s attempt %d: %s", job.id, job.attempt, exc)
            return _throttled(_describe(exc), exc.retry_after_ms)
        except PermanentError as exc:
            return Ending(JobState.DEAD, AttemptOutcome.FAILED, _describe(exc), _traceback(exc))
        except Exception as exc:
            log.info("job %s attempt %d failed: %s", job.id, job.attempt, exc)
            return Ending(JobState.RETRYING, AttemptOutcome.FAILED, _describe(exc), _traceback(exc))
        try:
            return await self._success(job, returned)
        except Exception as exc:  # the object store failed: the attempt did not finish
            log.warning("job %s: could not store its result: %s", job.id, exc)
            return Ending(JobState.RETRYING, AttemptOutcome.FAILED, _describe(exc))

    async def _throttle(self, running: Running, retry_after_ms: int) -> str:
        """A handler raised RateLimited: give the job back as a draining worker does (its
        attempt not counted, nothing written to the database) but due only after
        `retry_after_ms`, its rate key's jobs held until then (release.lua). Returns the
        outcome's label: `throttled`, or `stale` when the lease was no longer held (or Redis
        could not be reached: the lease then lapses and the job is reclaimed, the attempt
        counted as lost)."""
        claim = running.claim
        job = claim.job
        try:
            released = await self.queue.release(
                job.placement, [(job, claim.lease)], delay_ms=retry_after_ms
            )
        except Unavailable:
            log.warning(
                "job %s: redis unavailable, the rate-limited attempt waits for its lease", job.id
            )
            return "stale"
        return "throttled" if released else "stale"

    async def _still_held(self, running: Running) -> bool:
        """Whether the claim's lease still holds, checked just before its handler starts.

        A worker frozen (SIGSTOP, a VM pause, a starved host) between its claim and the
        handler's start wakes with a claim whose lease may have run out: another worker
        may have run the job meanwhile, and starting it now would repeat its side effects.
        The lease runs at least from when the claim was asked for, and the monotonic clock
        counts time frozen too, so no clock shared with Redis is needed: within a heartbeat
        interval of the ask the lease is fresh and the heartbeat renews it in time (the
        usual case, no round trip). Later, Redis decides by renewing the lease now, which
        succeeds only while the job still carries this claim's lease token (no other
        worker has claimed it). A dropped claim writes nothing; if its lease is merely
        late, it lapses and the job is reclaimed as usual."""
        stalled = time.monotonic() - running.asked
        if stalled < self.settings.effective_heartbeat_seconds:
            return True
        job = running.claim.job
        try:
            lost = await self.queue.heartbeat(
                job.placement, {job.id: running.claim.lease}, self._lease_ms
            )
        except Unavailable:
            lost = [job.id]  # unknown: not starting is the side that cannot repeat work
        if not lost:
            return True
        running.dropped = True
        self.metrics.stale_claims.inc(job.queue)
        log.warning(
            "job %s: claim of attempt %d dropped before its handler started: this worker "
            "stalled %.1f s after claiming it, and its lease (%g s) is no longer held",
            job.id,
            job.attempt,
            stalled,
            self._lease_ms / 1000,
        )
        return False

    async def _in_thread(self, spec: HandlerSpec, payload: Any, ctx: BaseContext) -> Any:
        """Run a sync handler in the pool, in the job's context (so its logs name the job
        and its spans are children of the attempt's). If the attempt ends first (timeout,
        cancel), the thread runs on: it is counted as overrunning until it returns."""
        call = contextvars.copy_context().run
        future = self._executor.submit(call, spec.fn, payload, ctx)
        try:
            return await asyncio.wrap_future(future)
        except BaseException:
            if not future.cancel() and not future.done():
                self._overran(ctx, future)
            raise

    def _overran(self, ctx: BaseContext, future: Future[Any]) -> None:
        self.overrunning += 1
        self.metrics.overruns.inc()
        log.warning(
            "job %s: its handler runs on past its attempt's end and holds a slot until it "
            "returns (%d such); register the type with isolation='process' to have it killed",
            ctx.job_id,
            self.overrunning,
        )
        loop = asyncio.get_running_loop()

        def returned(_: Future[Any]) -> None:  # on the handler's thread
            with contextlib.suppress(RuntimeError):  # the worker's loop has closed since
                loop.call_soon_threadsafe(self._overrun_ended)

        future.add_done_callback(returned)

    def _overrun_ended(self) -> None:
        self.overrunning -= 1
        self._slot_freed.set()
        self.notify()

    async def _in_process(self, spec: HandlerSpec, payload: Any, running: Running) -> Outcome:
        """Run the attempt in a child of its own (`conveyor.worker.isolation`); cancelling this
        call (cancel, timeout, stop) kills the child."""
        if self.processes is None:
            raise RuntimeError("process isolation was not started (Worker.start)")
        job = running.claim.job
        attempt = Attempt(
            module=spec.fn.__module__,
            qualname=spec.fn.__qualname__,
            is_async=spec.is_async,
            payload=payload,
            facts=_facts(job),
            queue=job.queue,
            memory_limit_mb=spec.memory_limit_mb,
        )

        async def serve(call: Call) -> Any:
            return await self._serve_child(running, call)

        def progress(report: Progress) -> None:
            running.ctx.progress(report.percent, report.message)

        return await self.processes.run(attempt, serve, progress)

    async def _serve_child(self, running: Running, call: Call) -> Any:
        """What a child asks of its worker: `once`, and recording or finding artifacts,
        each for its own job and owner only."""
        job = running.claim.job
        if call.op == "once":
            return await running.ctx._once(str(call.args[0]))
        if call.op == "dependencies":
            return await running.ctx._dependency_results()
        if self.artifacts is None:
            raise RuntimeError("this worker has no artifact store")
        if call.op == "record":
            artifact = call.args[0]
            if (
                not isinstance(artifact, Artifact)
                or artifact.job_id != job.id
                or artifact.key != artifact_key(job.id, artifact.name)
            ):
                raise ValueError("a child may record artifacts of its own job only")
            await self.artifacts.record(artifact)
            return None
        if call.op == "find":
            job_id, name = str(call.args[0]), str(call.args[1])
            return await self.artifacts.find(job.owner, job_id or job.id, name)
        raise ValueError(f"unknown call {call.op!r}")

    async def _success(self, job: Job, returned: object) -> Ending:
        """A handler's return value as the job's result: a JSON object (any other JSON
        value is wrapped as {"value": …}). Up to CONVEYOR_MAX_RESULT_BYTES it is stored in
        the job's row; larger, up to CONVEYOR_MAX_STORED_RESULT_BYTES, in the object store
        by reference. One that is not JSON, or too large, makes the job DEAD: running it
        again would not help."""
        result = job_result(returned)
        if isinstance(result, str):
            return Ending(JobState.DEAD, AttemptOutcome.FAILED, result)
        if result is None:
            return Ending(JobState.SUCCEEDED, AttemptOutcome.SUCCEEDED)
        data = json.dumps(result, separators=(",", ":")).encode()
        limit = self.settings.max_stored_result_bytes if self.objects else 0
        limit = max(limit, self.settings.max_result_bytes)
        if len(data) > limit:
            return Ending(
                JobState.DEAD,
                AttemptOutcome.FAILED,
                f"the handler returned a result of {len(data)} bytes; the limit is {limit} "
                "(CONVEYOR_MAX_STORED_RESULT_BYTES)",
            )
        if len(data) <= self.settings.max_result_bytes or self.objects is None:
            return Ending(JobState.SUCCEEDED, AttemptOutcome.SUCCEEDED, result=result)
        key = result_key(job.id)
        stream = io.BytesIO(data)
        await asyncio.to_thread(
            self.objects.put, key, stream, length=len(data), content_type="application/json"
        )
        return Ending(JobState.SUCCEEDED, AttemptOutcome.SUCCEEDED, result_ref=key)

    def _end(self, claim: Claim, ending: Ending, progress: float) -> AttemptEnd:
        """The attempt's end as written: a failure with attempts left becomes RETRYING at a
        time the job's retry policy draws, the last one DEAD."""
        job = claim.job
        now = now_ms()
        state, run_at = ending.state, None
        if state is JobState.RETRYING:
            if job.attempt >= job.max_attempts:
                state = JobState.DEAD
            else:
                run_at = now + job.retry.delay_ms(job.attempt)
        start = claim.lost[-1].start_time if claim.exhausted and claim.lost else job.start_time
        return AttemptEnd(
            id=job.id,
            state=state,
            attempt=job.attempt,
            fence=job.fence,
            error=ending.error,
            progress=100.0 if state is JobState.SUCCEEDED else progress,
            progress_message="",
            start_time=start,
            finish_time=None if state is JobState.RETRYING else now,
            run_at=run_at,
            outcome=ending.outcome,
            worker_id=self.worker_id
            if not claim.exhausted
            else (claim.lost[-1].worker_id if claim.lost else ""),
            ended=now,
            traceback=ending.traceback,
            result=ending.result,
            result_ref=ending.result_ref,
        )

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
            claim = running.claim
            if not await self.queue.progress(claim.job, claim.lease, *value):
                # The lease is gone: a newer attempt or a cancel owns the job now.
                self.recorder.stats.stale_writes += 1
                log.info("job %s: stale progress of attempt %d refused", claim.job.id,
                         claim.job.attempt)  # fmt: skip
        self.notify()
        return True

    # -- leases and cancellation -----------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        interval = self.settings.effective_heartbeat_seconds
        while not self._closing:
            await asyncio.sleep(interval)
            try:
                await self._heartbeat()
                await self._follow_shards()
            except Unavailable:
                log.warning("redis unavailable; leases not renewed")

    def _describe(self) -> WorkerInfo:
        """This worker as the registry lists it (read by the announcer's thread)."""
        return WorkerInfo(
            worker_id=self.worker_id,
            host=self._host,
            queues=self.queues,
            types=self.registry.names(),
            concurrency=self.concurrency,
            running=len(self.running),
            started=self._started,
            last_seen=now_ms(),
            control_address=self.control_address,
        )

    async def _heartbeat(self) -> None:
        """Renew the leases of every job this worker holds; stop the handlers whose
        lease is gone (reclaimed after it lapsed or was released, or cancelled)."""
        by_queue: dict[str, dict[str, str]] = {}
        for job_id, running in [*self.running.items(), *self.recording.items()]:
            by_queue.setdefault(running.claim.job.placement, {})[job_id] = running.claim.lease
        for name, leases in by_queue.items():
            for job_id in await self.queue.heartbeat(name, leases, self._lease_ms):
                # An attempt being recorded loses its lease when its own finish lands
                # between this beat's snapshot and its script: nothing to stop then.
                if job_id in self.running:
                    log.warning("job %s: lease lost; stopping its handler", job_id)
                    self._abandon(job_id)

    async def _cancel_loop(self, sub: Subscription[str]) -> None:
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


def _facts(job: Job) -> AttemptFacts:
    return AttemptFacts(
        job.id, job.type, job.owner, job.attempt, job.max_attempts, job.timeout_ms / 1000
    )


def _ready_ms(job: Job) -> int:
    """When the job could first run this time: submitted, due, or its retry time."""
    return max(job.create_time, job.run_at)


def job_result(returned: object) -> dict[str, Any] | str | None:
    """A handler's return value as a result document, or why it cannot be one."""
    if returned is None:
        return None
    if isinstance(returned, BaseModel):
        returned = returned.model_dump(mode="json")
    document = returned if isinstance(returned, dict) else {"value": returned}
    try:
        # Through JSON once: what is stored is exactly what clients will read back.
        parsed = json.loads(json.dumps(document, allow_nan=False))
    except (TypeError, ValueError) as exc:
        return f"the handler returned a result that is not JSON: {exc}"
    return cast(dict[str, Any], parsed)
