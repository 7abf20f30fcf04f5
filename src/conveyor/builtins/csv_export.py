"""`csv.export`: write rows as a CSV artifact, from the payload or from a read-only query.

Payload (exactly one of `rows` and `query`):
- `rows`: the rows themselves, either objects (`[{"id": 1, "name": "a"}, ...]`) or lists
  (`[[1, "a"], ...]`, which need `columns`). At most 100,000, and within the payload limit:
  large exports should use `query`.
- `query`: one SQL `SELECT` (or `WITH ... SELECT`), at most 100,000 characters, run against
  the worker's `CONVEYOR_EXPORT_DATABASE_URL`, with `params` bound as `:name` placeholders.
- `columns`: the header names. For object rows (and query rows) they also choose and order
  the columns (a missing key is null); without them object rows use every key, in the order
  first seen, and a query its own columns. List rows must have exactly this many values.
- `header` (default true), `delimiter` (one character, default ","), `null` (the text
  written for null, default ""), `name` (the artifact's name, default "export.csv").

Values: null -> `null`; true/false; datetimes, dates and times in ISO 8601; decimals exactly
(`str`); bytes as base64; objects and lists as compact JSON; anything else as `str()`. The
file is UTF-8, RFC 4180 (CRLF line ends, fields quoted only when they must be).

Result: `{"artifact": name, "rows": n, "bytes": size, "sha256": hex}`. Progress is by rows:
`"<n> of <total> rows"`, where a query's total comes from `SELECT count(*)` over it first
(so a query runs twice; that is the price of a percentage).

Memory stays bounded whatever the row count: a query's rows come through a server-side
cursor (`stream_results`, 1,000 at a time), the CSV is made in ~64 KiB chunks, and the
artifact is uploaded in parts as the chunks come.

Safety of `query` (defence in depth; each layer holds without the others):
- **Parsed, not guessed.** PostgreSQL's own parser (`pglast`) must read the query as one
  plain SELECT: no second statement, no data-modifying WITH, no SELECT INTO, no FOR
  UPDATE, no function that runs SQL text or changes the session (`set_config`,
  `query_to_xml`, `dblink`, ...; see `conveyor.builtins.export_sql`). Checked at submit
  (INVALID_ARGUMENT on `payload.query`) and again by the worker before it sends the text.
  SQLite exports (dev mode) are checked with the same grammar, so write them in the
  common subset.
- **One statement per message.** The count and the rows both go through psycopg's
  server-side cursors, which always use the extended protocol with bound parameters, so a
  `;` in the text can never start a second statement (sqlite3 runs one per call too).
- **The session, not the query, is read-only and bounded.** Export connections start
  with `default_transaction_read_only=on` and a one-hour `statement_timeout`; each job's
  transaction is `READ ONLY, REPEATABLE READ` (one snapshot for the count and the rows)
  with `statement_timeout` = the job's timeout, and a watchdog cancels the statement at
  the job's deadline or on CancelJob. SQLite connections are `PRAGMA query_only=ON`.
- **The role.** The worker refuses to start when CONVEYOR_EXPORT_DATABASE_URL names
  Conveyor's own database, or a role that is a superuser, can create roles, bypasses
  row-level security, can write any table it sees, or belongs to `pg_write_all_data`,
  `pg_read_server_files` and the like (`conveyor.builtins.export_database`).

Per-owner views: before the query runs, the worker sets `conveyor.owner` to the job's
owner for the transaction (`set_config('conveyor.owner', <owner>, true)`, a bound
parameter; queries cannot call `set_config` to change it). An operator who exports
shared tables per owner grants the export role SELECT and adds row-level security:

    CREATE ROLE conveyor_export LOGIN PASSWORD '...';   -- not a superuser, no BYPASSRLS
    GRANT SELECT ON orders TO conveyor_export;
    ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
    CREATE POLICY orders_by_owner ON orders FOR SELECT TO conveyor_export
        USING (owner = current_setting('conveyor.owner', true));

(`true`: missing_ok, so a session without the setting sees no rows instead of an error.)
Tables without a policy are readable by every owner's exports alike: grant the export
role only what every user may read, or views and tables guarded this way.

Retries: a bad query (refused by the worker's own check, syntax, unknown table or column,
a write refused by the read-only transaction, a missing bind parameter), an unknown
column in `columns`, or an unset export database are permanent failures (PermanentError:
the job goes straight to DEAD); a lost connection, a timeout or a store error is retried
with backoff. A retried attempt writes
the artifact again from the start (same name: it replaces whatever a failed one left).

Cancellation: the handler checks `ctx.cancelled` every 1,000 rows, and the watchdog
cancels a statement still running; once set, it stops, stores nothing (the unfinished
upload is aborted) and returns None.
"""

