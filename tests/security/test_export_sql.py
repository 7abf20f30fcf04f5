"""`csv.export` queries cannot escape their read-only session (issue 18, item 1).

Against a real PostgreSQL and the real API and worker processes: the issue's exploit (a
dollar-quoted string that fooled the old textual check, then `COMMIT; UPDATE api_keys`) is
refused at submit and changes nothing; the worker refuses it again without the API; even
with both checks bypassed, one statement per message and a read-only session stop it; a
slow query ends at the job's timeout, and a cancel ends it at once; `conveyor.owner`
restricts rows per owner under row-level security; and a worker refuses to start when
CONVEYOR_EXPORT_DATABASE_URL names Conveyor's own database or a role that can write.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from conveyor.builtins import csv_export as csv_module
from conveyor.builtins.csv_export import CsvExportPayload
from conveyor.builtins.export_database import (
    check_export_database,
    dispose_engines,
    export_engine,
)
from conveyor.builtins.export_sql import ExportStatement
from conveyor.client import AsyncClient
from conveyor.config import ConfigurationError, Settings
from conveyor.db import migrate
from conveyor.errors import InvalidArgument
from conveyor.handlers import PermanentError, SyncJobContext
from conveyor.handlers.registry import HandlerSpec
from conveyor.testing import RunFixture, run_handler
from tests.processes import Service, Stack, fresh_database, login_role, read_only_role

# The issue's payload, verbatim: it made alice an admin.
EXPLOIT = (
    "SELECT $$'$$ AS a) AS z; COMMIT; UPDATE api_keys SET role='admin' WHERE owner='alice'; "
    "SELECT * FROM (SELECT 1 AS b --'"
)
# The same trick running a sleep outside the job's transaction (and its timeout).
SLEEPER = "SELECT $$'$$ AS a) AS z; COMMIT; SELECT pg_sleep(45); SELECT * FROM (SELECT 1 AS b --'"
SETTING = "CONVEYOR_EXPORT_DATABASE_URL"


@pytest.fixture(autouse=True)
def _close_export_engines() -> Iterator[None]:
    yield
    dispose_engines()


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _role_of(url: str, owner: str) -> str:
    with psycopg.connect(_dsn(url)) as conn:
        row = conn.execute("SELECT role FROM api_keys WHERE owner = %s", [owner]).fetchone()
    assert row is not None, f"no key of {owner}"
    return str(row[0])


@pytest.fixture(scope="module")
def victim_url(database_url: str) -> str:
    """A migrated Conveyor database (its own) where alice holds a `user` key."""
    url = fresh_database(database_url, "conveyor_export_victim")
    migrate(url)
    with psycopg.connect(_dsn(url)) as conn:
        conn.execute(
            "INSERT INTO api_keys (id, key_hash, owner, role, create_time)"
            " VALUES ('k-alice', repeat('a', 64), 'alice', 'user', 0)"
        )
    return url


@pytest.fixture(scope="module")
def writer_url(victim_url: str) -> str:
    """A role that may read and change `api_keys` in the victim database: the issue's
    configuration (a worker no longer starts with it; here it is used in-process)."""
    return login_role(
        victim_url,
        "conveyor_export_writer",
        "GRANT USAGE ON SCHEMA public TO {role}",
        "GRANT SELECT, UPDATE ON api_keys TO {role}",
    )


def _runtime_spec(body: Callable[[SyncJobContext], Any], timeout: float = 30) -> HandlerSpec:
    """A handler running `body(ctx)` with a real context (no payload model: nothing is
    checked on the way in, as if the API had been bypassed)."""
    return HandlerSpec(
        "test.export_runtime", lambda _payload, ctx: body(ctx), False, timeout_seconds=timeout
    )


def _unchecked(query: str) -> CsvExportPayload:
    """A payload that skipped validation (what a worker gets if the API never checked)."""
    return CsvExportPayload.model_construct(query=query, params={})


# -- what the parser accepts -----------------------------------------------------------------

REFUSED = [
    EXPLOIT,
    SLEEPER,
    "COMMIT; SELECT pg_sleep(45)",
    "SELECT 1; SELECT 2",
    "SELECT E'\\'' ; DELETE FROM t; --'",
    "UPDATE api_keys SET role = 'admin'",
    "WITH gone AS (DELETE FROM t RETURNING id) SELECT * FROM gone",
    "WITH m AS (MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE) SELECT 1",
    "SELECT * INTO copy FROM t",
    "SELECT * FROM t FOR UPDATE",
    "SELECT 1 UNION ALL (SELECT 2 FOR SHARE)",
    "SELECT pg_catalog.set_config('conveyor.owner', 'bob', false)",
    "SELECT * FROM t WHERE (SELECT query_to_xml('SELECT 1', true, false, '')) IS NULL",
    "SELECT * FROM dblink('dbname=conveyor', 'SELECT 1') AS x(a int)",
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT pg_advisory_lock(1)",
    "SELECT $1",
    "SELECT 1 /* unterminated",
]


@pytest.mark.parametrize("query", REFUSED)
def test_the_parser_refuses(query: str) -> None:
    """Guards the submit check: each is INVALID_ARGUMENT on payload.query."""
    with pytest.raises(InvalidArgument) as refused:
        run_handler("csv.export", {"query": query})
    assert [v.field for v in refused.value.violations] == ["payload.query"]


def test_what_the_parser_accepts_runs_as_written(export_reader_url: str) -> None:
    """Guards the placeholders: `%`, `::` casts, array slices, and `:x` inside strings,
    quoted names and comments reach PostgreSQL unchanged; only code `:name` is bound."""
    query = """
        -- a leading comment with :nothing in it
        WITH v AS (VALUES (7, 'a%b:c'))
        SELECT column1 % 4 AS m, column2 LIKE 'a%%' AS l, ':x' AS s, '12'::int AS c,
               (ARRAY[1, 2, 3])[2:3] AS sl, $$:y$$ AS d, :n AS n, 1 AS ":z"
        FROM v /* :w */;
    """
    run = run_handler(
        "csv.export",
        {"query": query, "params": {"n": "bound"}},
        settings=Settings(export_database_url=export_reader_url),
    )
    assert run.store.read(run.artifacts["export.csv"].key) == (
        b'm,l,s,c,sl,d,n,:z\r\n3,true,:x,12,"[2,3]",:y,bound,1\r\n'
    )


# -- the exploit ---------------------------------------------------------------------------


async def test_the_issue_exploit_is_refused_at_submit(stack: Stack, alice: AsyncClient) -> None:
    """Guards the submit-time check: the issue's dollar-quoted payload (and its pg_sleep
    variant) reach the real API as a user and are refused with INVALID_ARGUMENT naming
    payload.query; alice's key is still a user key."""
    for query in (EXPLOIT, SLEEPER):
        with pytest.raises(InvalidArgument) as refused:
            await alice.submit("csv.export", {"query": query})
        assert [v.field for v in refused.value.violations] == ["payload.query"]
    assert _role_of(stack.env["CONVEYOR_DATABASE_URL"], "alice") == "user"


