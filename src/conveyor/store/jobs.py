"""JobStore: every read and write of job rows. Writes are grouped: one transaction, one commit,
for many jobs, because the commit (fsync) is what a durable job system pays for."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from conveyor.errors import AlreadyExists, ConveyorError, FailedPrecondition, NotFound, Unavailable
from conveyor.jobs import TERMINAL_STATES, Job, JobState, now_ms
from conveyor.store.database import Database
from conveyor.store.models import JobRow

_JOBS = cast(Table, JobRow.__table__)
_TERMINAL = [int(s) for s in TERMINAL_STATES]


@dataclass(frozen=True, slots=True)
class TerminalWrite:
    """The outcome of an attempt, written once the handler has ended.

    `state` is SUCCEEDED, DEAD, CANCELLED or RETRYING (then `run_at` is the retry time).
    """

    id: str
    state: JobState
    attempt: int
    error: str
    progress: float
    progress_message: str
    start_time: int | None
    finish_time: int | None
    run_at: int | None = None


@contextlib.asynccontextmanager
async def unavailable_on_db_errors() -> AsyncIterator[None]:
    """A database that cannot be reached is UNAVAILABLE to clients, not an internal error."""
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        raise Unavailable("database unavailable") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise Unavailable("database unavailable") from exc
        raise
    except OSError as exc:
        raise Unavailable("database unavailable") from exc


class _RolledBack(Exception):
    def __init__(self, results: list[Job | ConveyorError]) -> None:
        self.results = results


def _resolve(
    job: Job, inserted: set[str], existing: dict[tuple[str, str], Job]
) -> Job | ConveyorError:
    if job.id in inserted:
        return job
    prior = existing.get((job.owner, job.idempotency_key or ""))
    if prior is None:  # pragma: no cover - only an idempotency conflict skips an insert
        return ConveyorError("job was not stored")
    if prior.request_hash == job.request_hash:
        return prior
    return AlreadyExists(f"idempotency key {job.idempotency_key!r} was used for another request")


def _job(row: Any) -> Job:
    values = dict(row._mapping)
    values["state"] = JobState(values["state"])
    return Job(**values)


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _insert(self) -> Any:
        dialect = sqlite if self.db.is_sqlite else postgresql
        return dialect.insert(_JOBS).on_conflict_do_nothing(
            index_elements=["owner", "idempotency_key"]
        )

    async def insert(
        self, jobs: Sequence[Job], *, all_or_nothing: bool = False
    ) -> list[Job | ConveyorError]:
        """Commit new jobs in one transaction; per job, the job stored or why it was refused.

        A job whose (owner, idempotency_key) already exists is not inserted: it resolves to
        the existing job when the request fingerprint matches, else to AlreadyExists. With
        `all_or_nothing`, any AlreadyExists rolls the whole transaction back.
        """
        rows = [_row(job) for job in jobs]
        try:
            async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
                stmt = self._insert().returning(_JOBS.c.id)
                inserted = {r.id for r in await conn.execute(stmt, rows)}
                existing = await self._existing(conn, [j for j in jobs if j.id not in inserted])
                results = [_resolve(job, inserted, existing) for job in jobs]
                if all_or_nothing and any(isinstance(r, ConveyorError) for r in results):
                    raise _RolledBack(results)
        except _RolledBack as rollback:
            return rollback.results
        return results

    async def _existing(
        self, conn: AsyncConnection, jobs: Sequence[Job]
    ) -> dict[tuple[str, str], Job]:
        keys = {(j.owner, j.idempotency_key) for j in jobs if j.idempotency_key}
        if not keys:
            return {}
        stmt = select(_JOBS).where(tuple_(_JOBS.c.owner, _JOBS.c.idempotency_key).in_(keys))
        found = [_job(r) for r in await conn.execute(stmt)]
        return {(j.owner, j.idempotency_key or ""): j for j in found}

    async def get(self, job_id: str) -> Job | None:
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            row = (await conn.execute(select(_JOBS).where(_JOBS.c.id == job_id))).first()
        return _job(row) if row is not None else None

    async def list_for_owner(
        self,
        owner: str,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        type: str | None = None,
        limit: int = 100,
        before_id: str | None = None,
    ) -> list[Job]:
        """An owner's jobs, newest first (UUIDv7 ids sort by time), after a keyset cursor."""
        stmt = select(_JOBS).where(_JOBS.c.owner == owner)
        if state is not None:
            stmt = stmt.where(_JOBS.c.state == int(state))
        if queue:
            stmt = stmt.where(_JOBS.c.queue == queue)
        if type:
            stmt = stmt.where(_JOBS.c.type == type)
        if before_id:
            stmt = stmt.where(_JOBS.c.id < before_id)
        stmt = stmt.order_by(_JOBS.c.id.desc()).limit(limit)
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            return [_job(r) for r in await conn.execute(stmt)]

    async def write_outcomes(self, writes: Sequence[TerminalWrite]) -> list[bool]:
        """Record attempt outcomes in one transaction; per write, whether it applied.

        A write applies only while the job is not terminal, so a job cancelled while its
        handler ran stays CANCELLED and the late outcome is dropped.
        """
        applied: list[bool] = []
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            for w in writes:
                values: dict[str, Any] = {
                    "state": int(w.state),
                    "attempt": w.attempt,
                    "error": w.error,
                    "progress": w.progress,
                    "progress_message": w.progress_message,
                    "start_time": w.start_time,
                    "finish_time": w.finish_time,
                }
                if w.run_at is not None:
                    values["run_at"] = w.run_at
                stmt = (
                    update(_JOBS)
                    .where(_JOBS.c.id == w.id, _JOBS.c.state.not_in(_TERMINAL))
                    .values(**values)
                    .returning(_JOBS.c.id)
                )
                applied.append((await conn.execute(stmt)).first() is not None)
        return applied

    async def cancel(self, job_id: str, owner: str) -> Job:
        """Mark a job CANCELLED if it has not ended; NOT_FOUND for another owner's job."""
        now = now_ms()
        stmt = (
            update(_JOBS)
            .where(
                _JOBS.c.id == job_id,
                _JOBS.c.owner == owner,
                _JOBS.c.state.not_in(_TERMINAL),
            )
            .values(state=int(JobState.CANCELLED), finish_time=now)
            .returning(*_JOBS.c)
        )
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            row = (await conn.execute(stmt)).first()
            if row is not None:
                return _job(row)
            current = (await conn.execute(select(_JOBS).where(_JOBS.c.id == job_id))).first()
        if current is None or current.owner != owner:
            raise NotFound(f"job {job_id} not found")
        raise FailedPrecondition(
            f"job {job_id} is already {JobState(current.state).label} and cannot be cancelled"
        )


def _row(job: Job) -> dict[str, Any]:
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
    }
