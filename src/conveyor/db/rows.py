"""Job rows as both store paths (SQLAlchemy and PostgreSQL bulk statements) read and write
them, and how an insert that hit an existing idempotency key resolves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.errors import AlreadyExists, ConveyorError
from conveyor.jobs.model import Job, JobState
from conveyor.jobs.retry import RetryPolicy


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What became of one attempt's outcome write: applied, or refused and the job's row as
    it stands (None: no such job). `has_dependents`: the write applied and other jobs
    depend on this one (conveyor.jobs.dependencies), so an end must be resolved."""

    applied: bool
    current: Job | None = None
    has_dependents: bool = False


class RolledBack(Exception):
    """Raised inside an all-or-nothing insert to roll it back, carrying the per-job results."""

    def __init__(self, results: list[Job | ConveyorError]) -> None:
        self.results = results


def resolve_conflicts(
    jobs: Sequence[Job],
    inserted: set[str],
    existing: Mapping[tuple[str, str], Job],
    *,
    all_or_nothing: bool,
) -> list[Job | ConveyorError]:
    """Per job: itself if inserted, else the prior job with its key or AlreadyExists.

    With `all_or_nothing`, any refusal raises RolledBack (inside the transaction, which
    then rolls back) carrying these results.
    """
    results = [_resolve(job, inserted, existing) for job in jobs]
    if all_or_nothing and any(isinstance(r, ConveyorError) for r in results):
        raise RolledBack(results)
    return results


def _resolve(
    job: Job, inserted: set[str], existing: Mapping[tuple[str, str], Job]
) -> Job | ConveyorError:
    if job.id in inserted:
        return job
    prior = existing.get((job.owner, job.idempotency_key or ""))
    if prior is None:  # pragma: no cover - only an idempotency conflict skips an insert
        return ConveyorError("job was not stored")
    if prior.request_hash == job.request_hash:
        return prior
    return key_used(job)


def key_used(job: Job) -> AlreadyExists:
    """The refusal of a request whose idempotency key names another request's job."""
    return AlreadyExists(f"idempotency key {job.idempotency_key!r} was used for another request")


def job_from_row(values: Mapping[Any, Any]) -> Job:
    """A Job from a `jobs` row's columns."""
    fields = dict(values)
    fields["state"] = JobState(fields["state"])
    fields.pop("result", None)  # read on its own (JobStore.result): it may be large
    fields.pop("result_ref", None)
    retry = fields.pop("retry", None)
    fields["labels"] = fields.get("labels") or {}  # a row from before labels: none
    fields.pop("has_dependents", None)  # the database's own (conveyor.db.dependencies)
    fields["depends_on"] = fields.get("depends_on") or []
    fields["batch_id"] = fields.get("batch_id") or ""
    job = Job(**fields)
    if retry:
        job.retry = RetryPolicy.from_doc(retry)
    return job


def job_to_row(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "owner": job.owner,
        "type": job.type,
        "queue": job.queue,
        "state": int(job.state),
        "priority": job.priority,
        "payload": job.payload,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "timeout_ms": job.timeout_ms,
        "progress": job.progress,
        "progress_message": job.progress_message,
        "error": job.error,
        "idempotency_key": job.idempotency_key,
        "request_hash": job.request_hash,
        "run_at": job.run_at,
        "create_time": job.create_time,
        "start_time": job.start_time,
        "finish_time": job.finish_time,
        "fence": job.fence,
        "retry": job.retry.to_doc(),
        "key_id": job.key_id,
        "key_cap": job.key_cap,
        "retention_ms": job.retention_ms,
        "trace_parent": job.trace_parent,
        "shard": job.shard,
        "labels": job.labels,
        "key_until": job.key_until,
        "debounce_ms": job.debounce_ms,
        "concurrency_key": job.concurrency_key,
        "rate_key": job.rate_key,
        "depends_on": job.depends_on or None,
        "dependency_policy": job.dependency_policy,
        "dependencies_pending": job.dependencies_pending,
        "batch_id": job.batch_id or None,
    }
