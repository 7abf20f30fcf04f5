"""The `csv.export` and `files.bundle` built-ins, run through `conveyor.testing.run_handler`
against real stores (moto S3, a folder) and real databases (PostgreSQL, SQLite): the exact
bytes they write, progress, the read-only guard around export queries, zips that every
reader accepts, errors on either side of the bundle's pipe ending the other, cancellation,
and payloads refused at submit with per-field paths."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import random
import sqlite3
import subprocess
import threading
import uuid
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from conveyor.builtins import bundle as bundle_module
from conveyor.builtins import csv_export as csv_module
from conveyor.builtins.export_database import dispose_engines, export_engine
from conveyor.config import Settings
from conveyor.db import sync_url
from conveyor.errors import InvalidArgument
from conveyor.handlers import PermanentError, SyncJobContext
from conveyor.handlers.registry import HandlerSpec
from conveyor.jobs.artifacts import artifact_key, owner_file_key
from conveyor.objects import PART_SIZE, ObjectStore
from conveyor.objects.local import LocalStore
from conveyor.objects.s3 import S3Store
from conveyor.testing import HandlerRun, RunFixture, run_handler

PG_ROWS = 20_000
T = TypeVar("T")


@pytest.fixture(autouse=True)
def _close_export_engines() -> Iterator[None]:
    yield
    dispose_engines()


@pytest.fixture
def pg_table(export_database_url: str, export_reader_url: str) -> Iterator[str]:
    """A table of PG_ROWS rows of every kind of value, with a unique name, in the export
    database (which `export_reader_url` reads); dropped after."""
    table = f"export_{uuid.uuid4().hex[:12]}"
    engine = create_engine(sync_url(export_database_url))
    with engine.begin() as conn:
        conn.execute(
            text(
                f"CREATE TABLE {table} (id int PRIMARY KEY, name text, amount numeric(12, 2),"
                " created timestamp, data jsonb, blob bytea, note text, flag boolean)"
            )
        )
        conn.execute(
            text(
                f"INSERT INTO {table} SELECT g, 'name ' || g, g * 1.25, "
                "timestamp '2026-01-01' + g * interval '1 second', jsonb_build_object('g', g), "
                "int4send(g), CASE WHEN g % 10 = 0 THEN NULL ELSE 'n,' || g END, g % 2 = 0 "
                "FROM generate_series(1, :n) AS g"
            ),
            {"n": PG_ROWS},
        )
        conn.execute(text(f"CREATE SEQUENCE {table}_seq"))
    yield table
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {table}"))
        conn.execute(text(f"DROP SEQUENCE {table}_seq"))
    engine.dispose()


def _pg_scalar(database_url: str, sql: str) -> Any:
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar_one()
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file with 2,500 rows in table `t`."""
    path = tmp_path / "export.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL, note TEXT)")
        db.executemany(
            "INSERT INTO t VALUES (?, ?, ?, ?)",
            [(i, f"row {i}", i / 4, None if i % 5 == 0 else "x") for i in range(1, 2501)],
        )
    db.close()
    return f"sqlite:///{path}"


def _stored(run: HandlerRun, name: str) -> bytes:
    return run.store.read(run.artifacts[name].key)


def _assert_progress(run: HandlerRun, last_message: str) -> None:
    percents = [percent for percent, _ in run.progress]
    assert percents == sorted(percents), "progress went backwards"
    assert run.progress[-1] == (100.0, last_message)


def _local(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "objects", base_url="http://127.0.0.1:0")


def _put(store: ObjectStore, key: str, data: bytes) -> None:
    store.put(key, io.BytesIO(data), length=len(data))


def _with_hook(
    name: str, model: type[BaseModel], fn: Callable[..., Any], hook: Callable[..., None]
) -> HandlerSpec:
    """A spec running `fn`, with `hook(ctx, percent, message)` called after each progress
    report (from the handler's own threads): how a test cancels, or deletes a source, at
    a known point of a run."""

    def run(payload: Any, ctx: SyncJobContext) -> Any:
        report = ctx.progress

        def progress(percent: float, message: str = "") -> None:
            report(percent, message)
            hook(ctx, percent, message)

        ctx.progress = progress  # type: ignore[method-assign]
        return fn(payload, ctx)

    return HandlerSpec(name, run, is_async=False, payload_model=model)


