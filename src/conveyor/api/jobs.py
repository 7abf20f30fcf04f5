"""JobOperations: what the API does with jobs — submit, get, list, watch, cancel — composed
from the store (truth) and the queue (hot state). Servicers only decode, call this, encode.

Submission order is the durability contract: the job row is committed first, then the job is
enqueued in Redis. A failure between the two leaves a committed job that Redis lacks; it is
still accepted (the client gets it, OK, whatever Redis said), this process retries the
enqueue within seconds (`conveyor.api.pending_writes`), and the reconciler puts it back in line
if this process cannot (DESIGN.md §2). Redis failures before the commit (the rate limit's
bucket) never pass for a failed submit of a committed job: nothing was committed yet.

Unique and debounced submits (`unique_for`, `debounce`: conveyor.jobs.unique) leave the
group-committed path: each is a transaction of its own that may lock the row holding its key
and, for a debounce, ask Redis (debounce.lua) whether the job still waits before committing
the replacement; a job they make new is enqueued as any other. Ordinary submits pay one
attribute test for this.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from redis.exceptions import RedisError

from conveyor.api.feeds import JobFeed, JobFeeds, answer_for, ended
from conveyor.api.known_names import KnownNames, NameCache
from conveyor.api.pagetokens import MAX_PAGE_SIZE, PageTokens, page_limit
from conveyor.api.pending_writes import PendingWrites
from conveyor.api.ratelimit import Kind, Limit, RateLimiter
from conveyor.api.workflows import Workflows, check_callback, check_requests
from conveyor.batching import Batcher
from conveyor.config import Settings
from conveyor.db import JobStore
from conveyor.db.dependencies import BatchView
from conveyor.errors import (
    ConveyorError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from conveyor.handlers import Registry
from conveyor.jobs import filters
from conveyor.jobs.attempts import Attempt
from conveyor.jobs.blocked import Blocked
from conveyor.jobs.filters import Filter
from conveyor.jobs.model import (
    MAX_ATTEMPTS_LIMIT,
    Job,
    JobDefaults,
    JobSpec,
    JobState,
    now_ms,
    timestamp_ms,
    valid_job_id,
    valid_queue,
    valid_type,
)
from conveyor.jobs.queues import Waiting
from conveyor.jobs.retention import resolve_retention_ms
from conveyor.jobs.shards import shard_for
from conveyor.redis import EventHub, RedisQueue
from conveyor.redis.workers import WorkerRegistry
from conveyor.server.auth import Principal
from conveyor.telemetry import tracing
from conveyor.telemetry.metrics import ApiMetrics
from conveyor.v1 import job_service_pb2 as pb

log = logging.getLogger(__name__)

# Job id -> queue entries remembered per API process (about 100 bytes each).
QUEUE_MAP_SIZE = 200_000


@dataclass(frozen=True, slots=True)
class ListFilter:
    state: JobState | None = None
    queue: str | None = None
    type: str | None = None
    # Admins only: another owner's jobs ("" or None: every owner's for admins).
    owner: str | None = None
    # Jobs created in [start, end), epoch ms (see `create_time_range`); None: unbounded.
    create_time_start: int | None = None
    create_time_end: int | None = None
    # An AIP-160 filter (conveyor.jobs.filters); "" for none.
    filter: str = ""


class JobOperations:
    def __init__(
        self,
        store: JobStore,
        queue: RedisQueue,
        hub: EventHub,
        settings: Settings,
        registry: Registry | None = None,
        *,
        metrics: ApiMetrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics or ApiMetrics()
        self.queue = queue
        self.hub = hub
        # One feed per watched job, shared by its WatchJob streams here.
        self.feeds = JobFeeds(hub, queue, self.metrics)
        self.settings = settings
        self.registry = registry or Registry()
        self.workers = WorkerRegistry(queue.redis)
        # Existing queues, known types and live workers (checks, labels, blocked reasons).
        self.names = NameCache(queue, self.workers, self.registry)
        self.limiter = RateLimiter(
            queue.redis, queue.scripts, hold=settings.rate_limit_hold_seconds
        )
        self.page_tokens = PageTokens(queue.redis, settings.secret_key)
        # Redis writes owed for committed changes (run with `pending.running()`).
        self.pending = PendingWrites(store, queue, settings, self.metrics)
        # Jobs that wait for others, and batches (conveyor.jobs.dependencies).
        self.workflows = Workflows(store.db, queue)
        self._default_limits = {
            Kind.SUBMIT: Limit(settings.submit_rate, settings.submit_burst),
            Kind.READ: Limit(settings.read_rate, settings.read_burst),
        }
        self._defaults: dict[str, JobDefaults] = {}
        # New jobs are independent, so two flushes may overlap (see conveyor.batching).
        self._submits: Batcher[Job, Job | ConveyorError] = Batcher(
            self._commit_and_enqueue, concurrency=2
        )
        # Concurrent GetJobs share one Redis pipeline of their reads (`RedisQueue.look_many`);
        # reads are independent, so two may be in flight, as submits.
        self._looks: Batcher[tuple[str, str], tuple[dict[str, str] | None, Waiting | None]] = (
            Batcher(self._look_many, concurrency=2)
        )
        # A job's hot state lives under its queue's hash tag (its shard's: `Job.placement`),
        # so reading it takes that placement.
        # Jobs submitted here, or read once from the database, are remembered with their
        # owner (oldest forgotten first); any other id costs one primary-key read first.
        self._queues: dict[str, tuple[str, str]] = {}

    def _remember(self, job: Job) -> None:
        self._queues[job.id] = (job.placement, job.owner)
        if len(self._queues) > QUEUE_MAP_SIZE:
            del self._queues[next(iter(self._queues))]

    # -- submit ----------------------------------------------------------------------------
    def defaults(self, job_type: str) -> JobDefaults:
        """What a job of this type gets for unset fields: the type's registration (when
        this process loaded it) over the server's settings."""
        found = self._defaults.get(job_type)
        if found is not None:
            return found
        settings = self.settings
        spec = self.registry.get(job_type)
        retention = resolve_retention_ms(
            None, spec.retention_seconds if spec else None, settings.retention_seconds
        )
        found = JobDefaults(
            max_attempts=settings.default_max_attempts,
            timeout_ms=int(settings.default_timeout_seconds * 1000),
            retry=settings.retry_policy,
            retention_ms=retention,
        )
        if spec is not None:
            found = JobDefaults(
                max_attempts=spec.max_attempts or found.max_attempts,
                timeout_ms=int(spec.timeout_seconds * 1000)
                if spec.timeout_seconds
                else found.timeout_ms,
                retry=spec.retry.over(found.retry) if spec.retry else found.retry,
                retention_ms=retention,
            )
        if len(self._defaults) < 10_000:  # job types are few; never grow without bound
            self._defaults[job_type] = found
        return found

    def _limit(self, principal: Principal, kind: Kind) -> Limit:
        """The owner's rate limit: the key's own, else the server's default."""
        own = principal.submit_limit if kind is Kind.SUBMIT else principal.read_limit
        return Limit(*own) if own is not None else self._default_limits[kind]

    async def charge(self, principal: Principal, kind: Kind, cost: int = 1) -> None:
        """Charge the call to the owner's rate limit."""
        try:
            await self.limiter.take(principal.owner, kind, self._limit(principal, kind), cost)
        except ResourceExhausted:
            self.metrics.rate_limited.inc(kind.value)
            raise

    async def charge_each(
        self, principal: Principal, count: int
    ) -> tuple[int, ResourceExhausted | None]:
        """Charge up to `count` submits, each standing alone: how many the owner's rate
        limit admits (at least one, else RESOURCE_EXHAUSTED for the call), and the refusal
        each of the rest gets."""
        limit = self._limit(principal, Kind.SUBMIT)
        try:
            admitted = await self.limiter.take_some(principal.owner, Kind.SUBMIT, limit, count)
        except ResourceExhausted:
            self.metrics.rate_limited.inc(Kind.SUBMIT.value)
            raise
        if admitted == count:
            return admitted, None
        self.metrics.rate_limited.inc(Kind.SUBMIT.value, by=count - admitted)
        return admitted, self.limiter.refusal(principal.owner, Kind.SUBMIT, limit)

    def _new_job(self, principal: Principal, spec: JobSpec, now: int) -> Job:
        job = spec.new_job(principal.owner, defaults=self.defaults(spec.type), now=now)
        job.key_id, job.key_cap = principal.key_id, principal.max_running
        job.trace_parent = tracing.current_traceparent()
        # A key's jobs all go to one shard, which holds its whole per-key cap or rate (a
        # job with both keys goes by its concurrency key: see conveyor.jobs.shards).
        shard_by = job.concurrency_key or job.rate_key or job.id
        job.shard = shard_for(shard_by, self.names.latest.shard_count(job.queue))
        return job

    async def check(self, specs: Sequence[JobSpec], *, bulk: bool = False) -> None:
        """Refuse, before anything is charged or stored, jobs of a type no one knows (see
        `conveyor.api.known_names`) and payloads their type's model rejects (types this process
        loaded): INVALID_ARGUMENT with a violation per field, per request in a bulk."""
        known = await self.names.get()
        violations: list[FieldViolation] = []
        for index, spec in enumerate(specs):
            prefix = f"requests[{index}]." if bulk else ""
            unknown = known.type_violation(spec.queue, spec.type, f"{prefix}type")
            if unknown is not None:
                violations.append(unknown)
                continue
            violations += self.payload_violations(spec, f"{prefix}payload")
            if bulk and spec.keyed:
                violations += _keyed_in_bulk(spec, prefix)
        if violations:
            raise InvalidArgument(violations)

    async def type_violations(self, spec: JobSpec, field: str) -> list[FieldViolation]:
        """What the known names say of this spec's type (nothing: known, or not knowable)."""
        unknown = (await self.names.get()).type_violation(spec.queue, spec.type, field)
        return [unknown] if unknown is not None else []

    def payload_violations(self, spec: JobSpec, prefix: str) -> list[FieldViolation]:
        """What the type's payload model says of this spec's payload (types not loaded
        here: nothing; their workers check)."""
        handler = self.registry.get(spec.type)
        return handler.violations(spec.payload, prefix) if handler is not None else []

    async def submit(self, principal: Principal, spec: JobSpec) -> Job:
        """Commit one job (group-committed with concurrent submits), then enqueue it; a
        unique or debounced one, or one with dependencies, on its own."""
        await self.check([spec])
        check_requests([spec], bulk=False)
        await self.charge(principal, Kind.SUBMIT)
        now = now_ms()
        job = self._new_job(principal, spec, now)
        if tracing.enabled():  # the attributes are not even built otherwise
            tracing.annotate(**tracing.job_attributes(job.id, job.type, job.queue))
        if spec.keyed:
            return await self._submit_keyed(job, now)
        if spec.has_dependencies:
            return (await self._submit_dependent([job], [spec]))[0]
        result = await self._submits.submit(job)
        if isinstance(result, ConveyorError):
            raise result
        return result

    async def _submit_keyed(self, job: Job, now: int) -> Job:
        """A unique or debounced job (conveyor.jobs.unique): its own transaction, in which
        a debounce's replacement asks Redis first (`RedisQueue.debounce`); a new job is
        enqueued as any other."""
        answer, new = await self.store.insert_keyed(job, now, self.queue.debounce)
        if new:
            await self._enqueue_new([job], [job])
        else:
            self._remember(answer)
        return answer

    async def submit_many(self, principal: Principal, specs: Sequence[JobSpec]) -> list[Job]:
        """Commit a bulk request in its own transaction: all jobs or, on a conflict, none."""
        jobs, _ = await self.submit_batch(principal, specs, None)
        return jobs

    async def submit_batch(
        self, principal: Principal, specs: Sequence[JobSpec], on_complete: JobSpec | None
    ) -> tuple[list[Job], str]:
        """`submit_many`, and with `on_complete` as a batch with that callback: the jobs,
        and the batch's id ("" without a callback)."""
        dependent = on_complete is not None or any(s.has_dependencies for s in specs)
        if dependent:
            check_requests(specs, bulk=True)
        await self.check(specs, bulk=True)
        if on_complete is not None:
            await self._check_callback(on_complete)
        await self.charge(principal, Kind.SUBMIT, len(specs) + (on_complete is not None))
        now = now_ms()
        jobs = [self._new_job(principal, spec, now) for spec in specs]
        if dependent:
            callback = None if on_complete is None else self._new_job(principal, on_complete, now)
            stored, batch_id = await self._submit_batch(jobs, specs, callback)
            return stored[: len(jobs)], batch_id
        results = await self.store.insert(jobs, all_or_nothing=True)
        errors = [(i, r) for i, r in enumerate(results) if isinstance(r, ConveyorError)]
        if errors:
            index, first = errors[0]
            first.message = f"requests[{index}]: {first.message}"
            raise first
        stored = [r for r in results if isinstance(r, Job)]
        await self._enqueue_new(jobs, stored)
        return stored, ""

    async def _check_callback(self, spec: JobSpec) -> None:
        """`check` of a batch's callback, its violations named under `on_complete.`."""
        check_callback(spec)
        try:
            await self.check([spec])
        except InvalidArgument as bad:
            named = [
                FieldViolation(f"on_complete.{v.field}", v.description) for v in bad.violations
            ]
            raise InvalidArgument(named) from None

    async def _submit_dependent(self, jobs: list[Job], specs: Sequence[JobSpec]) -> list[Job]:
        stored, _ = await self._submit_batch(jobs, specs, None)
        return stored

    async def _submit_batch(
        self, jobs: list[Job], specs: Sequence[JobSpec], callback: Job | None
    ) -> tuple[list[Job], str]:
        """Jobs with dependencies, or a batch: one transaction of their own
        (conveyor.api.workflows); those of them ready to run are enqueued as any other."""
        stored, batch_id = await self.workflows.insert(jobs, specs, callback)
        made = [*jobs, *([callback] if callback is not None else [])]
        ready = [
            job
            for job, result in zip(made, stored, strict=True)
            if result is job and not job.dependencies_pending and not job.state.terminal
        ]
        await self._enqueue_new(ready, ready)
        return stored, batch_id

    async def submit_each(
        self, principal: Principal, specs: Sequence[JobSpec | ConveyorError]
    ) -> list[Job | ConveyorError]:
        """A per-item bulk (SubmitJobs' `partial_success`): per request, the job or the
        error a SubmitJob of it alone would get. A request that failed to decode comes as
        its error. The valid ones are charged as lone submits would be: the owner's rate
        limit admits as many as its bucket holds, in request order, and the rest are
        RESOURCE_EXHAUSTED each (a bucket with none refuses the call). The admitted ones
        are committed in one transaction of their own, so that a failure of the call as a
        whole (the database) raises with nothing stored, and a request refused alone (its
        idempotency key used for another request) is not stored while the others are."""
        outcomes: dict[int, Job | ConveyorError] = {}
        valid: list[tuple[int, JobSpec]] = []
        for index, spec in enumerate(specs):
            if isinstance(spec, ConveyorError):
                outcomes[index] = spec
                continue
            try:
                await self.check([spec])
                if spec.keyed:
                    raise InvalidArgument(_keyed_in_bulk(spec, ""))
                check_requests([spec], bulk=False)
            except InvalidArgument as bad:
                outcomes[index] = bad
                continue
            valid.append((index, spec))
        if valid:
            admitted, refused = await self.charge_each(principal, len(valid))
            if refused is not None:  # the bucket ran dry: the rest wait, as lone submits would
                outcomes.update((index, refused) for index, _ in valid[admitted:])
                valid = valid[:admitted]
            now = now_ms()
            dependent = [(i, spec) for i, spec in valid if spec.has_dependencies]
            valid = [(i, spec) for i, spec in valid if not spec.has_dependencies]
            jobs = [self._new_job(principal, spec, now) for _, spec in valid]
            stored = await self._commit_and_enqueue(jobs) if jobs else []
            outcomes.update(zip((index for index, _ in valid), stored, strict=True))
            for index, spec in dependent:  # each its own transaction, as a SubmitJob
                try:
                    job = self._new_job(principal, spec, now)
                    outcomes[index] = (await self._submit_dependent([job], [spec]))[0]
                except InvalidArgument as bad:
                    outcomes[index] = bad
        return [outcomes[index] for index in range(len(specs))]

    async def _commit_and_enqueue(self, jobs: list[Job]) -> list[Job | ConveyorError]:
        results = await self.store.insert(jobs)
        await self._enqueue_new(jobs, results)
        return results

    async def _enqueue_new(self, made: Sequence[Job], results: Sequence[object]) -> None:
        """Enqueue the jobs this call inserted (not the earlier jobs idempotency returned)."""
        new = [job for job, result in zip(made, results, strict=True) if result is job]
        if not new:
            return
        known = self.names.latest  # read by the submit's own check
        for job in new:
            self._remember(job)
            self.metrics.submitted.inc(known.queue_label(job.queue), known.type_label(job.type))
        try:
            await self.queue.enqueue(new)
        except Exception as exc:  # committed, so accepted whatever failed (see the module)
            if not isinstance(exc, Unavailable | RedisError):
                log.exception("enqueueing committed jobs failed unexpectedly", exc_info=exc)
            self.pending.enqueue_later(new, exc)

    # -- read ------------------------------------------------------------------------------
    async def get(self, principal: Principal, job_id: str) -> Job:
        """The job as it stands: Redis hot state when present, else the database row; a
        waiting job says why it waits."""
        await self.charge(principal, Kind.READ)
        job, waiting = await self._look(principal, job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        if job.state in (JobState.SCHEDULED, JobState.QUEUED, JobState.RETRYING):
            try:
                job.blocked = await self._blocked(job, waiting)
            except Unavailable:
                job.blocked = Blocked.queue_unreachable()
        return job

    async def _look(self, principal: Principal, job_id: str) -> tuple[Job | None, Waiting | None]:
        """The job if `principal` may see it and, if it waits in line, why: one Redis round
        trip for a job whose queue this process knows (the usual poll of a job submitted
        here), else the database row (`_stored`).

        Another owner's job takes exactly the path of a missing id (one database read,
        scoped to the caller, that finds nothing), so neither the answer nor its timing
        tells a caller whether an id exists."""
        _check_id(job_id)
        known = self._queues.get(job_id)
        if known is None or not _may_see(principal, known[1]):
            return await self._stored(principal, job_id, hot_read=False), None
        if self.pending.owes(job_id):  # Redis lacks its latest change: the row is the truth
            return await self._stored(principal, job_id, hot_read=True), None
        try:
            hot, waiting = await self._looks.submit((known[0], job_id))
        except Unavailable:
            hot, waiting = None, None
        if hot is not None:
            return Job.from_hot(hot), waiting
        return await self._stored(principal, job_id, hot_read=True), None

    async def _look_many(
        self, refs: list[tuple[str, str]]
    ) -> list[tuple[dict[str, str] | None, Waiting | None]]:
        return await self.queue.look_many(refs)

    async def _get_visible(self, principal: Principal, job_id: str) -> Job:
        job = await self._load(principal, job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        return job

    async def _blocked(self, job: Job, waiting: Waiting | None = None) -> Blocked:
        """Why a waiting job waits: the first cause found, cheapest first (see
        conveyor.jobs.blocked)."""
        owed = self.pending.blocked(job.id)
        if owed is not None:
            return owed
        if job.dependencies_pending:
            return await self.workflows.blocked(job)
        if job.state is JobState.SCHEDULED:
            return Blocked.scheduled(job.run_at)
        if job.state is JobState.RETRYING:
            return Blocked.backoff(job.run_at, job.attempt, job.max_attempts)
        if waiting is None:
            waiting = await self.queue.waiting(job.placement, job.id)
        held = waiting.blocked(job.queue)
        if held is not None:
            return held
        unserved = _unserved(job, await self.names.get())
        if unserved is not None:
            return unserved
        return Blocked.in_line(job.queue, waiting.ahead if waiting.ahead >= 0 else None)

    async def result(
        self, principal: Principal, job_id: str
    ) -> tuple[Job, dict[str, Any] | None, str | None]:
        """A SUCCEEDED job, what its handler returned, and the object key of a result kept
        in the object store instead (see conveyor.api.results)."""
        await self.charge(principal, Kind.READ)
        job = await self._get_visible(principal, job_id)
        if job.state is not JobState.SUCCEEDED:
            raise FailedPrecondition(
                f"job {job_id} has no result: it is {job.state.name}, not SUCCEEDED"
            )
        document, ref = await self.store.result(job_id)
        return job, document, ref

    async def attempts(
        self, principal: Principal, job_id: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Attempt], str]:
        """A page of the job's recorded attempts, oldest first (0: a page of 1000, the most
        a call returned before pages), and the token of the next page ("" if last)."""
        limit = page_limit(page_size, MAX_PAGE_SIZE)
        await self.charge(principal, Kind.READ)
        await self._get_visible(principal, job_id)

        async def fetch(count: int, after: int | None) -> list[Attempt]:
            return await self.store.attempts(job_id, limit=count, after=after or 0)

        scope = _attempts_scope(principal, job_id)
        return await self.page_tokens.page_by(
            scope, page_token, limit, fetch, _attempt_cursor, _parse_attempt_cursor
        )

    async def attempts_token_after(
        self, principal: Principal, job_id: str, attempt: Attempt
    ) -> str:
        """The token of the page of attempts that follows `attempt` (for a caller that cuts
        a page short, as `page_token_after`)."""
        scope = _attempts_scope(principal, job_id)
        return await self.page_tokens.encode(_attempt_cursor(attempt), scope)

    async def retry(
        self,
        principal: Principal,
        job_id: str,
        max_attempts: int,
        *,
        include_dependents: bool = False,
    ) -> tuple[Job, list[Job]]:
        """Replay a DEAD or CANCELLED job with a fresh attempt budget: QUEUED in the database
        (with a new fence), then back in line in Redis (else the reconciler puts it there).
        With `include_dependents`, the dependents its end cancelled wait for it again
        (revived before it is enqueued, so it cannot end before they wait); they are the
        second value."""
        if not 0 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise InvalidArgument(
                [FieldViolation("max_attempts", f"must be 0 (default) to {MAX_ATTEMPTS_LIMIT}")]
            )
        current = await self._get_visible(principal, job_id)
        budget = max_attempts or self.defaults(current.type).max_attempts
        owner = None if principal.is_admin else principal.owner
        job = await self.store.replay(job_id, owner, budget)
        revived = await self.workflows.revive(job_id) if include_dependents else []
        if revived:  # waiting again: the database's alone, as before they ended
            with contextlib.suppress(Unavailable):
                await self.queue.forget([(j.id, j.placement) for j in revived])
        try:
            await self.queue.restore([job])
        except Exception as exc:  # committed: the replay is done (see `_enqueue_new`)
            if not isinstance(exc, Unavailable | RedisError):
                log.exception("enqueueing a replayed job failed unexpectedly", exc_info=exc)
            self.pending.enqueue_later([job], exc)
            return job, revived
        hot = await self._hot(job.placement, job.id)
        return (Job.from_hot(hot) if hot is not None else job), revived

    async def batch(self, principal: Principal, batch_id: str) -> BatchView:
        """A batch of the caller's (an admin's: any owner's) and its jobs' states."""
        await self.charge(principal, Kind.READ)
        _check_id(batch_id)
        return await self.workflows.batch(batch_id, None if principal.is_admin else principal.owner)

    async def _load(self, principal: Principal, job_id: str) -> Job | None:
        """The job if `principal` may see it; as in `_look`, another owner's job takes the
        path of a missing id."""
        _check_id(job_id)
        known = self._queues.get(job_id)
        if known is not None and _may_see(principal, known[1]):
            hot = await self._hot(known[0], job_id)
            if hot is not None:
                return Job.from_hot(hot)
            return await self._stored(principal, job_id, hot_read=True)
        return await self._stored(principal, job_id, hot_read=False)

    async def _stored(self, principal: Principal, job_id: str, *, hot_read: bool) -> Job | None:
        """The job from its database row if `principal` may see it (the read is scoped to a
        user's owner, so another owner's row is not even fetched), remembered; then from
        Redis's hot state if it is there, unless the caller has just read that and found
        nothing."""
        job = await self.store.get(job_id, owner=None if principal.is_admin else principal.owner)
        if job is None:
            return None
        self._remember(job)
        hot = None if hot_read else await self._hot(job.placement, job_id)
        return Job.from_hot(hot) if hot is not None else job

    async def _hot(self, queue: str, job_id: str) -> dict[str, str] | None:
        """Hot state, or None if Redis lacks it or cannot be reached (then the DB answers)."""
        try:
            return await self.queue.hot(queue, job_id)
        except Unavailable:
            return None

    async def list_jobs(
        self, principal: Principal, filt: ListFilter, page_size: int, page_token: str
    ) -> tuple[list[Job], str]:
        limit = page_limit(page_size)
        _check_filter(filt)
        parsed = parse_filter(principal, filt.filter)
        await self.charge(principal, Kind.READ)
        owner = list_owner(principal, filt.owner)
        running = await self.running_for(parsed, asks_state=filt.state is not None)

        async def fetch(count: int, before: str | None) -> list[Job]:
            jobs = await self.store.list_jobs(
                owner,
                state=filt.state,
                queue=filt.queue,
                type=filt.type,
                limit=count,
                before_id=before,
                create_time_start=filt.create_time_start,
                create_time_end=filt.create_time_end,
                filter=parsed,
                running=running,
            )
            await self._take_live(jobs)
            return jobs

        scope = _page_scope(principal, owner, filt)
        return await self.page_tokens.page(scope, page_token, limit, fetch)

    async def running_for(
        self, parsed: Filter | None, *, asks_state: bool = False
    ) -> Collection[str]:
        """The ids of the jobs running now when a listing asks about state (`asks_state`,
        or its filter names `state`), else none: the database never says RUNNING, which
        jobs run now is Redis's to say."""
        if not asks_state and (parsed is None or "state" not in parsed.fields()):
            return frozenset()
        return await self.queue.running_ids()

    async def _take_live(self, jobs: list[Job]) -> None:
        """Show listed jobs as they stand: a job the database has as waiting may be running
        (RUNNING is never written there) or have moved on, so its live fields come from
        Redis, in one pipeline for the page. Without Redis the rows stand as they are."""
        waiting = [job for job in jobs if not job.state.terminal]
        if not waiting:
            return
        try:
            found = await self.queue.live_fields([(job.placement, job.id) for job in waiting])
        except Unavailable:
            return
        for job, live in zip(waiting, found, strict=True):
            job.take_live(live)

    async def page_token_after(self, principal: Principal, filt: ListFilter, job: Job) -> str:
        """The token of the page that follows `job` in the listing `filt` (for a caller that
        cuts a page short, e.g. to keep the response under a size)."""
        scope = _page_scope(principal, list_owner(principal, filt.owner), filt)
        return await self.page_tokens.encode(job.id, scope)

    # -- cancel ----------------------------------------------------------------------------
    async def cancel(self, principal: Principal, job_id: str) -> Job:
        """CANCELLED in the database first (the truth), then in Redis, which stops the handler.

        The cancel is final: once committed, an outcome the handler reaches later is
        refused. When Redis says the job was running, the attempt the cancel stopped is
        recorded (CANCELLED, its start, the cancel's time), so the job's history shows it
        ran; its worker, if the handler had already returned, says so in that record."""
        _check_id(job_id)
        job = await self.store.cancel(job_id, None if principal.is_admin else principal.owner)
        await self.workflows.ended([job.id])
        # The cancel is this write (a running handler is stopped and writes nothing).
        known = await self.names.get()
        labels = known.queue_label(job.queue), known.type_label(job.type)
        self.metrics.outcomes.inc(*labels, "cancelled")
        finish_time = job.finish_time or now_ms()
        try:
            found = await self.queue.cancel(job.placement, job.id, finish_time)
        except Exception as exc:  # committed: the job is cancelled; Redis's copy is stale
            if not isinstance(exc, Unavailable | RedisError):
                log.exception("cancelling a job in redis failed unexpectedly", exc_info=exc)
            self.pending.cancel_later(job, exc)
            return job
        if found.stopped is not None:
            await self._record_stopped(found.stopped)
        if self.pending.owes(job.id):  # a retry in flight may put it in line again
            self.pending.cancel_later(job, None)
        hot = await self._hot(job.placement, job_id)
        return Job.from_hot(hot) if hot is not None else job

    async def _record_stopped(self, stopped: Attempt) -> None:
        try:
            await self.store.record_cancelled(stopped)
        except Unavailable:  # the cancel itself is committed: it stands
            log.warning(
                "job %s cancelled; its stopped attempt %d could not be recorded (database "
                "unreachable)",
                stopped.job_id,
                stopped.attempt,
            )

    # -- watch -----------------------------------------------------------------------------
    async def watch(
        self, principal: Principal, job_id: str, after_sequence: int
    ) -> AsyncIterator[pb.WatchJobResponse]:
        """The job's snapshot, then each change in order, until it ends.

        The subscription is opened before the snapshot is read; events then arrive with
        sequence numbers, so one already covered by the snapshot is skipped and a gap (a
        race, or a subscriber that fell behind) is filled from the job's event stream.

        A published change's answer is made once for every watcher of the job in this
        process and shared (`conveyor.api.feeds`): the caller sends it as it is.
        """
        if after_sequence < 0:
            raise InvalidArgument([FieldViolation("after_sequence", "must not be negative")])
        job = await self.get(principal, job_id)  # charged as one read
        async with self.feeds.watching(job.placement, job_id) as (feed, sub):
            hot = await self._hot(job.placement, job_id)
            if hot is None:  # only the database knows it: its state now is all there is
                yield answer_for(0, job)
                if job.state.terminal:
                    return
                hot = {}
            feed.know_payload(hot.get("payload") or json.dumps(job.payload))
            seq = int(hot.get("seq", 0))
            # A resume point beyond the job's sequence is not one this job issued: start over.
            last = after_sequence if after_sequence <= seq else 0
            if hot and seq == last and JobState(int(hot["state"])).terminal:
                return  # the client has already seen the end
            if seq > last:
                events = await self.queue.events_after(job.placement, job_id, last) if last else []
                if not events or int(events[0]["seq"]) != last + 1:
                    events = [hot]  # resume point no longer retained: start from the snapshot
                for event in events:
                    answer = feed.convert(event)
                    last = answer.sequence
                    yield answer
                if ended(answer):
                    return
            while True:
                change = await sub.get()
                if change is None:  # lagged (or its feed found a change lost): catch up
                    answers = await self._caught_up(feed, job.placement, job_id, last)
                else:
                    answer = feed.answer(change)
                    if answer.sequence <= last:
                        continue
                    if answer.sequence > last + 1:
                        answers = await self._caught_up(feed, job.placement, job_id, last)
                    else:
                        answers = [answer]
                for answer in answers:
                    last = answer.sequence
                    yield answer
                    if ended(answer):
                        return

    async def _caught_up(
        self, feed: JobFeed, queue: str, job_id: str, last: int
    ) -> list[pb.WatchJobResponse]:
        """The answers for the retained events after `last`, for one watcher."""
        events = await self.queue.events_after(queue, job_id, last)
        return [feed.convert(event) for event in events if int(event["seq"]) > last]


def _unserved(job: Job, known: KnownNames) -> Blocked | None:
    """Why no worker will take the job now (None when one will): its queue was never
    served, no live worker serves it, or none of those handles its type."""
    if job.queue not in known.queues:
        return Blocked.queue_never_served(job.queue)
    workers = known.serving(job.queue)
    if not workers:
        return Blocked.no_worker(job.queue, job.type, type_unverified=job.type not in known.types)
    if not any(job.type in w.types for w in workers):
        return Blocked.no_worker_for_type(job.queue, job.type)
    return None


def _keyed_in_bulk(spec: JobSpec, prefix: str) -> list[FieldViolation]:
    """SubmitJobs refuses unique and debounced requests: each is a transaction of its own
    that may wait on another's row lock (and a debounce on Redis), which a bulk's single
    statement cannot be; they go one by one through SubmitJob."""
    why = "is not supported in SubmitJobs; use SubmitJob"
    return [
        FieldViolation(f"{prefix}{name}", why)
        for name, ms in (("unique_for", spec.unique_for_ms), ("debounce", spec.debounce_ms))
        if ms
    ]


def _may_see(principal: Principal, owner: str) -> bool:
    return principal.is_admin or owner == principal.owner


def parse_filter(principal: Principal, text: str) -> Filter | None:
    """A listing's or bulk action's filter (None: none), refused as InvalidArgument when it
    does not parse; `owner` in it only from an admin key."""
    parsed = filters.parse(text)
    if parsed is not None and "owner" in parsed.fields() and not principal.is_admin:
        raise PermissionDenied("only admin keys may filter by owner")
    return parsed


def _check_filter(filt: ListFilter) -> None:
    """Filters that no job could match (or the database could not compare) are refused."""
    bad = []
    if filt.queue and not valid_queue(filt.queue):
        bad.append(FieldViolation("queue", "is not a queue name"))
    if filt.type and not valid_type(filt.type):
        bad.append(FieldViolation("type", "is not a job type"))
    if filt.owner and (len(filt.owner) > 128 or not filt.owner.isprintable()):
        bad.append(FieldViolation("owner", "is not an owner name"))
    if bad:
        raise InvalidArgument(bad)


def create_time_range(
    start: Timestamp | None, end: Timestamp | None
) -> tuple[int | None, int | None]:
    """ListJobs' create_time bounds [start, end) (None: unset) as epoch ms: each the first
    millisecond at or after it. Job create times are whole milliseconds, so comparing them
    with these compares them with the Timestamps exactly, sub-millisecond bounds included.
    An invalid Timestamp (nanos out of range, outside years 1-9999) or an end before the
    start is INVALID_ARGUMENT; an end equal to the start is an empty range."""
    bad = [
        FieldViolation(field, "is not a valid Timestamp (years 1-9999, nanos 0-999999999)")
        for field, bound in (("create_time_start", start), ("create_time_end", end))
        if bound is not None and timestamp_ms(bound) is None
    ]
    if bad:
        raise InvalidArgument(bad)
    if start is not None and end is not None and end.ToNanoseconds() < start.ToNanoseconds():
        raise InvalidArgument([FieldViolation("create_time_end", "is before create_time_start")])
    return _first_ms_at(start), _first_ms_at(end)


def _first_ms_at(bound: Timestamp | None) -> int | None:
    return None if bound is None else -(-bound.ToNanoseconds() // 1_000_000)


def _page_scope(
    principal: Principal, owner: str | None, filt: ListFilter
) -> list[str | int | None]:
    """What a page token is bound to: who asks, whose jobs, and the filters. The time
    bounds join only when set, so tokens of unbounded listings stay what they were (a
    listing under way when the API is upgraded goes on)."""
    state = int(filt.state) if filt.state else 0
    scope: list[str | int | None] = [
        principal.owner,
        owner or "",
        state,
        filt.queue or "",
        filt.type or "",
    ]
    start, end = filt.create_time_start, filt.create_time_end
    if start is not None or end is not None:
        scope += ["create_time", start, end]
    if filt.filter:  # joins only when set, as the time bounds do
        scope += ["filter", filt.filter]
    return scope


def _attempts_scope(principal: Principal, job_id: str) -> list[str | int]:
    """What a ListJobAttempts token is bound to: the listing, who asks, and the job."""
    return ["attempts", principal.owner, job_id]


def _attempt_cursor(attempt: Attempt) -> str:
    return str(attempt.attempt)


def _parse_attempt_cursor(text: str) -> int | None:
    """An attempt number as a cursor (attempts are numbered from 1), else None."""
    if not (text.isascii() and text.isdigit() and len(text) <= 5):
        return None
    return int(text) or None


def list_owner(principal: Principal, requested: str | None) -> str | None:
    """Whose jobs a listing shows: a user's own only; an admin's pick, or everyone's."""
    if principal.is_admin:
        return requested or None
    if requested and requested != principal.owner:
        raise PermissionDenied("listing another owner's jobs needs an admin key")
    return principal.owner


def _check_id(job_id: str) -> None:
    if not valid_job_id(job_id):
        raise InvalidArgument([FieldViolation("id", "must be a job id (a UUID)")])