def test_the_exploit_through_the_handler_changes_nothing(victim_url: str, writer_url: str) -> None:
    """Guards the issue's scenario in-process: csv.export run on the exploit with an
    export role that could write fails (here at the payload check) and alice stays a
    user (the old code committed the UPDATE, then failed on a syntax error)."""
    settings = Settings(export_database_url=writer_url)
    with pytest.raises((InvalidArgument, PermanentError)):
        run_handler("csv.export", {"query": EXPLOIT}, settings=settings)
    assert _role_of(victim_url, "alice") == "user"


def test_the_worker_refuses_the_exploit_without_the_api(victim_url: str, writer_url: str) -> None:
    """Guards the run-time check: handed the exploit unvalidated, with a role that could
    write, the worker's query path fails permanently and alice stays a user."""
    engine = export_engine(writer_url)
    spec = _runtime_spec(lambda ctx: csv_module.run_query(engine, ctx, _unchecked(EXPLOIT)))
    with pytest.raises(PermanentError, match="query: is not valid SQL"):
        run_handler(spec, {})
    assert _role_of(victim_url, "alice") == "user"


def test_one_statement_per_message_without_any_check(victim_url: str, writer_url: str) -> None:
    """Guards the protocol: with the parser bypassed too (the exploit's text sent as the
    statement), the count and the rows go as one extended-protocol statement each, so
    PostgreSQL refuses the several commands and nothing runs."""
    engine = export_engine(writer_url)
    statement = ExportStatement(body=EXPLOIT, placeholders=())

    def body(ctx: SyncJobContext) -> Any:
        with engine.connect() as conn:
            return csv_module.stream_rows(conn, ctx, _unchecked(EXPLOIT), statement, 30, {})

    with pytest.raises(DBAPIError, match="cannot insert multiple commands"):
        run_handler(_runtime_spec(body), {})
    assert _role_of(victim_url, "alice") == "user"