def _cancel_at(percent_at: float) -> Callable[[SyncJobContext, float, str], None]:
    def hook(ctx: SyncJobContext, percent: float, message: str) -> None:
        if percent >= percent_at:
            ctx.cancel()

    return hook


# -- csv.export from rows ------------------------------------------------------------------


def test_object_rows_become_exact_csv_bytes() -> None:
    """Object rows: columns in first-seen order, missing keys and nulls as `null`, RFC 4180
    quoting, and each kind of value in its documented form."""
    rows = [
        {"id": 1, "name": "a, b", "ok": True, "tags": ["x", "y"]},
        {"id": 2, "name": 'say "hi"', "note": None, "nested": {"k": 1.5}},
        {"id": 3, "name": "two\nlines", "ok": False},
    ]
    run = run_handler("csv.export", {"rows": rows, "null": "NULL"})
    assert _stored(run, "export.csv") == (
        b"id,name,ok,tags,note,nested\r\n"
        b'1,"a, b",true,"[""x"",""y""]",NULL,NULL\r\n'
        b'2,"say ""hi""",NULL,NULL,NULL,"{""k"":1.5}"\r\n'
        b'3,"two\nlines",false,NULL,NULL,NULL\r\n'
    )
    data = _stored(run, "export.csv")
    assert run.result == {
        "artifact": "export.csv",
        "rows": 3,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert run.artifacts["export.csv"].content_type == "text/csv"
    _assert_progress(run, "3 of 3 rows")


def test_columns_choose_and_order_object_rows_and_name_list_rows() -> None:
    """`columns` selects and orders object keys; list rows take them as the header; the
    delimiter, `header: false` and the artifact name are honoured; empty rows give a header
    alone."""
    objects = [{"a": 1, "b": "x;y", "c": 3}, {"c": 6, "a": 4}]
    run = run_handler(
        "csv.export",
        {"rows": objects, "columns": ["c", "a"], "delimiter": ";", "name": "picked.csv"},
    )
    assert _stored(run, "picked.csv") == b"c;a\r\n3;1\r\n6;4\r\n"

    lists = [[1, "é", None], [2.5, "", "1,2"]]
    run = run_handler("csv.export", {"rows": lists, "columns": ["n", "s", "t"]})
    assert _stored(run, "export.csv") == 'n,s,t\r\n1,é,\r\n2.5,,"1,2"\r\n'.encode()
    run = run_handler("csv.export", {"rows": lists, "columns": ["n", "s", "t"], "header": False})
    assert _stored(run, "export.csv") == '1,é,\r\n2.5,,"1,2"\r\n'.encode()

    run = run_handler("csv.export", {"rows": [], "columns": ["a", "b"]})
    assert (_stored(run, "export.csv"), run.result["rows"]) == (b"a,b\r\n", 0)
    assert run.progress[-1][0] == 100.0


# -- csv.export from a query ---------------------------------------------------------------


def test_query_on_postgresql_streams_every_row(export_reader_url: str, pg_table: str) -> None:
    """20,000 rows through a server-side cursor: count, header, the value formats of
    PostgreSQL's types, progress by rows up to 100, and a sha256 of the stored bytes."""
    query = f"""
        -- every row; the trailing semicolon and this comment are allowed
        SELECT id, name, amount, created, data, blob, note, flag
        FROM {pg_table} WHERE id <= :last ORDER BY id;
    """
    run = run_handler(
        "csv.export",
        {"query": query, "params": {"last": PG_ROWS}},
        settings=Settings(export_database_url=export_reader_url),
    )
    data = _stored(run, "export.csv")
    lines = data.split(b"\r\n")
    assert lines[0] == b"id,name,amount,created,data,blob,note,flag"
    assert lines[1] == (
        b'1,name 1,1.25,2026-01-01T00:00:01,"{""g"":1}",'
        + base64.b64encode((1).to_bytes(4, "big"))
        + b',"n,1",false'
    )
    assert lines[10] == b'10,name 10,12.50,2026-01-01T00:00:10,"{""g"":10}",AAAACg==,,true'
    assert lines[PG_ROWS].startswith(b"20000,name 20000,25000.00,2026-01-01T05:33:20,")
    assert len(lines) == PG_ROWS + 2 and lines[-1] == b""
    assert run.result == {
        "artifact": "export.csv",
        "rows": PG_ROWS,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    _assert_progress(run, f"{PG_ROWS} of {PG_ROWS} rows")
    assert len(run.progress) > 2, "progress should be reported while streaming"


def test_query_runs_in_a_read_only_bounded_transaction(export_reader_url: str) -> None:
    """The export query sees a read-only REPEATABLE READ transaction with the job type's
    statement timeout (one hour), in a session whose default is read-only too."""
    query = (
        "SELECT current_setting('transaction_read_only') AS ro, "
        "current_setting('transaction_isolation') AS iso, "
        "current_setting('statement_timeout') AS timeout, "
        "current_setting('default_transaction_read_only') AS session_ro"
    )
    run = run_handler(
        "csv.export", {"query": query}, settings=Settings(export_database_url=export_reader_url)
    )
    assert _stored(run, "export.csv") == (
        b"ro,iso,timeout,session_ro\r\non,repeatable read,1h,on\r\n"
    )


def test_writes_through_a_query_fail_and_change_nothing(
    export_database_url: str, export_reader_url: str, pg_table: str
) -> None:
    """A plain write, a second statement and a data-modifying WITH are refused at submit;
    a function that writes (nextval) passes the parser but fails permanently (read-only
    transaction, read-only role), and the table and sequence are untouched."""
    settings = Settings(export_database_url=export_reader_url)
    refused_at_submit = (
        f"DELETE FROM {pg_table}",
        f"SELECT 1; DELETE FROM {pg_table}",
        f"WITH gone AS (DELETE FROM {pg_table} RETURNING id) SELECT count(*) FROM gone",
    )
    for statement in refused_at_submit:
        with pytest.raises(InvalidArgument) as refused:
            run_handler("csv.export", {"query": statement}, settings=settings)
        assert [v.field for v in refused.value.violations] == ["payload.query"]
    with pytest.raises(PermanentError, match="the query failed"):
        run_handler("csv.export", {"query": f"SELECT nextval('{pg_table}_seq')"}, settings=settings)
    assert _pg_scalar(export_database_url, f"SELECT count(*) FROM {pg_table}") == PG_ROWS
    assert _pg_scalar(export_database_url, f"SELECT is_called FROM {pg_table}_seq") is False


def test_query_errors_are_permanent(export_reader_url: str, pg_table: str) -> None:
    """Mistakes in the query or its columns cannot be fixed by a retry, and say why."""
    settings = Settings(export_database_url=export_reader_url)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"query": "SELECT * FROM no_such_table_here"}, "no_such_table_here"),
        ({"query": f"SELECT id FROM {pg_table} WHERE id = :id"}, "bind parameter"),
        ({"query": f"SELECT id FROM {pg_table}", "columns": ["nope"]}, "no column 'nope'"),
    ]
    for payload, why in cases:
        with pytest.raises(PermanentError, match=why):
            run_handler("csv.export", payload, settings=settings)


