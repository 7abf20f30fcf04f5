"""PostgreSQL's hot path: one statement per group of jobs over one autocommit connection.

A submit batch is a single `INSERT … SELECT FROM jsonb_to_recordset(…)` and a batch of
attempt outcomes a single `UPDATE … FROM jsonb_to_recordset(…)`: one round trip and one
commit (fsync) however many jobs the batch holds. The rows travel as one JSON document, so
Python's C encoder does the work that per-value parameter adaptation would do in Python.
Both run in autocommit mode because a single statement is already atomic; only an
all-or-nothing bulk submit opens a transaction, so that an idempotency conflict can roll it
back. Callers batch (see `conveyor.batching`), so one connection serves the whole process;
psycopg serialises any concurrent use of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from conveyor.errors import ConveyorError, Unavailable
from conveyor.jobs import Job
from conveyor.store.rows import (
    RolledBack,
    TerminalWrite,
    job_from_row,
    resolve_conflicts,
)

_INSERT = """
INSERT INTO jobs (id, owner, type, queue, state, priority, payload, attempt, max_attempts,
                  timeout_ms, progress, progress_message, error, idempotency_key,
                  request_hash, run_at, create_time)
SELECT id, owner, type, queue, state, priority, payload, 0, max_attempts, timeout_ms,
       0, '', '', idempotency_key, request_hash, run_at, create_time
FROM jsonb_to_recordset(%s::jsonb)
  AS v(id text, owner text, type text, queue text, state smallint, priority smallint,
       payload jsonb, max_attempts smallint, timeout_ms bigint, idempotency_key text,
       request_hash text, run_at bigint, create_time bigint)
ON CONFLICT (owner, idempotency_key) DO NOTHING
RETURNING id
"""

_EXISTING = """
SELECT jobs.* FROM jobs
JOIN unnest(%s::text[], %s::text[]) AS k(owner, idempotency_key)
  ON jobs.owner = k.owner AND jobs.idempotency_key = k.idempotency_key
"""

_OUTCOMES = """
UPDATE jobs SET state = v.state, attempt = v.attempt, error = v.error, progress = v.progress,
       progress_message = v.progress_message, start_time = v.start_time,
       finish_time = v.finish_time, run_at = COALESCE(v.run_at, jobs.run_at)
FROM jsonb_to_recordset(%s::jsonb)
  AS v(id text, state smallint, attempt smallint, error text, progress float8,
       progress_message text, start_time bigint, finish_time bigint, run_at bigint)
WHERE jobs.id = v.id AND jobs.state NOT IN (4, 6, 7)
RETURNING jobs.id
"""


def psycopg_dsn(url: str) -> str:
    """A libpq URL from an SQLAlchemy one (`postgresql+psycopg://` → `postgresql://`)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows to per-column lists, the shape `unnest` takes."""
    columns: list[list[Any]] = [[] for _ in range(width)]
    for row in rows:
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return columns


def _records(rows: list[dict[str, Any]]) -> list[str]:
    """The statement parameter for `jsonb_to_recordset`: the rows as one JSON array."""
    return [json.dumps(rows, separators=(",", ":"))]


class BulkStatements:
    def __init__(self, url: str) -> None:
        self.dsn = psycopg_dsn(url)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        async with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(
                    self.dsn, autocommit=True, connect_timeout=3
                )
            return self._conn

    @contextlib.asynccontextmanager
    async def _cursor(
        self, *, transaction: bool = False
    ) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        """A cursor on the shared connection; a lost connection is Unavailable (and redialled
        on the next call)."""
        try:
            conn = await self._connection()
            async with contextlib.AsyncExitStack() as stack:
                if transaction:
                    await stack.enter_async_context(conn.transaction())
                yield await stack.enter_async_context(conn.cursor())
        except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
            await self.close()
            raise Unavailable("database unavailable") from exc

    async def insert(
        self, jobs: Sequence[Job], *, all_or_nothing: bool = False
    ) -> list[Job | ConveyorError]:
        """Insert jobs in one statement; per job, the job stored or why it was refused."""
        rows = [
            {
                "id": j.id, "owner": j.owner, "type": j.type, "queue": j.queue,
                "state": int(j.state), "priority": j.priority, "payload": j.payload,
                "max_attempts": j.max_attempts, "timeout_ms": j.timeout_ms,
                "idempotency_key": j.idempotency_key, "request_hash": j.request_hash,
                "run_at": j.run_at, "create_time": j.create_time,
            }
            for j in jobs
        ]  # fmt: skip
        try:
            async with self._cursor(transaction=all_or_nothing) as cur:
                await cur.execute(_INSERT, _records(rows), prepare=True)
                inserted = {row[0] for row in await cur.fetchall()}
                conflicted = [j for j in jobs if j.id not in inserted and j.idempotency_key]
                existing: dict[tuple[str, str], Job] = {}
                if conflicted:
                    keys = [(j.owner, j.idempotency_key) for j in conflicted]
                    await cur.execute(_EXISTING, _columns(keys, 2))
                    names = [d.name for d in cur.description or ()]
                    for row in await cur.fetchall():
                        prior = job_from_row(dict(zip(names, row, strict=True)))
                        existing[(prior.owner, prior.idempotency_key or "")] = prior
                results = resolve_conflicts(jobs, inserted, existing, all_or_nothing=all_or_nothing)
        except RolledBack as rollback:
            return rollback.results
        return results

    async def write_outcomes(self, writes: Sequence[TerminalWrite]) -> set[str]:
        """Apply outcomes in one statement; the ids whose job was not yet terminal."""
        rows = [
            {
                "id": w.id, "state": int(w.state), "attempt": w.attempt, "error": w.error,
                "progress": w.progress, "progress_message": w.progress_message,
                "start_time": w.start_time, "finish_time": w.finish_time, "run_at": w.run_at,
            }
            for w in writes
        ]  # fmt: skip
        async with self._cursor() as cur:
            await cur.execute(_OUTCOMES, _records(rows), prepare=True)
            return {row[0] for row in await cur.fetchall()}

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
