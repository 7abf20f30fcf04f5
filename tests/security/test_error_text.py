"""What a failed job tells its owner about the server: the job's `error` and the attempts'
`traceback` name files relative to their package (never the server's absolute paths) and
keep a database error's message without its SQL statement or parameters (issue 18, item 6).

Handlers here fail against the real PostgreSQL, run by the real worker engine; the last
test goes through the real api and worker processes with the built-in `csv.export`."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from conveyor.client import AsyncClient
from conveyor.client import types as sdk
from conveyor.config import Settings
from conveyor.db import JobStore, sync_url
from conveyor.handlers import PermanentError, Registry, SyncJobContext
from conveyor.jobs.model import FALLBACK_RETRY, JobDefaults, JobSpec, JobState, now_ms
from conveyor.redis import RedisQueue
from tests.builders import running_worker
from tests.e2e.test_jobs import watch_all

# Text that appears only in the failing statements and their parameters.
SQL_MARKER = "sql_text_marker"
PARAM_MARKER = "param-value-marker"
# An absolute path in a frame line or an "(at …)" suffix.
ABSOLUTE = re.compile(r'File "/|\(at /|site-packages|\.venv')


def _query(settings: Settings) -> None:
    engine = create_engine(sync_url(settings.database_url))
    try:
        with engine.connect() as conn:
            conn.execute(
                text(f"SELECT '{SQL_MARKER}' AS a FROM no_such_table WHERE b = :p"),
                {"p": PARAM_MARKER},
            )
    finally:
        engine.dispose()


def _failing_handlers(settings: Settings) -> Registry:
    registry = Registry()

    def raw(payload: dict[str, Any], ctx: SyncJobContext) -> None:
        _query(settings)

    def wrapped(payload: dict[str, Any], ctx: SyncJobContext) -> None:
        try:
            _query(settings)
        except Exception as exc:
            raise PermanentError(f"could not read: {type(exc).__name__}") from exc

    registry.register("leaky.raw", raw, max_attempts=1)
    registry.register("leaky.wrapped", wrapped, max_attempts=1)
    return registry


@pytest.fixture
async def parts(settings: Settings, clean: None) -> AsyncIterator[tuple[JobStore, RedisQueue]]:
    async with running_worker(settings, _failing_handlers(settings)) as (_, store, queue):
        yield store, queue


async def _dead(store: JobStore, queue: RedisQueue, job_type: str) -> tuple[str, str]:
    """Run one job of `job_type` to DEAD; its error and its attempt's traceback."""
    job = JobSpec(type=job_type).new_job(
        "alice", defaults=JobDefaults(1, 10_000, FALLBACK_RETRY), now=now_ms()
    )
    await store.insert([job])
    await queue.enqueue([job])
    async with asyncio.timeout(10):
        while True:
            stored = await store.get(job.id)
            if stored is not None and stored.state is JobState.DEAD:
                break
            await asyncio.sleep(0.05)
    [attempt] = await store.attempts(job.id)
    return stored.error, attempt.traceback


def _assert_no_leak(*texts: str) -> None:
    for shown in texts:
        assert not ABSOLUTE.search(shown), f"an absolute server path is shown: {shown}"
        assert SQL_MARKER not in shown, f"the SQL statement is shown: {shown}"
        assert PARAM_MARKER not in shown, f"a SQL parameter is shown: {shown}"
        assert "[SQL" not in shown and "sqlalche.me" not in shown, shown


async def test_a_database_error_keeps_the_drivers_message_without_sql_or_paths(
    parts: tuple[JobStore, RedisQueue],
) -> None:
    error, tb = await _dead(*parts, "leaky.raw")
    _assert_no_leak(error, tb)
    assert error.startswith("ProgrammingError: (psycopg.errors.UndefinedTable) relation")
    assert '"no_such_table" does not exist' in error, "the driver's message is kept"
    # The innermost frame is the driver's, shown within its package (psycopg/cursor.py).
    assert re.search(r"\(at (psycopg|sqlalchemy)/[\w/]+\.py:\d+\)$", error), error
    assert 'File "sqlalchemy/engine/base.py", line' in tb, "frames relative to their package"
    assert "psycopg.errors.UndefinedTable: relation" in tb


async def test_a_chained_database_error_does_not_leak_through_the_cause(
    parts: tuple[JobStore, RedisQueue],
) -> None:
    error, tb = await _dead(*parts, "leaky.wrapped")
    _assert_no_leak(error, tb)
    assert re.fullmatch(
        r"PermanentError: could not read: ProgrammingError "
        r"\(at tests/security/test_error_text\.py:\d+\)",
        error,
    ), error
    assert "The above exception was the direct cause of the following exception" in tb
    assert "sqlalchemy.exc.ProgrammingError: (psycopg.errors.UndefinedTable)" in tb


async def test_a_failed_csv_export_shows_its_owner_no_paths_and_no_sql(
    alice: AsyncClient,
) -> None:
    """Through the real processes: the built-in handler's error names its file within the
    conveyor package, and the query's text is not in the error or the traceback."""
    query = f"SELECT '{SQL_MARKER}' AS a FROM no_such_table"
    job = await alice.submit("csv.export", {"query": query, "name": "x.csv"})
    done = (await watch_all(alice, job.id))[-1].job
    assert done.state == sdk.JobState.DEAD
    attempts = await alice.attempts(job.id)
    _assert_no_leak(done.error, *(a.traceback for a in attempts))
    assert "conveyor/builtins/csv_export.py:" in done.error, done.error
    assert '"no_such_table" does not exist' in done.error