def test_query_on_sqlite(sqlite_url: str) -> None:
    """SQLite exports too, with `columns` choosing from the query's columns; its export
    connections refuse writes outright (PRAGMA query_only)."""
    run = run_handler(
        "csv.export",
        {"query": "SELECT * FROM t ORDER BY id", "columns": ["id", "note", "score"]},
        settings=Settings(export_database_url=sqlite_url),
    )
    data = _stored(run, "export.csv")
    lines = data.split(b"\r\n")
    assert lines[:3] == [b"id,note,score", b"1,x,0.25", b"2,x,0.5"]
    assert lines[5] == b"5,,1.25"
    assert len(lines) == 2502
    assert run.result["rows"] == 2500
    assert run.result["sha256"] == hashlib.sha256(data).hexdigest()
    _assert_progress(run, "2500 of 2500 rows")

    with (
        pytest.raises(OperationalError, match="readonly"),
        export_engine(sqlite_url).connect() as conn,
    ):
        conn.exec_driver_sql("DELETE FROM t")
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as db:
        assert db.execute("SELECT count(*) FROM t").fetchone() == (2500,)
    db.close()


def test_a_query_without_an_export_database_is_permanent() -> None:
    """`query` needs CONVEYOR_EXPORT_DATABASE_URL; without it no retry can help."""
    with pytest.raises(PermanentError, match="CONVEYOR_EXPORT_DATABASE_URL"):
        run_handler("csv.export", {"query": "SELECT 1"}, settings=Settings())


