"""The database `csv.export` queries read (`CONVEYOR_EXPORT_DATABASE_URL`): its engines,
the guards every export session carries, and the check a worker runs before it starts.

Guards on every PostgreSQL export connection, none of them up to the query's own text:
- the session starts read-only and bounded (`-c default_transaction_read_only=on
  -c statement_timeout=1h` in the connection's startup options), and each job's
  transaction is `READ ONLY, REPEATABLE READ` with `statement_timeout` set to the job's
  own timeout, and `conveyor.owner` set to the job's owner (`set_config(..., true)` with
  bound parameters, so both end with the transaction);
- statements go through psycopg's server-side cursors only (the count too), which always
  use the extended protocol: one statement per message, so a `;` cannot start another;
- a watchdog cancels the running statement (`PQcancel`) at the job's deadline or on
  cancellation, so a slow query cannot outlive the attempt across many FETCHes.

Start-up check (`check_export_database`, called by the worker before it serves): the
worker refuses to start, with a message naming CONVEYOR_EXPORT_DATABASE_URL, when that URL
- is not a PostgreSQL or SQLite URL;
- names Conveyor's own database (same host, port and database in the URLs, or the same
  server and database as the server reports them: postmaster start time, port, name);
- logs in as a role that is a superuser, can create roles or bypasses row-level security;
- belongs to a predefined role that writes or reads server files, runs server programs or
  signals other sessions (`pg_write_all_data`, `pg_read_server_files`, ...);
- can write: it owns (or is a member of the owner of) any table, view or sequence, or
  holds INSERT, UPDATE, DELETE or TRUNCATE on one outside the system catalogs (column
  grants too), or UPDATE on a sequence. (The catalogs are left out of the grant check:
  every role may UPDATE `pg_settings`, which is `set_config` by another name, and an
  export query can neither run an UPDATE nor call `set_config`.);
- cannot be reached (the check cannot vouch for a role it cannot see: fail closed).
For SQLite (dev mode) the URL must not be the main database's file; its connections are
`PRAGMA query_only`, and sqlite3 runs one statement per call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from conveyor.config import ConfigurationError
from conveyor.db.database import sync_url

SETTING = "CONVEYOR_EXPORT_DATABASE_URL"
# The session's own cap on any statement, whatever a job's timeout says.
SESSION_TIMEOUT_MS = 3_600_000
OWNER_SETTING = "conveyor.owner"
# How long the start-up check waits for each database before it gives up (and refuses).
CHECK_CONNECT_SECONDS = 10
# How often the watchdog looks at the job's cancellation flag.
WATCH_SECONDS = 0.2

_ROLE_ATTRIBUTES = (
    ("rolsuper", "is a superuser"),
    ("rolcreaterole", "can create roles"),
    ("rolbypassrls", "bypasses row-level security"),
)
_PREDEFINED = (
    "pg_write_all_data",
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_execute_server_program",
    "pg_signal_backend",
)
_ATTRIBUTES_SQL = (
    "SELECT rolsuper, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = current_user"
)
_PREDEFINED_SQL = (
    "SELECT rolname FROM pg_roles WHERE rolname = ANY(%(names)s)"
    " AND pg_has_role(current_user, oid, 'MEMBER') ORDER BY rolname"
)
_WRITABLE_SQL = """
SELECT format('%%I.%%I', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  AND (pg_has_role(current_user, c.relowner, 'MEMBER')
       OR (n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND ((c.relkind <> 'S'
                 AND (has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')
                      OR has_any_column_privilege(c.oid, 'INSERT, UPDATE')))
                OR (c.relkind = 'S' AND has_sequence_privilege(c.oid, 'UPDATE')))))
ORDER BY 1 LIMIT 3
"""
_WHERE_SQL = "SELECT pg_postmaster_start_time(), current_setting('port'), current_database()"

_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def export_engine(url: str) -> Engine:
    """The engine for an export database, made once per URL and kept for the process.

    Jobs check a connection out of its small pool instead of each opening (and tearing
    down) a pool of their own; a deployment uses one or a few URLs, so the dict stays tiny.
    `dispose_engines` closes them (tests, shutdown).
    """
    sync = sync_url(url)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(sync)
        if engine is None:
            engine = _make_engine(sync)
            _ENGINES[sync] = engine
        return engine


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url)
        event.listen(engine, "connect", _sqlite_read_only)
        return engine
    return create_engine(
        url,
        pool_size=2,
        max_overflow=8,
        pool_pre_ping=True,
        connect_args={"options": session_options(make_url(url))},
    )


def session_options(url: URL) -> str:
    """libpq startup options: every session read-only and capped in time from its first
    statement (any `options` already in the URL are kept, ours come last and win)."""
    ours = f"-c default_transaction_read_only=on -c statement_timeout={SESSION_TIMEOUT_MS}"
    given = url.query.get("options")
    given = given if isinstance(given, str) else " ".join(given or ())
    return f"{given} {ours}".strip()


def _sqlite_read_only(dbapi_conn: Any, _record: Any) -> None:
    """Every connection of an export engine refuses writes, for as long as it lives."""
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA query_only=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def dispose_engines() -> None:
    """Close every cached export engine (their pooled connections)."""
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        engine.dispose()


def begin_job(conn: Connection, seconds: float, owner: str) -> None:
    """Start this job's transaction: read-only, one snapshot for the count and the rows,
    the job's statement timeout, and `conveyor.owner` for row-level security (PostgreSQL;
    SQLite connections are read-only from the moment they connect)."""
    if conn.dialect.name != "postgresql":
        return
    conn.exec_driver_sql("SET TRANSACTION READ ONLY, ISOLATION LEVEL REPEATABLE READ")
    conn.exec_driver_sql(
        "SELECT set_config('statement_timeout', %(ms)s, true),"
        " set_config(%(setting)s, %(owner)s, true)",
        {"ms": str(max(1, int(seconds * 1000))), "setting": OWNER_SETTING, "owner": owner},
    )


@contextmanager
def watchdog(conn: Connection, seconds: float, cancelled: Any) -> Iterator[threading.Event]:
    """Cancel the connection's running statement once `seconds` pass or `cancelled()` is
    true (PostgreSQL); the event yielded is set when the watchdog fired."""
    fired = threading.Event()
    done = threading.Event()
    raw = conn.connection.dbapi_connection
    if conn.dialect.name != "postgresql" or raw is None:
        yield fired
        return

    deadline = time.monotonic() + seconds

    def watch() -> None:
        while not done.wait(WATCH_SECONDS):
            if time.monotonic() >= deadline or cancelled():
                fired.set()
                raw.cancel_safe()
                return

    thread = threading.Thread(target=watch, name="csv.export-watchdog", daemon=True)
    thread.start()
    try:
        yield fired
    finally:
        done.set()
        thread.join()


# -- the start-up check -------------------------------------------------------------------


def check_export_database(export_url: str, main_url: str) -> None:
    """Refuse (ConfigurationError naming CONVEYOR_EXPORT_DATABASE_URL, never its value) an
    export database that could be written, or that is Conveyor's own; see the module
    docstring for the rules. An empty URL is fine: `query` exports are then refused."""
    if not export_url:
        return
    try:
        export = make_url(export_url)
    except ArgumentError:
        raise ConfigurationError(f"{SETTING}: not a database URL") from None
    main = _parsed(main_url)
    backend = export.get_backend_name()
    if backend == "sqlite":
        if main is not None and main.get_backend_name() == "sqlite" and _same_file(export, main):
            raise ConfigurationError(f"{SETTING}: names Conveyor's own database (the main one)")
        return
    if backend != "postgresql":
        raise ConfigurationError(f"{SETTING}: must be a PostgreSQL (or SQLite) URL")
    if main is not None and main.get_backend_name() == "postgresql" and _same_place(export, main):
        raise ConfigurationError(f"{SETTING}: names Conveyor's own database (the main one)")
    problem = _role_problem(export, main)
    if problem:
        raise ConfigurationError(f"{SETTING}: {problem}; use a read-only role (see csv.export)")


def _parsed(url: str) -> URL | None:
    try:
        return make_url(url) if url else None
    except ArgumentError:
        return None


def _same_file(a: URL, b: URL) -> bool:
    if not a.database or not b.database or ":memory:" in (a.database, b.database):
        return False
    return Path(a.database).resolve() == Path(b.database).resolve()


def _same_place(a: URL, b: URL) -> bool:
    def place(url: URL) -> tuple[str, int, str]:
        return ((url.host or "localhost").lower(), url.port or 5432, url.database or "")

    return place(a) == place(b)


def _role_problem(export: URL, main: URL | None) -> str:
    """What is wrong with the export role (empty: nothing), as seen from its own session."""
    try:
        with _checking(export) as conn:
            where = conn.exec_driver_sql(_WHERE_SQL, {}).one()
            problem = _role_findings(conn)
        if not problem and main is not None and main.get_backend_name() == "postgresql":
            with _checking(main) as conn:
                if conn.exec_driver_sql(_WHERE_SQL, {}).one() == where:
                    return "names Conveyor's own database (the main one)"
    except SQLAlchemyError as exc:
        why = type(getattr(exc, "orig", None) or exc).__name__
        return f"could not check its role ({why}); the worker does not start unchecked"
    return problem


@contextmanager
def _checking(url: URL) -> Iterator[Connection]:
    engine = create_engine(
        url.set(drivername="postgresql+psycopg"),
        poolclass=NullPool,
        connect_args={"connect_timeout": CHECK_CONNECT_SECONDS},
    )
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def _role_findings(conn: Connection) -> str:
    attributes = conn.exec_driver_sql(_ATTRIBUTES_SQL, {}).one()
    for value, (_, says) in zip(attributes, _ROLE_ATTRIBUTES, strict=True):
        if value:
            return f"its role {says}"
    member = conn.exec_driver_sql(_PREDEFINED_SQL, {"names": list(_PREDEFINED)}).first()
    if member is not None:
        return f"its role is a member of {member[0]}"
    writable = [row[0] for row in conn.exec_driver_sql(_WRITABLE_SQL, {})]
    if writable:
        return f"its role can write (owns or may change {', '.join(writable)})"
    return ""
