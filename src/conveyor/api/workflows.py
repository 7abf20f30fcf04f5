"""Workflows: what the API does for jobs that depend on others and for batches, beside
JobOperations (which calls it for these jobs only): making a submit's jobs and edges,
resolving the end of a job it cancelled, saying what a waiting job waits for, reviving
dependents on a replay, and reading a batch. The rules are conveyor.jobs.dependencies';
the statements, conveyor.db.dependencies'.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from redis.exceptions import RedisError

from conveyor.db.database import Database
from conveyor.db.dependencies import BatchView, DependencyStore, Submission
from conveyor.errors import FieldViolation, InvalidArgument, Unavailable
from conveyor.jobs.blocked import Blocked
from conveyor.jobs.dependencies import Policy, request_violations
from conveyor.jobs.model import Job, JobSpec, new_job_id
from conveyor.redis import RedisQueue

log = logging.getLogger(__name__)


def check_requests(specs: Sequence[JobSpec], *, bulk: bool) -> None:
    """In-call references (depends_on_requests): only in an all-or-nothing SubmitJobs, and
    each to an earlier request."""
    bad: list[FieldViolation] = []
    for index, spec in enumerate(specs):
        if not spec.depends_on_requests:
            continue
        prefix = f"requests[{index}]." if bulk else ""
        if not bulk:
            why = "names requests of a SubmitJobs call (without partial_success)"
            bad.append(FieldViolation(f"{prefix}depends_on_requests", why))
            continue
        bad += [
            FieldViolation(prefix + f, why)
            for f, why in request_violations(index, spec.depends_on_requests)
        ]
    if bad:
        raise InvalidArgument(bad)


def check_callback(spec: JobSpec) -> None:
    """A batch's callback depends on the batch's jobs, and on nothing else."""
    bad = []
    if spec.has_dependencies:
        why = "must be unset: the callback depends on the batch's jobs"
        bad.append(FieldViolation("on_complete.depends_on", why))
    if spec.keyed:
        bad.append(FieldViolation("on_complete.unique_for", "must be unset, as debounce"))
    if bad:
        raise InvalidArgument(bad)


class Workflows:
    def __init__(self, db: Database, queue: RedisQueue) -> None:
        self.store = DependencyStore(db)
        self.queue = queue

    async def insert(
        self, jobs: Sequence[Job], specs: Sequence[JobSpec], callback: Job | None = None
    ) -> tuple[list[Job], str]:
        """Commit jobs that depend on others (and a batch's `callback`, which depends on
        all of them whatever their outcome) in one transaction; per request, the job
        stored (the callback last), and the batch's id ("" without a callback)."""
        subs = [
            Submission(job, spec.depends_on_requests) for job, spec in zip(jobs, specs, strict=True)
        ]
        batch_id = ""
        if callback is not None:
            batch_id = new_job_id()
            callback.dependency_policy = int(Policy.RUN_ANYWAY)
            for sub in subs:
                sub.job.batch_id = batch_id
            callback.batch_id = batch_id
            subs.append(Submission(callback, tuple(range(len(subs)))))
        stored = await self.store.insert(subs, batch_id=batch_id)
        if callback is not None and stored[-1] is not callback:  # the call was made before
            batch_id = stored[-1].batch_id
        return stored, batch_id

    async def ended(self, job_ids: Sequence[str]) -> None:
        """Resolve the end of jobs this process ended (a cancel) for their dependents and
        enqueue the released. Best effort: the end is committed, and the reconciler
        resolves what this could not."""
        try:
            await self.queue.after_resolution(await self.store.resolve(job_ids))
        except (Unavailable, RedisError) as exc:
            log.warning("dependents of %s not resolved yet (%s): the reconciler will", job_ids, exc)

    async def blocked(self, job: Job) -> Blocked:
        """Why a job with pending dependencies waits."""
        waiting = await self.store.waiting_for(job.id)
        return Blocked.dependencies(job.dependencies_pending, len(job.depends_on), waiting)

    async def revive(self, job_id: str) -> list[Job]:
        return await self.store.revive(job_id)

    async def batch(self, batch_id: str, owner: str | None) -> BatchView:
        return await self.store.batch(batch_id, owner)
