"""PostgreSQL's hot path: one statement per group of jobs over one autocommit connection.

A submit batch is a single `INSERT … SELECT FROM jsonb_to_recordset(…)` and a batch of
attempt outcomes a single `UPDATE … FROM jsonb_to_recordset(…)`: one round trip and one
commit (fsync) however many jobs the batch holds. The rows travel as one JSON document, so
Python's C encoder does the work that per-value parameter adaptation would do in Python.
Both run in autocommit mode because a single statement is already atomic; only an
all-or-nothing bulk submit opens a transaction, so that an idempotency conflict can roll it
back. Callers batch (see `conveyor.batching`), so two connections serve the whole process.
Each use of one (a statement, or an all-or-nothing transaction with its statements) has it
to itself from start to end: psycopg alone serialises single statements but not
transactions, and a transaction interleaved with another caller's statements would nest on
the connection. A use that leaves the connection anywhere but idle (an error
mid-transaction) closes it, so the next use dials a clean one. Rows are inserted in
idempotency-key order, so that two batches inserting the same keys at once wait for each
other instead of deadlocking.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
import psycopg.errors
from sqlalchemy.engine import make_url

from conveyor import compact_json
from conveyor.db.rows import RolledBack, job_from_row, resolve_conflicts
from conveyor.errors import ConveyorError, outage
from conveyor.jobs.attempts import AttemptEnd
from conveyor.jobs.model import Job, retry_text

_INSERT = """
INSERT INTO jobs (id, owner, type, queue, state, priority, payload, attempt, max_attempts,
                  timeout_ms, progress, progress_message, error, idempotency_key,
                  request_hash, run_at, create_time, fence, retry, key_id, key_cap,
                  retention_ms, trace_parent, shard, labels, concurrency_key, rate_key)
SELECT id, owner, type, queue, state, priority, payload, 0, max_attempts, timeout_ms,
       0, '', '', idempotency_key, request_hash, run_at, create_time, 0, retry, key_id,
       key_cap, retention_ms, trace_parent, shard, coalesce(labels, '{}'),
       coalesce(concurrency_key, ''), coalesce(rate_key, '')
FROM jsonb_to_recordset(%s::jsonb)
  AS v(id text, owner text, type text, queue text, state smallint, priority smallint,
       payload jsonb, max_attempts smallint, timeout_ms bigint, idempotency_key text,
       request_hash text, run_at bigint, create_time bigint, retry jsonb, key_id text,
       key_cap integer, retention_ms bigint, trace_parent text, shard smallint,
       labels jsonb, concurrency_key text, rate_key text)
ON CONFLICT (owner, idempotency_key) DO NOTHING
RETURNING id
"""

# Batches this large first try COPY (see `BulkStatements.insert`); smaller ones, the
# group-committed single submits among them, keep the one statement (COPY takes two round
# trips, a latency a lone submit would feel).
COPY_FROM = 64

# Every column a new job sets, in the order `_copy_row` gives them.
_COPY = """
COPY jobs (id, owner, type, queue, state, priority, payload, attempt, max_attempts,
           timeout_ms, progress, progress_message, error, idempotency_key, request_hash,
           run_at, create_time, fence, retry, key_id, key_cap, retention_ms, trace_parent,
           shard, labels, concurrency_key, rate_key)
FROM STDIN
"""

_EXISTING = """
SELECT jobs.* FROM jobs
JOIN unnest(%s::text[], %s::text[]) AS k(owner, idempotency_key)
  ON jobs.owner = k.owner AND jobs.idempotency_key = k.idempotency_key