from __future__ import annotations

import base64
import csv
import datetime
import decimal
import io
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationInfo, field_validator
from sqlalchemy import Connection, CursorResult, Engine
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    StatementError,
)

from conveyor.builtins.export_database import begin_job, export_engine, watchdog
from conveyor.builtins.export_sql import ExportStatement, RefusedQuery, export_statement
from conveyor.handlers.context import SyncJobContext
from conveyor.handlers.registry import PermanentError, handler
from conveyor.jobs.artifacts import Artifact, ArtifactName

TIMEOUT_SECONDS = 3600
MAX_ROWS = 100_000
MAX_QUERY_CHARS = 100_000
MAX_COLUMNS = 1000
MAX_PARAMS = 100
CHUNK_BYTES = 64 << 10
# Rows per server-side cursor fetch, and how often progress and cancellation are checked.
BATCH_ROWS = 1000

_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# SQLite errors that another attempt may not meet (anything else is the query's fault).
_SQLITE_TRANSIENT = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_NOMEM")
# PostgreSQL SQLSTATEs that running the same query again cannot fix: syntax and access
# rules (42), data (22), unsupported features (0A), a write in a read-only transaction.
_PG_PERMANENT = ("42", "22", "0A", "25006")


class CsvExportPayload(BaseModel):
    """The payload of `csv.export` (see the module docstring). Fields are declared in the
    order their cross-checks need: `rows` sees `columns`, `query` sees `rows`."""

    model_config = ConfigDict(extra="forbid")

    columns: list[str] | None = Field(None, min_length=1, max_length=MAX_COLUMNS)
    rows: list[Any] | None = Field(None, max_length=MAX_ROWS)
    query: str | None = Field(None, validate_default=True)
    params: dict[str, JsonValue] = Field(default_factory=dict, max_length=MAX_PARAMS)
    header: bool = True
    name: ArtifactName = "export.csv"
    delimiter: str = Field(",", min_length=1, max_length=1)
    null: str = Field("", max_length=64)

    @field_validator("columns")
    @classmethod
    def _distinct_columns(cls, columns: list[str] | None) -> list[str] | None:
        if columns is None:
            return None
        for index, column in enumerate(columns):
            if not 1 <= len(column) <= 256:
                raise ValueError(f"columns[{index}] must be 1 to 256 characters")
        if len(set(columns)) != len(columns):
            raise ValueError("column names must be distinct")
        return columns

    @field_validator("rows")
    @classmethod
    def _row_shapes(cls, rows: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
        """All objects, or all lists as wide as `columns` (a mix has no one header)."""
        if rows is None or "columns" not in info.data:  # columns itself was refused
            return rows
        columns: list[str] | None = info.data["columns"]
        if rows and isinstance(rows[0], list) and columns is None:
            raise ValueError("list rows need `columns` (the header and the width)")
        for index, row in enumerate(rows):
            if isinstance(rows[0], dict) and not isinstance(row, dict):
                raise ValueError(f"rows[{index}] must be an object, like rows[0]")
            if isinstance(rows[0], list) and not isinstance(row, list):
                raise ValueError(f"rows[{index}] must be a list, like rows[0]")
            if not isinstance(row, dict | list):
                raise ValueError(f"rows[{index}] must be an object or a list")
            if isinstance(row, list) and columns is not None and len(row) != len(columns):
                raise ValueError(f"rows[{index}] has {len(row)} values for {len(columns)} columns")
        return rows

    @field_validator("query")
    @classmethod
    def _one_source(cls, query: str | None, info: ValidationInfo) -> str | None:
        has_rows = info.data.get("rows") is not None
        if query is None and not has_rows and "rows" in info.data:
            raise ValueError("give `rows` or `query`")
        if query is None:
            return None
        if has_rows:
            raise ValueError("give `rows` or `query`, not both")
        if len(query) > MAX_QUERY_CHARS:
            raise ValueError(f"must be at most {MAX_QUERY_CHARS} characters")
        return single_select(query)

    @field_validator("params")
    @classmethod
    def _param_names(cls, params: dict[str, JsonValue], info: ValidationInfo) -> dict[str, Any]:
        if params and info.data.get("query") is None:
            raise ValueError("`params` go with `query`")
        for name in params:
            if not _PARAM_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a parameter name (letters, digits, _)")
        return params

    @field_validator("delimiter")
    @classmethod
    def _usable_delimiter(cls, delimiter: str) -> str:
        if delimiter in '"\r\n':
            raise ValueError("cannot be a quote or a line break")
        return delimiter


# -- the query check ----------------------------------------------------------------------


def single_select(query: str) -> str:
    """The query without trailing `;` and comments, if PostgreSQL's parser reads it as one
    plain SELECT (see `conveyor.builtins.export_sql`); ValueError saying why otherwise."""
    return export_statement(query).body


# -- values -------------------------------------------------------------------------------


def cell(value: Any, null: str) -> str:
    """One value as CSV text (see the module docstring for the rules)."""
    if value is None:
        return null
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, datetime.date | datetime.time):  # datetime is a date too
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return str(value)