def test_the_session_itself_is_read_only(victim_url: str, writer_url: str) -> None:
    """Guards the session: even a simple-protocol `COMMIT; UPDATE` on an export
    connection (no transaction of the job's to escape) is refused as read-only."""
    with (
        pytest.raises(DBAPIError, match="read-only transaction"),
        export_engine(writer_url).connect() as conn,
    ):
        conn.exec_driver_sql("COMMIT; UPDATE api_keys SET role = 'admin' WHERE owner = 'alice'")
    assert _role_of(victim_url, "alice") == "user"


def test_sqlite_runs_one_statement_per_call(tmp_path: Path) -> None:
    """Guards dev mode: on a SQLite export database, a multi-statement text (checks
    bypassed) is refused by sqlite3 itself, and the connection is query_only besides."""
    path = tmp_path / "export.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE api_keys (owner TEXT, role TEXT)")
        db.execute("INSERT INTO api_keys VALUES ('alice', 'user')")
    db.close()
    engine = export_engine(f"sqlite:///{path}")
    # Balanced for the count's wrapping, as the issue's payload was.
    text = "SELECT 1) AS z; UPDATE api_keys SET role = 'admin'; SELECT * FROM (SELECT 1"
    statement = ExportStatement(body=text, placeholders=())

    def body(ctx: SyncJobContext) -> Any:
        with engine.connect() as conn:
            return csv_module.stream_rows(conn, ctx, _unchecked(text), statement, 30, {})

    with pytest.raises(DBAPIError, match="one statement at a time"):
        run_handler(_runtime_spec(body), {})
    with pytest.raises(DBAPIError, match="readonly"), engine.connect() as conn:
        conn.exec_driver_sql("UPDATE api_keys SET role = 'admin'")
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT role FROM api_keys").fetchall() == [("user",)]
    db.close()


# -- time ----------------------------------------------------------------------------------


