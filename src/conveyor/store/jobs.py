"""JobStore: every read and write of job rows. Writes are grouped: one transaction, one commit,
for many jobs, because the commit (fsync) is what a durable job system pays for."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from conveyor.errors import ConveyorError, FailedPrecondition, NotFound, Unavailable
from conveyor.jobs import TERMINAL_STATES, Job, JobState, now_ms
from conveyor.store.database import Database
from conveyor.store.models import JobRow
from conveyor.store.rows import (
    RolledBack,
    TerminalWrite,
    job_from_row,
    job_to_row,
    resolve_conflicts,
)

if TYPE_CHECKING:
    from conveyor.store.bulk import BulkStatements

_JOBS = cast(Table, JobRow.__table__)
_TERMINAL = [int(s) for s in TERMINAL_STATES]


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


class JobStore:
    """Job rows. On PostgreSQL the two hot paths (inserting submit batches, recording
    attempt outcomes) use `BulkStatements`; everything else, and SQLite, goes through
    SQLAlchemy Core."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._bulk: BulkStatements | None = None
        if not db.is_sqlite:
            from conveyor.store.bulk import BulkStatements

            self._bulk = BulkStatements(db.url)

    async def close(self) -> None:
        if self._bulk is not None:
            await self._bulk.close()

    def _insert(self) -> Any:
        dialect = sqlite if self.db.is_sqlite else postgresql
        return dialect.insert(_JOBS).on_conflict_do_nothing(
            index_elements=["owner", "idempotency_key"]
        )

    async def insert(
        self, jobs: Sequence[Job], *, all_or_nothing: bool = False
    ) -> list[Job | ConveyorError]:
        """Commit new jobs at once; per job, the job stored or why it was refused.

        A job whose (owner, idempotency_key) already exists is not inserted: it resolves to
        the existing job when the request fingerprint matches, else to AlreadyExists. With
        `all_or_nothing`, any AlreadyExists rolls the whole insert back.
        """
        if self._bulk is not None:
            return await self._bulk.insert(jobs, all_or_nothing=all_or_nothing)
        try:
            async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
                stmt = self._insert().returning(_JOBS.c.id)
                rows = [job_to_row(job) for job in jobs]
                inserted = {r.id for r in await conn.execute(stmt, rows)}
                existing = await self._existing(conn, [j for j in jobs if j.id not in inserted])
                results = resolve_conflicts(jobs, inserted, existing, all_or_nothing=all_or_nothing)
        except RolledBack as rollback:
            return rollback.results
        return results

    async def _existing(
        self, conn: AsyncConnection, jobs: Sequence[Job]
    ) -> dict[tuple[str, str], Job]:
        keys = {(j.owner, j.idempotency_key) for j in jobs if j.idempotency_key}
        if not keys:
            return {}
        stmt = select(_JOBS).where(tuple_(_JOBS.c.owner, _JOBS.c.idempotency_key).in_(keys))
        found = [job_from_row(r._mapping) for r in await conn.execute(stmt)]
        return {(j.owner, j.idempotency_key or ""): j for j in found}

    async def get(self, job_id: str) -> Job | None:
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            row = (await conn.execute(select(_JOBS).where(_JOBS.c.id == job_id))).first()
        return job_from_row(row._mapping) if row is not None else None

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
            return [job_from_row(r._mapping) for r in await conn.execute(stmt)]

    async def write_outcomes(self, writes: Sequence[TerminalWrite]) -> list[JobState | None]:
        """Record attempt outcomes at once; per write, the state the job's row now holds.

        A write applies only while the job is not terminal (then the answer is its own
        state): a job cancelled while its handler ran stays CANCELLED, and a late outcome
        gets the terminal state the row already had. None: no such row.
        """
        if self._bulk is not None:
            done = await self._bulk.write_outcomes(writes)
        else:
            done = await self._write_outcomes_one_by_one(writes)
        states = {w.id: w.state for w in writes if w.id in done}
        missed = [w.id for w in writes if w.id not in done]
        if missed:
            stmt = select(_JOBS.c.id, _JOBS.c.state).where(_JOBS.c.id.in_(missed))
            async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
                states.update({r.id: JobState(r.state) for r in await conn.execute(stmt)})
        return [states.get(w.id) for w in writes]

    async def _write_outcomes_one_by_one(self, writes: Sequence[TerminalWrite]) -> set[str]:
        """SQLite's path: one UPDATE per write, all in one transaction."""
        applied: set[str] = set()
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
                if (await conn.execute(stmt)).first() is not None:
                    applied.add(w.id)
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
                return job_from_row(row._mapping)
            current = (await conn.execute(select(_JOBS).where(_JOBS.c.id == job_id))).first()
        if current is None or current.owner != owner:
            raise NotFound(f"job {job_id} not found")
        raise FailedPrecondition(
            f"job {job_id} is already {JobState(current.state).label} and cannot be cancelled"
        )