"""

# An outcome applies only while the job is unfinished, its fence is the one the attempt
# was handed, and no later attempt has been recorded: a worker that froze past its lease
# cannot overwrite what the attempt that replaced it wrote. The attempt's record is
# inserted by the same statement, for exactly the outcomes that applied, and so is the
# expiry of each job it finished (see conveyor.jobs.retention).
_OUTCOMES = """
WITH v AS (
  SELECT * FROM jsonb_to_recordset(%s::jsonb)
    AS v(id text, state smallint, attempt smallint, fence int, error text, progress float8,
         progress_message text, start_time bigint, finish_time bigint, run_at bigint,
         outcome smallint, worker_id text, ended bigint, traceback text, result jsonb,
         result_ref text)
), applied AS (
  UPDATE jobs SET state = v.state, attempt = v.attempt, error = v.error,
         progress = v.progress, progress_message = v.progress_message,
         start_time = v.start_time, finish_time = v.finish_time,
         run_at = COALESCE(v.run_at, jobs.run_at), result = v.result,
         result_ref = v.result_ref
  FROM v
  WHERE jobs.id = v.id AND jobs.fence = v.fence AND jobs.attempt < v.attempt
    AND jobs.state NOT IN (4, 6, 7)
  RETURNING jobs.id, jobs.retention_ms, jobs.has_dependents
), recorded AS (
  INSERT INTO job_attempts (job_id, attempt, outcome, worker_id, start_time, finish_time,
                            error, traceback)
  SELECT v.id, v.attempt, v.outcome, v.worker_id, v.start_time, v.ended, v.error, v.traceback
  FROM v JOIN applied ON applied.id = v.id
  ON CONFLICT DO NOTHING
), expiring AS (
  INSERT INTO job_expiry (job_id, expire_time)
  SELECT v.id, v.finish_time + applied.retention_ms
  FROM v JOIN applied ON applied.id = v.id
  WHERE v.finish_time IS NOT NULL AND applied.retention_ms IS NOT NULL
  ON CONFLICT (job_id) DO UPDATE SET expire_time = EXCLUDED.expire_time
)
SELECT id, has_dependents FROM applied
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


def _key_order(job: Job) -> tuple[str, str]:
    return (job.owner, job.idempotency_key or "")


# COPY's text format: tab-separated columns, one row a line, \N for NULL; a backslash, tab,
# newline or carriage return inside a value is escaped with a backslash.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_line(values: Sequence[str | None]) -> str:
    """One row of COPY text. Most rows hold nothing to escape: they are joined as they
    are and checked once (only the tabs the join put there, only the backslashes of the
    NULLs, no line break); the others are joined again with each value escaped."""
    line = "\t".join(["\\N" if v is None else v for v in values])
    if (
        line.count("\t") == len(values) - 1
        and line.count("\\") == values.count(None)
        and "\n" not in line
        and "\r" not in line
    ):
        return line + "\n"
    return "\t".join(["\\N" if v is None else v.translate(_COPY_ESCAPES) for v in values]) + "\n"


def _copy_row(j: Job) -> str:
    """A new job's row as `_COPY` takes it, in the text format (what psycopg's row
    formatting would send, built in one join per row)."""
    return _copy_line(
        (
            j.id, j.owner, j.type, j.queue, str(int(j.state)), str(j.priority),
            compact_json.dumps(j.payload) if j.payload else "{}", "0", str(j.max_attempts),
            str(j.timeout_ms), "0", "", "", j.idempotency_key, j.request_hash, str(j.run_at),
            str(j.create_time), "0", retry_text(j.retry), j.key_id, str(j.key_cap),
            None if j.retention_ms is None else str(j.retention_ms), j.trace_parent,
            str(j.shard), compact_json.dumps(j.labels) if j.labels else "{}",
            j.concurrency_key, j.rate_key,
        )
    )  # fmt: skip


def _records(rows: list[dict[str, Any]]) -> list[str]:
    """The statement parameter for `jsonb_to_recordset`: the rows as one JSON array."""
    return [compact_json.dumps(rows)]


