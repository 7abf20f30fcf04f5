"""PostgreSQL's hot path: one statement per group of jobs over one autocommit connection.

A submit batch is a single `INSERT … SELECT FROM jsonb_to_recordset(…)` and a batch of
attempt outcomes a single `UPDATE … FROM jsonb_to_recordset(…)`: one round trip and one
commit (fsync) however many jobs the batch holds. The rows travel as one JSON document, so
Python's C encoder does the work that per-value parameter adaptation would do in Python.
Both run in autocommit mode because a single statement is already atomic; only an
all-or-nothing bulk submit opens a transaction, so that an idempotency conflict can roll it
back. Callers batch (see `conveyor.batching`), so one connection serves the whole process.
Each use of it (a statement, or an all-or-nothing transaction with its statements) holds
`_busy` from start to end: psycopg alone serialises single statements but not transactions,
and a transaction interleaved with another caller's statements would nest on the connection.
A use that leaves the connection anywhere but idle (an error mid-transaction) closes it, so
the next use dials a clean one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from conveyor.attempts import AttemptEnd
from conveyor.errors import ConveyorError, Unavailable
from conveyor.jobs import Job
from conveyor.store.rows import RolledBack, job_from_row, resolve_conflicts

_INSERT = """
INSERT INTO jobs (id, owner, type, queue, state, priority, payload, attempt, max_attempts,
                  timeout_ms, progress, progress_message, error, idempotency_key,
                  request_hash, run_at, create_time, fence, retry)
SELECT id, owner, type, queue, state, priority, payload, 0, max_attempts, timeout_ms,
       0, '', '', idempotency_key, request_hash, run_at, create_time, 0, retry
FROM jsonb_to_recordset(%s::jsonb)
  AS v(id text, owner text, type text, queue text, state smallint, priority smallint,
       payload jsonb, max_attempts smallint, timeout_ms bigint, idempotency_key text,
       request_hash text, run_at bigint, create_time bigint, retry jsonb)
ON CONFLICT (owner, idempotency_key) DO NOTHING
RETURNING id
"""

_EXISTING = """
SELECT jobs.* FROM jobs
JOIN unnest(%s::text[], %s::text[]) AS k(owner, idempotency_key)
  ON jobs.owner = k.owner AND jobs.idempotency_key = k.idempotency_key
"""

# An outcome applies only while the job is unfinished, its fence is the one the attempt
# was handed, and no later attempt has been recorded: a worker that froze past its lease
# cannot overwrite what the attempt that replaced it wrote. The attempt's record is
# inserted by the same statement, for exactly the outcomes that applied.
_OUTCOMES = """
WITH v AS (
  SELECT * FROM jsonb_to_recordset(%s::jsonb)
    AS v(id text, state smallint, attempt smallint, fence int, error text, progress float8,
         progress_message text, start_time bigint, finish_time bigint, run_at bigint,
         outcome smallint, worker_id text, ended bigint, traceback text)
), applied AS (
  UPDATE jobs SET state = v.state, attempt = v.attempt, error = v.error,
         progress = v.progress, progress_message = v.progress_message,
         start_time = v.start_time, finish_time = v.finish_time,
         run_at = COALESCE(v.run_at, jobs.run_at)
  FROM v
  WHERE jobs.id = v.id AND jobs.fence = v.fence AND jobs.attempt < v.attempt
    AND jobs.state NOT IN (4, 6, 7)
  RETURNING jobs.id
), recorded AS (
  INSERT INTO job_attempts (job_id, attempt, outcome, worker_id, start_time, finish_time,
                            error, traceback)
  SELECT v.id, v.attempt, v.outcome, v.worker_id, v.start_time, v.ended, v.error, v.traceback
  FROM v JOIN applied ON applied.id = v.id
  ON CONFLICT DO NOTHING
)
SELECT id FROM applied
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
        self._busy = asyncio.Lock()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=3
            )
        return self._conn

    @contextlib.asynccontextmanager
    async def _cursor(
        self, *, transaction: bool = False
    ) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        """A cursor on the shared connection, which this use has to itself; a lost connection
        is Unavailable (and redialled on the next call)."""
        async with self._busy:
            try:
                conn = await self._connection()
                async with contextlib.AsyncExitStack() as stack:
                    if transaction:
                        await stack.enter_async_context(conn.transaction())
                    yield await stack.enter_async_context(conn.cursor())
            except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
                await self.close()
                raise Unavailable("database unavailable") from exc
            finally:
                if self._conn is not None and (
                    self._conn.closed
                    or self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
                ):
                    await self.close()

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
                "run_at": j.run_at, "create_time": j.create_time, "retry": j.retry.to_doc(),
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

    async def write_outcomes(self, writes: Sequence[AttemptEnd]) -> set[str]:
        """Apply outcomes in one statement; the ids whose write applied (see _OUTCOMES)."""
        rows = [
            {
                "id": w.id, "state": int(w.state), "attempt": w.attempt, "fence": w.fence,
                "error": w.error, "progress": w.progress, "progress_message": w.progress_message,
                "start_time": w.start_time, "finish_time": w.finish_time, "run_at": w.run_at,
                "outcome": int(w.outcome), "worker_id": w.worker_id, "ended": w.ended,
                "traceback": w.traceback,
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