def test_a_cancelled_export_stops_and_stores_nothing(tmp_path: Path) -> None:
    """Once cancelled (here at 30%), the export stops within a batch of rows, returns None
    and leaves no artifact behind."""
    spec = _with_hook(
        "test.csv_cancelled", csv_module.CsvExportPayload, csv_module.csv_export, _cancel_at(30)
    )
    rows = [[i, f"row {i}"] for i in range(10_000)]
    store = _local(tmp_path)
    run = run_handler(spec, {"rows": rows, "columns": ["i", "s"]}, store=store)
    assert run.result is None and run.artifacts == {}
    assert store.stat(artifact_key(run.job_id, "export.csv")) is None
    assert run.progress[-1][1] == "3000 of 10000 rows"


# -- files.bundle --------------------------------------------------------------------------


def _zip_of(run: HandlerRun, name: str = "bundle.zip") -> tuple[bytes, zipfile.ZipFile]:
    data = _stored(run, name)
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    return data, archive


def _unzip_accepts(data: bytes, tmp_path: Path) -> None:
    """Info-ZIP's `unzip -t` reads the streamed zip (data descriptors, ZIP64) too."""
    path = tmp_path / "check.zip"
    path.write_bytes(data)
    checked = subprocess.run(["unzip", "-tq", str(path)], capture_output=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_bundle_of_owner_files_and_artifacts(s3_store: S3Store, tmp_path: Path) -> None:
    """200 files of the owner and 2 artifacts of another of the owner's jobs become one
    zip with exactly those names and bytes; progress by bytes is monotonic up to 100."""
    rng = random.Random(7)
    fixture = RunFixture()
    files: list[dict[str, Any]] = []
    expected: dict[str, bytes] = {}
    uploads: list[tuple[str, bytes]] = []
    for i in range(200):
        data = rng.randbytes(rng.randrange(0, 40_000))
        uploads.append((owner_file_key(fixture.owner, f"reports/2026/r{i:03}.bin"), data))
        entry: dict[str, Any] = {"key": f"reports/2026/r{i:03}.bin"}
        if i % 50 == 0:
            entry["path"] = f"chosen/{i}.bin"
        files.append(entry)
        expected[entry.get("path", f"r{i:03}.bin")] = data
    with ThreadPoolExecutor(8) as pool:  # moto answers one request in ~8 ms
        list(pool.map(lambda upload: _put(s3_store, *upload), uploads))
    other_job = str(uuid.uuid4())
    for name, path in (("a.csv", "exports/a.csv"), ("b.json", None)):
        data = rng.randbytes(5000)
        fixture.add_artifact(s3_store, other_job, name, data)
        files.append({"job_id": other_job, "artifact": name, **({"path": path} if path else {})})
        expected[path or name] = data

    run = run_handler("files.bundle", {"files": files}, store=s3_store, fixture=fixture)
    data, archive = _zip_of(run)
    assert archive.namelist() == list(expected)
    assert {name: archive.read(name) for name in archive.namelist()} == expected
    assert all(info.flag_bits & 0x08 for info in archive.infolist()), "streamed entries"
    assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_DEFLATED}
    _unzip_accepts(data, tmp_path)
    total = sum(len(v) for v in expected.values())
    assert run.result == {
        "artifact": "bundle.zip",
        "files": 202,
        "bytes": len(data),
        "input_bytes": total,
    }
    assert run.artifacts["bundle.zip"].content_type == "application/zip"
    _assert_progress(run, f"{total} of {total} bytes")
    assert len(run.progress) > 2, "progress should be reported while copying"