class BulkStatements:
    """The hot-path statements over a few autocommit connections (`connections`, default
    2: one flush of submits can commit while the next is already sent)."""

    def __init__(self, url: str, *, connections: int = 2) -> None:
        self.dsn = psycopg_dsn(url)
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._open: set[psycopg.AsyncConnection[Any]] = set()
        self._slots = asyncio.Semaphore(connections)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
            self._open.discard(conn)
        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, connect_timeout=3)
        self._open.add(conn)
        return conn

    async def _discard(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._open.discard(conn)
        await conn.close()

    @contextlib.asynccontextmanager
    async def _cursor(
        self, *, transaction: bool = False
    ) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        """A cursor on a connection this use has to itself; a lost connection is Unavailable
        (and a fresh one is dialled on the next call)."""
        async with self._slots:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await self._connect()
                async with contextlib.AsyncExitStack() as stack:
                    if transaction:
                        await stack.enter_async_context(conn.transaction())
                    yield await stack.enter_async_context(conn.cursor())
            except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
                if conn is not None:
                    await self._discard(conn)
                    conn = None
                raise outage("database") from exc
            finally:
                if conn is not None:
                    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                    if conn.closed or not idle:
                        await self._discard(conn)
                    else:
                        self._idle.append(conn)

    async def insert(
        self, jobs: Sequence[Job], *, all_or_nothing: bool = False
    ) -> list[Job | ConveyorError]:
        """Insert jobs in one statement; per job, the job stored or why it was refused.

        A batch of `COPY_FROM` jobs or more is first copied in (COPY, about half of
        PostgreSQL's CPU for the same rows: no JSON to take apart, no speculative insert
        per row). COPY has no ON CONFLICT: a key already used fails the whole copy, which
        then leaves nothing behind, and the batch takes the statement below, which
        resolves every key as it always did. Keys are rarely reused (a retried call), so
        that costs a wasted copy now and then."""
        if len(jobs) >= COPY_FROM and await self._copied(jobs):
            return list(jobs)
        rows = [
            {
                "id": j.id, "owner": j.owner, "type": j.type, "queue": j.queue,
                "state": int(j.state), "priority": j.priority, "payload": j.payload,
                "max_attempts": j.max_attempts, "timeout_ms": j.timeout_ms,
                "idempotency_key": j.idempotency_key, "request_hash": j.request_hash,
                "run_at": j.run_at, "create_time": j.create_time, "retry": j.retry.to_doc(),
                "key_id": j.key_id, "key_cap": j.key_cap, "retention_ms": j.retention_ms,
                "trace_parent": j.trace_parent, "shard": j.shard,
                **({"labels": j.labels} if j.labels else {}),
                **({"concurrency_key": j.concurrency_key} if j.concurrency_key else {}),
                **({"rate_key": j.rate_key} if j.rate_key else {}),
            }
            for j in sorted(jobs, key=_key_order)
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

    async def _copied(self, jobs: Sequence[Job]) -> bool:
        """Copy the jobs in (one transaction: all of them, or, on a key already used,
        none); False on such a key. Rows go in key order, as the statement's do."""
        try:
            async with self._cursor() as cur, cur.copy(_COPY) as copy:
                await copy.write("".join([_copy_row(j) for j in sorted(jobs, key=_key_order)]))
        except psycopg.errors.UniqueViolation:
            return False
        return True

    async def write_outcomes(self, writes: Sequence[AttemptEnd]) -> dict[str, bool]:
        """Apply outcomes in one statement; the ids whose write applied (see _OUTCOMES),
        each with whether another job depends on it."""
        rows = [
            {
                "id": w.id, "state": int(w.state), "attempt": w.attempt, "fence": w.fence,
                "error": w.error, "progress": w.progress, "progress_message": w.progress_message,
                "start_time": w.start_time, "finish_time": w.finish_time, "run_at": w.run_at,
                "outcome": int(w.outcome), "worker_id": w.worker_id, "ended": w.ended,
                "traceback": w.traceback, "result": w.result, "result_ref": w.result_ref,
            }
            for w in writes
        ]  # fmt: skip
        async with self._cursor() as cur:
            await cur.execute(_OUTCOMES, _records(rows), prepare=True)
            return {row[0]: row[1] for row in await cur.fetchall()}

    async def close(self) -> None:
        conns, self._open, self._idle = list(self._open), set(), []
        for conn in conns:
            await conn.close()
