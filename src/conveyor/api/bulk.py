"""Bulk actions: RetryJobs, CancelJobs and DeleteJobs over the jobs a filter matches.

The answer to a call with `force` is a `BulkOperation` (conveyor.jobs.bulk) that runs in
the background of the API process that took the call and is polled with
GetBulkOperation; without `force`, the call is a dry run that counts (AIP-165).

- **The set is fixed when it starts**: the newest job's id is recorded (`top_id`) and the
  operation walks the matching jobs from there downward by id, a page at a time, so a job
  submitted afterwards is never touched, and a job it made QUEUED again is never seen
  twice.
- **Each job takes its single-job path**: RetryJobs calls `JobOperations.retry` and
  CancelJobs `JobOperations.cancel` per job, as RetryJob and CancelJob do (fencing, Redis,
  events, metrics); DeleteJobs deletes finished jobs as retention's sweeper does
  (`conveyor.api.removal.remove_jobs`: objects, rows with their attempts and
  artifacts, hot state). A job that no longer qualifies when its turn comes (retried,
  finished or deleted meanwhile) is counted as skipped, not as an error.
- **Paced**: one job per turn of a `Pacer` at the operation's `per_second`, a few jobs in
  flight at once, so retrying 100,000 dead jobs feeds the workers at that rate.
- **It outlives its process**: the row (migration 0010) holds its progress, recorded after
  each page, and a lease the running process extends with it. Every API process looks
  for running operations whose lease has run out and takes one over, going on after its
  last recorded page (jobs of the page it was on when its process died are looked at
  again: those already done are then skipped).
- **Charged once**: the call costs the caller's key one submit (`force`) or one read (a
  dry run), whatever the number of jobs; the pace bounds the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator

from conveyor.api.jobs import JobOperations, parse_filter
from conveyor.api.ratelimit import Kind
from conveyor.api.removal import remove_jobs
from conveyor.db.artifacts import ArtifactStore
from conveyor.db.bulk_operations import BulkOperationStore
from conveyor.errors import (
    ConveyorError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from conveyor.jobs import filters
from conveyor.jobs.bulk import BulkAction, BulkOperation, BulkRequest, BulkState, Pacer
from conveyor.jobs.filters import Filter
from conveyor.jobs.model import new_job_id, now_ms, valid_job_id
from conveyor.objects import ObjectStore
from conveyor.server.auth import Principal, Role

log = logging.getLogger(__name__)

# How long an operation's lease lasts without its process recording progress, and how
# often each API process looks for operations whose lease ran out.
LEASE_SECONDS = 15.0
# Jobs acted on at once within a page (each a few database and Redis round trips).
IN_FLIGHT = 16
# Most jobs a page reads (a page takes about a second at the operation's pace).
MAX_PAGE = 500


class BulkOperations:
    def __init__(
        self,
        ops: JobOperations,
        store: BulkOperationStore,
        artifacts: ArtifactStore,
        objects: ObjectStore,
        *,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.ops = ops
        self.store = store
        self.artifacts = artifacts
        self.objects = objects
        self.lease_ms = int(lease_seconds * 1000)
        self.me = secrets.token_hex(8)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # -- calls -----------------------------------------------------------------------------
    async def start(
        self, principal: Principal, request: BulkRequest
    ) -> tuple[int, BulkOperation | None]:
        """The dry run's count, or (with `force`) the count and the operation started."""
        parsed = _parse(principal, request.filter)
        await self.ops.charge(principal, Kind.SUBMIT if request.force else Kind.READ)
        owner = None if principal.is_admin else principal.owner
        top = await self.ops.store.newest_id() or ""
        count = 0
        if top:
            running = await self.ops.running_for(parsed)
            count = await self.ops.store.count_matching(
                owner, parsed, request.action.states, top, running
            )
        if not request.force:
            return count, None
        op = BulkOperation(
            id=new_job_id(),
            owner=principal.owner,
            admin=principal.is_admin,
            action=request.action,
            filter=request.filter,
            state=BulkState.RUNNING,
            per_second=request.per_second,
            max_attempts=request.max_attempts,
            top_id=top,
            cursor="",
            matched=count,
            done=0,
            skipped=0,
            failed=0,
            error="",
            create_time=now_ms(),
            finish_time=None,
        )
        await self.store.create(op, self.me, now_ms() + self.lease_ms)
        self._launch(op)
        return count, op

    async def get(self, principal: Principal, op_id: str) -> BulkOperation:
        await self.ops.charge(principal, Kind.READ)
        return await self._visible(principal, op_id)

    async def cancel(self, principal: Principal, op_id: str) -> BulkOperation:
        """Stop a running operation: its runner stops after the page it is on (whose
        counts it still records)."""
        await self.ops.charge(principal, Kind.READ)
        op = await self._visible(principal, op_id)
        if op.state is not BulkState.RUNNING:
            raise FailedPrecondition(f"bulk operation {op_id} has already ended")
        op.state, op.finish_time = BulkState.CANCELLED, now_ms()
        ended = await self.store.finish(op, None)
        if ended is None:
            raise FailedPrecondition(f"bulk operation {op_id} has already ended")
        return ended

    async def _visible(self, principal: Principal, op_id: str) -> BulkOperation:
        if not valid_job_id(op_id):
            raise InvalidArgument([FieldViolation("id", "must be a bulk operation id")])
        op = await self.store.get(op_id, None if principal.is_admin else principal.owner)
        if op is None:
            raise NotFound(f"bulk operation {op_id} not found")
        return op

    # -- running ---------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run operations in this process while inside: those it starts, and those whose
        process is gone (taken over). On the way out they stop; their leases run out and
        another API process goes on with them."""
        looking = asyncio.create_task(self._take_over_abandoned(), name="bulk-takeover")
        try:
            yield
        finally:
            looking.cancel()
            tasks = [looking, *self._tasks.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _take_over_abandoned(self) -> None:
        while True:
            try:
                await self.take_over_abandoned()
            except Unavailable as exc:
                log.warning("looking for abandoned bulk operations failed: %s", exc)
            except Exception:
                log.exception("looking for abandoned bulk operations failed")
            await asyncio.sleep(self.lease_ms / 3000)

    async def take_over_abandoned(self) -> int:
        """Take over every running operation whose lease ran out; how many."""
        now = now_ms()
        taken = 0
        for op_id in await self.store.abandoned(now):
            if op_id in self._tasks:  # ours, its lease late to be extended: it runs
                continue
            op = await self.store.take_over(op_id, self.me, now, now + self.lease_ms)
            if op is not None:
                log.info("resuming bulk operation %s after %s", op.id, op.cursor or "its start")
                self._launch(op)
                taken += 1
        return taken

    def _launch(self, op: BulkOperation) -> None:
        task = asyncio.create_task(self._run(op), name=f"bulk-{op.id}")
        self._tasks[op.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(op.id, None))

    async def wait(self, op_id: str) -> None:
        """Until this process has stopped running the operation (tests)."""
        task = self._tasks.get(op_id)
        if task is not None:
            await asyncio.shield(task)

    async def _run(self, op: BulkOperation) -> None:
        """Walk the operation's jobs page by page from its cursor, recording progress
        after each page, until none is left, it is cancelled or its lease is lost."""
        parsed = filters.parse(op.filter)
        assert parsed is not None  # an empty filter never starts
        principal = Principal(op.owner, Role.ADMIN if op.admin else Role.USER)
        owner = None if op.admin else op.owner
        pacer = Pacer(op.per_second)
        page = max(1, min(op.per_second, MAX_PAGE))
        stop = asyncio.Event()
        keeping = asyncio.create_task(self._keep_lease(op.id, stop), name=f"lease-{op.id}")
        try:
            while not stop.is_set():
                try:
                    running = await self.ops.running_for(parsed)
                    found = await self.ops.store.matching_ids(
                        owner,
                        parsed,
                        op.action.states,
                        op.top_id,
                        below=op.cursor,
                        limit=page,
                        running=running,
                    )
                    if not found:
                        break
                    acted = await self._act(
                        op, principal, [job_id for job_id, _ in found], pacer, stop
                    )
                    if acted:
                        op.cursor = found[acted - 1][0]
                    if not await self.store.progress(op, self.me, now_ms() + self.lease_ms):
                        return  # cancelled, or another process runs it now
                except Unavailable as exc:  # the page is tried again; the lease may run out
                    log.warning("bulk operation %s waits: %s", op.id, exc)
                    await asyncio.sleep(1.0)
            if stop.is_set():
                return  # cancelled, or another process runs it now
            op.state = BulkState.SUCCEEDED
        except Exception as exc:
            log.exception("bulk operation %s failed", op.id)
            op.state, op.error = BulkState.FAILED, str(exc) or type(exc).__name__
        finally:
            keeping.cancel()
        op.finish_time = now_ms()
        with contextlib.suppress(Unavailable):  # else the lease runs out and it is resumed
            await self.store.finish(op, self.me)

    async def _keep_lease(self, op_id: str, stop: asyncio.Event) -> None:
        """Extend the operation's lease every third of it, whatever a page takes; once the
        operation is no longer ours (cancelled, taken over), tell the runner to stop."""
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                if not await self.store.extend(op_id, self.me, now_ms() + self.lease_ms):
                    stop.set()
                    return
            except Unavailable as exc:  # the runner meets it too; the lease may run out
                log.warning("bulk operation %s: lease not extended: %s", op_id, exc)

    async def _act(
        self,
        op: BulkOperation,
        principal: Principal,
        ids: list[str],
        pacer: Pacer,
        stop: asyncio.Event,
    ) -> int:
        """Act on a page's jobs in order, paced, until done or told to stop; how many of
        them (from the first) were acted on."""
        if op.action is BulkAction.DELETE:
            return await self._delete(op, ids, pacer, stop)
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def one(job_id: str) -> None:
            try:
                if op.action is BulkAction.RETRY:
                    await self.ops.retry(
                        principal, job_id, op.max_attempts
                    )  # dependents stay as they are
                else:
                    await self.ops.cancel(principal, job_id)
                op.done += 1
            except (FailedPrecondition, NotFound):  # changed meanwhile: left alone
                op.skipped += 1
            except ConveyorError as exc:
                op.failed += 1
                op.error = f"job {job_id}: {exc.message}"
            finally:
                slots.release()

        tasks = []
        for job_id in ids:
            await pacer.turn()
            if stop.is_set():
                break
            await slots.acquire()
            tasks.append(asyncio.create_task(one(job_id)))
        await asyncio.gather(*tasks)
        return len(tasks)

    async def _delete(
        self, op: BulkOperation, ids: list[str], pacer: Pacer, stop: asyncio.Event
    ) -> int:
        """Delete a page's jobs that are still finished, in chunks of a tenth of a second's
        turns, as the sweeper deletes expired ones."""
        chunk = max(1, op.per_second // 10)
        acted = 0
        for start in range(0, len(ids), chunk):
            if stop.is_set():
                break
            part = ids[start : start + chunk]
            for _ in part:
                await pacer.turn()
            held = await self.artifacts.finished_holding(part)
            gone, _ = await remove_jobs(
                self.objects, self.ops.queue, held, self.artifacts.delete_finished
            )
            op.done += gone
            op.skipped += len(part) - gone
            acted += len(part)
        return acted


def _parse(principal: Principal, text: str) -> Filter:
    """The filter, refused as ListJobs refuses it (`parse_filter`), and required."""
    parsed = parse_filter(principal, text)
    if parsed is None:
        raise InvalidArgument(
            [FieldViolation("filter", "is required: a bulk action must say which jobs")]
        )
    return parsed