def test_an_entry_larger_than_an_upload_part_round_trips(s3_store: S3Store, tmp_path: Path) -> None:
    """An entry bigger than PART_SIZE (so the zip is uploaded in several parts) comes back
    intact, stored uncompressed when asked."""
    big = os.urandom(PART_SIZE + 12_345)
    _put(s3_store, owner_file_key("tester", "big.bin"), big)
    _put(s3_store, owner_file_key("tester", "small.txt"), b"small")
    payload = {
        "files": [{"key": "big.bin"}, {"key": "small.txt"}],
        "compression": "store",
        "name": "two.zip",
    }
    run = run_handler("files.bundle", payload, store=s3_store)
    data, archive = _zip_of(run, "two.zip")
    assert archive.read("big.bin") == big and archive.read("small.txt") == b"small"
    assert archive.getinfo("big.bin").compress_type == zipfile.ZIP_STORED
    assert run.result["bytes"] == len(data) > PART_SIZE
    _unzip_accepts(data, tmp_path)


def test_missing_sources_and_other_owners_artifacts_are_refused(s3_store: S3Store) -> None:
    """Before anything is written: a missing file fails permanently naming it, and an
    artifact of another owner's job reads as missing."""
    _put(s3_store, owner_file_key("tester", "here.txt"), b"here")
    with pytest.raises(PermanentError, match=r"files\[1\] \(file 'gone/missing.txt'\)"):
        run_handler(
            "files.bundle",
            {"files": [{"key": "here.txt"}, {"key": "gone/missing.txt"}]},
            store=s3_store,
        )
    fixture = RunFixture()
    theirs = str(uuid.uuid4())
    fixture.add_artifact(s3_store, theirs, "secret.csv", b"s", owner="mallory")
    with pytest.raises(PermanentError, match="no such artifact"):
        run_handler(
            "files.bundle",
            {"files": [{"job_id": theirs, "artifact": "secret.csv"}]},
            store=s3_store,
            fixture=fixture,
        )
    listed = list(s3_store.client.list_objects(s3_store.bucket, prefix="jobs/", recursive=True))
    assert [o.object_name for o in listed] == [artifact_key(theirs, "secret.csv")]


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("files.bundle-writer")]


def test_a_writer_error_ends_the_upload_and_is_the_one_reported(s3_store: S3Store) -> None:
    """A source that disappears mid-bundle (deleted once copying has begun) fails the
    writer; the upload in progress (already past one part) is aborted, no artifact is
    left, and the job reports the writer's PermanentError."""
    _put(s3_store, owner_file_key("tester", "first.bin"), os.urandom(PART_SIZE + 1))
    _put(s3_store, owner_file_key("tester", "second.bin"), b"second")

    def delete_second(ctx: SyncJobContext, percent: float, message: str) -> None:
        if percent > 0:
            s3_store.delete([owner_file_key("tester", "second.bin")])

    spec = _with_hook(
        "test.bundle_vanishing",
        bundle_module.BundlePayload,
        bundle_module.files_bundle,
        delete_second,
    )
    payload = {"files": [{"key": "first.bin"}, {"key": "second.bin"}], "compression": "store"}
    with pytest.raises(PermanentError, match=r"files\[1\] .*gone from the store"):
        _within(30, lambda: run_handler(spec, payload, store=s3_store))
    assert list(s3_store.client.list_objects(s3_store.bucket, prefix="jobs/")) == []
    assert _writer_threads() == []


def test_an_upload_error_stops_the_writer(tmp_path: Path) -> None:
    """When the upload fails before reading a byte, the writer (blocked on a full pipe)
    is released and ends; the job reports the upload's error, without deadlock."""
    store = _local(tmp_path)
    size = (bundle_module.PIPE_DEPTH + 4) * bundle_module.PIPE_CHUNK
    _put(store, owner_file_key("tester", "big.bin"), os.urandom(size))
    (store.root / "jobs").write_bytes(b"a file where the artifacts' folder should be")
    payload = {"files": [{"key": "big.bin"}], "compression": "store"}
    with pytest.raises(OSError) as failed:
        _within(30, lambda: run_handler("files.bundle", payload, store=store))
    assert not isinstance(failed.value, bundle_module.WriterFailed)
    assert _writer_threads() == []


def _within(seconds: float, fn: Callable[[], T]) -> T:
    """`fn()` run in a daemon thread: its result, or its exception re-raised here; a test
    failure (instead of a hung suite) if it has not ended within `seconds`."""
    outcome: list[T] = []
    raised: list[BaseException] = []

    def call() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds}s: a deadlock"
    if raised:
        raise raised[0]
    return outcome[0]