class _Stopped(Exception):
    """Raised out of the chunk generator when the job is cancelled; an Exception (not a
    BaseException) so the store aborts the unfinished upload on its way out."""


class _Rows:
    """Counts rows; every BATCH_ROWS it reports progress and honours cancellation."""

    def __init__(self, ctx: SyncJobContext, total: int) -> None:
        self._ctx = ctx
        self.total = total
        self.count = 0

    def add(self) -> None:
        self.count += 1
        if self.count % BATCH_ROWS == 0:
            if self._ctx.cancelled:
                raise _Stopped
            self.report()

    def report(self) -> None:
        total = max(self.total, self.count)  # the data may have grown since the count
        percent = 100.0 * self.count / total if total else 100.0
        self._ctx.progress(percent, f"{self.count} of {total} rows")


def csv_chunks(
    header: Sequence[str] | None,
    rows: Iterable[Sequence[Any]],
    payload: CsvExportPayload,
    counter: _Rows,
) -> Iterator[bytes]:
    """The CSV as UTF-8 chunks of about CHUNK_BYTES: only one chunk is held at a time."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=payload.delimiter, lineterminator="\r\n")
    if header is not None:
        writer.writerow(header)
    for row in rows:
        writer.writerow([cell(value, payload.null) for value in row])
        counter.add()
        if buffer.tell() >= CHUNK_BYTES:
            yield _drain(buffer)
    if buffer.tell():
        yield _drain(buffer)


def _drain(buffer: io.StringIO) -> bytes:
    data = buffer.getvalue().encode()
    buffer.seek(0)
    buffer.truncate()
    return data


def _write(
    ctx: SyncJobContext,
    payload: CsvExportPayload,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    total: int,
) -> tuple[Artifact, int]:
    counter = _Rows(ctx, total)
    counter.report()
    chunks = csv_chunks(columns if payload.header else None, rows, payload, counter)
    artifact = ctx.artifacts.put(payload.name, chunks, content_type="text/csv")
    return artifact, counter.count


# -- rows from the payload ----------------------------------------------------------------


def _inline(payload: CsvExportPayload) -> tuple[list[str], Iterable[Sequence[Any]]]:
    """The header and rows of a payload that carries its rows."""
    rows = payload.rows or []
    if rows and isinstance(rows[0], list):
        return list(payload.columns or []), rows
    columns = payload.columns or list(dict.fromkeys(key for row in rows for key in row))
    return columns, ([row.get(column) for column in columns] for row in rows)


# -- rows from a query --------------------------------------------------------------------


def _query_columns(result: CursorResult[Any], columns: list[str] | None) -> list[int]:
    """Positions of the chosen columns in the query's rows; an unknown name is permanent."""
    names = list(result.keys())
    if columns is None:
        return list(range(len(names)))
    missing = [c for c in columns if c not in names]
    if missing:
        raise PermanentError(f"columns: the query has no column {missing[0]!r}; it has {names}")
    return [names.index(c) for c in columns]