def _sleepers(database_url: str) -> int:
    with psycopg.connect(_dsn(database_url)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
            " AND query LIKE '%pg_sleep(45)%' AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0


def test_a_slow_query_ends_at_the_job_timeout(database_url: str, export_reader_url: str) -> None:
    """Guards the timeout: `SELECT pg_sleep(45)` in a job with a 1.5 s timeout fails
    within a few seconds, and no session is left sleeping."""
    settings = Settings(export_database_url=export_reader_url)
    spec = HandlerSpec(
        "test.export_slow", csv_module.csv_export, False, 1.5, payload_model=CsvExportPayload
    )
    started = time.monotonic()
    with pytest.raises(DBAPIError, match=r"statement timeout|canceling statement"):
        run_handler(spec, {"query": "SELECT pg_sleep(45)"}, settings=settings)
    assert time.monotonic() - started < 5
    assert _sleepers(database_url) == 0


def test_a_cancel_ends_a_running_query(database_url: str, export_reader_url: str) -> None:
    """Guards the watchdog: CancelJob during a long statement (here 0.5 s into a 45 s
    sleep, job timeout one hour) ends it within a second: the handler returns None."""
    settings = Settings(export_database_url=export_reader_url)

    def cancelling(payload: CsvExportPayload, ctx: SyncJobContext) -> Any:
        threading.Timer(0.5, ctx.cancel).start()
        return csv_module.csv_export(payload, ctx)

    spec = HandlerSpec("test.export_cancel", cancelling, False, payload_model=CsvExportPayload)
    started = time.monotonic()
    run = run_handler(spec, {"query": "SELECT pg_sleep(45)"}, settings=settings)
    assert run.result is None and run.artifacts == {}
    assert time.monotonic() - started < 2
    assert _sleepers(database_url) == 0


# -- per-owner rows ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def owned_table(export_database_url: str, export_reader_url: str) -> str:
    """`owned_rows` with rows of alice and bob, readable by the export role only where
    `owner = current_setting('conveyor.owner', true)` (the documented policy)."""
    with psycopg.connect(_dsn(export_database_url)) as conn:
        conn.execute("DROP TABLE IF EXISTS owned_rows")
        conn.execute("CREATE TABLE owned_rows (owner text, n int)")
        conn.execute("INSERT INTO owned_rows VALUES ('alice', 1), ('bob', 2), ('alice', 3)")
        conn.execute("GRANT SELECT ON owned_rows TO conveyor_export_reader")
        conn.execute("ALTER TABLE owned_rows ENABLE ROW LEVEL SECURITY")
        conn.execute(
            "CREATE POLICY by_owner ON owned_rows FOR SELECT TO conveyor_export_reader"
            " USING (owner = current_setting('conveyor.owner', true))"
        )
    return "owned_rows"


def test_row_level_security_keyed_on_conveyor_owner(
    export_reader_url: str, owned_table: str
) -> None:
    """Guards per-owner views: each owner's export sees its own rows only, and a query
    cannot set `conveyor.owner` itself (directly or through SQL text it runs)."""
    settings = Settings(export_database_url=export_reader_url)
    query = {"query": f"SELECT owner, n FROM {owned_table} ORDER BY n"}
    for owner, expected in (("alice", b"alice,1\r\nalice,3\r\n"), ("bob", b"bob,2\r\n")):
        run = run_handler("csv.export", query, settings=settings, fixture=RunFixture(owner=owner))
        assert run.store.read(run.artifacts["export.csv"].key) == b"owner,n\r\n" + expected
    forged = (
        f"SELECT set_config('conveyor.owner', 'bob', true), * FROM {owned_table}",
        f"SELECT query_to_xml('SELECT * FROM {owned_table}', true, false, '')",
    )
    for text in forged:
        with pytest.raises(InvalidArgument):
            run_handler("csv.export", {"query": text}, settings=settings)


# -- the start-up check --------------------------------------------------------------------


def test_a_sqlite_export_database_must_not_be_the_main_one(tmp_path: Path) -> None:
    """Guards dev mode's start-up check: the main SQLite file (however spelled) is
    refused, naming the setting; another file passes."""
    main = f"sqlite:///{tmp_path / 'conveyor.db'}"
    same = f"sqlite:///{tmp_path / 'x' / '..' / 'conveyor.db'}"
    with pytest.raises(ConfigurationError, match=f"{SETTING}: names Conveyor's own database"):
        check_export_database(same, main)
    check_export_database(f"sqlite:///{tmp_path / 'export.db'}", main)


def _refused(stack: Stack, export_url: str) -> str:
    """Start a worker with `export_url`; assert it exits 2 within 30 s; its output."""
    service: Service = stack.spawn("worker", env={**stack.worker_env(), SETTING: export_url})
    try:
        code = service.proc.wait(30)
    finally:
        if service.proc.poll() is None:
            service.kill()
        stack.services.remove(service)
    output = service.log.read_text()
    assert code == 2, output
    return output


def _respelled(url: str) -> str:
    """The same server under another host name (localhost for 127.0.0.1)."""
    return make_url(url).set(host="localhost").render_as_string(hide_password=False)


BAD_CONFIGURATIONS: dict[str, tuple[Callable[[Stack, str], str], str]] = {
    "the main database itself": (
        lambda stack, _export: stack.env["CONVEYOR_DATABASE_URL"],
        "names Conveyor's own database",
    ),
    "a read-only role on the main database, spelled differently": (
        lambda stack, _export: _respelled(
            read_only_role(stack.env["CONVEYOR_DATABASE_URL"], "conveyor_main_reader")
        ),
        "names Conveyor's own database",
    ),
    "a superuser": (lambda _stack, export: export, "its role is a superuser"),
    "a role that can write a table": (
        lambda _stack, export: login_role(
            export,
            "conveyor_export_inserter",
            "CREATE TABLE IF NOT EXISTS inbox (id int)",
            "GRANT INSERT ON inbox TO {role}",
        ),
        "its role can write (owns or may change public.inbox)",
    ),
    "a role that bypasses row-level security": (
        lambda _stack, export: login_role(
            export, "conveyor_export_bypass", "ALTER ROLE {role} BYPASSRLS"
        ),
        "its role bypasses row-level security",
    ),
    "a member of pg_write_all_data": (
        lambda _stack, export: login_role(
            export, "conveyor_export_all_writer", "GRANT pg_write_all_data TO {role}"
        ),
        "its role is a member of pg_write_all_data",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGURATIONS))
def test_a_worker_refuses_a_bad_export_database(
    stack: Stack, export_database_url: str, case: str
) -> None:
    """Guards the start-up check: the real worker exits 2 with a message naming
    CONVEYOR_EXPORT_DATABASE_URL and the reason, and never prints the URL's password."""
    make, reason = BAD_CONFIGURATIONS[case]
    url = make(stack, export_database_url)
    output = _refused(stack, url)
    assert f"{SETTING}: {reason}" in output, output
    password = make_url(url).password
    assert not password or str(password) not in output


def test_a_worker_starts_with_a_read_only_role(stack: Stack, export_reader_url: str) -> None:
    """Guards the other side: a role that may only read another database passes."""
    service = stack.start("worker", env={**stack.worker_env(), SETTING: export_reader_url})
    assert service.stop() == 0