def test_a_cancelled_bundle_stops_and_stores_nothing(tmp_path: Path) -> None:
    """Once cancelled (here at 30% of the bytes), the writer stops at its next chunk, the
    upload ends, the handler returns None and no artifact is stored."""
    store = _local(tmp_path)
    for i in range(10):
        _put(store, owner_file_key("tester", f"f{i}.bin"), os.urandom(1 << 20))
    spec = _with_hook(
        "test.bundle_cancelled",
        bundle_module.BundlePayload,
        bundle_module.files_bundle,
        _cancel_at(30),
    )
    payload = {"files": [{"key": f"f{i}.bin"} for i in range(10)]}
    run = _within(30, lambda: run_handler(spec, payload, store=store))
    assert run.result is None and run.artifacts == {}
    assert store.stat(artifact_key(run.job_id, "bundle.zip")) is None
    assert max(percent for percent, _ in run.progress) < 50
    assert _writer_threads() == []


# -- payloads refused at submit ------------------------------------------------------------

ROW = [{"a": 1}]
BAD_PAYLOADS = [
    ("csv.export", {"rows": ROW, "query": "SELECT 1"}, "payload.query"),
    ("csv.export", {}, "payload.query"),
    ("csv.export", {"rows": [[1, 2]]}, "payload.rows"),
    ("csv.export", {"rows": [[1, 2]], "columns": ["a"]}, "payload.rows"),
    ("csv.export", {"rows": [{"a": 1}, [1]]}, "payload.rows"),
    ("csv.export", {"rows": ROW, "columns": ["a", "a"]}, "payload.columns"),
    ("csv.export", {"query": "UPDATE t SET a = 1"}, "payload.query"),
    ("csv.export", {"query": "SELECT " + "1" * 100_000}, "payload.query"),
    ("csv.export", {"rows": ROW, "params": {"x": 1}}, "payload.params"),
    ("csv.export", {"query": "SELECT :x", "params": {"x y": 1}}, "payload.params"),
    ("csv.export", {"rows": ROW, "name": "../x.csv"}, "payload.name"),
    ("csv.export", {"rows": ROW, "delimiter": ";;"}, "payload.delimiter"),
    ("csv.export", {"rows": ROW, "delimiter": '"'}, "payload.delimiter"),
    ("csv.export", {"rows": ROW, "bogus": 1}, "payload.bogus"),
    ("files.bundle", {"files": []}, "payload.files"),
    ("files.bundle", {"files": [{"key": "a.txt", "path": "../x"}]}, "payload.files[0].path"),
    ("files.bundle", {"files": [{"key": "/etc/passwd"}]}, "payload.files[0].key"),
    ("files.bundle", {"files": [{"key": "a\\b.txt"}]}, "payload.files[0].key"),
    ("files.bundle", {"files": [{"key": "x/a.txt"}, {"key": "y/a.txt"}]}, "payload.files"),
    ("files.bundle", {"files": [{"key": "a"}, {"key": "b", "path": "a/b"}]}, "payload.files"),
    ("files.bundle", {"files": [{"key": "a"}], "name": "no spaces.zip"}, "payload.name"),
    ("files.bundle", {"files": [{"job_id": "j1"}]}, "payload.files[0]"),
    ("files.bundle", {"files": [{"key": "a", "job_id": "j", "artifact": "x"}]}, "payload.files[0]"),
    ("files.bundle", {"files": [{"job_id": "j", "artifact": "a/b"}]}, "payload.files[0].artifact"),
    ("files.bundle", {"files": [{"key": "a"}], "compression": "lzma"}, "payload.compression"),
    ("files.bundle", {"files": [{"key": f"{i}"} for i in range(10_001)]}, "payload.files"),
    ("files.bundle", {"files": [{"key": "a", "mode": 1}]}, "payload.files[0].mode"),
]


@pytest.mark.parametrize(("job_type", "payload", "field"), BAD_PAYLOADS)
def test_bad_payloads_are_refused_per_field(
    job_type: str, payload: dict[str, Any], field: str
) -> None:
    """Each mistake is INVALID_ARGUMENT naming the field, before the handler runs."""
    with pytest.raises(InvalidArgument) as refused:
        run_handler(job_type, payload)
    assert [v.field for v in refused.value.violations] == [field]