def _export_query(ctx: SyncJobContext, payload: CsvExportPayload) -> tuple[Artifact, int]:
    url = ctx.settings.export_database_url if ctx.settings is not None else ""
    if not url:
        raise PermanentError(
            "csv.export with `query` needs CONVEYOR_EXPORT_DATABASE_URL, unset on this worker"
        )
    try:
        engine = export_engine(url)
    except ArgumentError:
        raise PermanentError("CONVEYOR_EXPORT_DATABASE_URL is not a database URL") from None
    return run_query(engine, ctx, payload)


def run_query(
    engine: Engine, ctx: SyncJobContext, payload: CsvExportPayload
) -> tuple[Artifact, int]:
    """Check the query again (the worker does not trust that the API did), then count and
    stream its rows inside the job's guarded transaction (`begin_job`, `watchdog`)."""
    try:
        statement = export_statement(payload.query or "")
    except RefusedQuery as exc:
        raise PermanentError(f"query: {exc}") from None
    missing = sorted(statement.names - payload.params.keys())
    if missing:
        raise PermanentError(f"the query failed: no value for bind parameter {missing[0]!r}")
    seconds = ctx.timeout_seconds or TIMEOUT_SECONDS
    params = dict(payload.params)
    try:
        with engine.connect() as conn, watchdog(conn, seconds, lambda: ctx.cancelled) as fired:
            try:
                return stream_rows(conn, ctx, payload, statement, seconds, params)
            except OperationalError:
                if fired.is_set() and ctx.cancelled:
                    raise _Stopped from None
                raise
    except StatementError as exc:
        if _permanent(exc):
            why = str(exc.orig or exc).strip().splitlines()[0][:500]
            raise PermanentError(f"the query failed: {why}") from exc
        raise


def stream_rows(
    conn: Connection,
    ctx: SyncJobContext,
    payload: CsvExportPayload,
    statement: ExportStatement,
    seconds: float,
    params: dict[str, Any],
) -> tuple[Artifact, int]:
    """Count, then stream, through server-side cursors (psycopg's always use the extended
    protocol: one statement per message). No check of its own: `run_query` checks the
    statement first (tests call this directly to show the protocol holds without it)."""
    sqlite = conn.dialect.name == "sqlite"
    begin_job(conn, seconds, ctx.owner)
    streaming = conn.execution_options(stream_results=True, yield_per=BATCH_ROWS)
    count = statement.sqlite(counting=True) if sqlite else statement.psycopg(counting=True)
    total = int(streaming.exec_driver_sql(count, params).scalar_one())
    result = streaming.exec_driver_sql(
        statement.sqlite() if sqlite else statement.psycopg(), params
    )
    picked = _query_columns(result, payload.columns)
    names = list(result.keys())
    rows = (tuple(row[i] for i in picked) for row in result)
    return _write(ctx, payload, [names[i] for i in picked], rows, total)


def _permanent(exc: StatementError) -> bool:
    """Whether running the same query again must fail the same way."""
    if not isinstance(exc, DBAPIError):
        return True  # refused before reaching the database (a missing bind parameter)
    if exc.connection_invalidated:
        return False
    if isinstance(exc, ProgrammingError | DataError | IntegrityError | NotSupportedError):
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate.startswith(_PG_PERMANENT)
    sqlite_name = getattr(exc.orig, "sqlite_errorname", None)
    if isinstance(sqlite_name, str):
        return not sqlite_name.startswith(_SQLITE_TRANSIENT)
    return False


# A query is a user's text: its run is isolated (killed on cancel and timeout, its memory
# capped), whatever the database lets it do. Rows stream, so 512 MiB is ample.
@handler(
    "csv.export",
    payload=CsvExportPayload,
    timeout=TIMEOUT_SECONDS,
    isolation="process",
    memory_limit_mb=512,
)
def csv_export(payload: CsvExportPayload, ctx: SyncJobContext) -> dict[str, Any] | None:
    """Write the rows (or the query's rows) as one CSV artifact; None if cancelled."""
    try:
        if payload.query is None:
            columns, rows = _inline(payload)
            artifact, count = _write(ctx, payload, columns, rows, len(payload.rows or []))
        else:
            artifact, count = _export_query(ctx, payload)
    except _Stopped:
        ctx.log.info("csv.export cancelled; nothing stored")
        return None
    ctx.progress(100.0, f"{count} of {count} rows")
    return {
        "artifact": artifact.name,
        "rows": count,
        "bytes": artifact.size,
        "sha256": artifact.sha256,
    }
