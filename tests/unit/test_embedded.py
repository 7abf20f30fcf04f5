"""The throwaway servers behave as the fixtures and fault tests assume: real processes on a
fixed loopback port, Redis forgetting everything on restart, PostgreSQL keeping committed data
across stop/start and kill/start, with both the PATH binaries and the pgserver wheel's."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
from pathlib import Path

import psycopg
import pytest
import redis

from conveyor.embedded import (
    PG_BIN_DIR_ENV,
    EmbeddedPostgres,
    EmbeddedRedis,
    find_pg_bin_dir,
    free_port,
    wheel_pg_bin_dir,
)


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_redis_restart_keeps_port_and_forgets_data_and_kill_works(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    with server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url)
        try:
            client.set("k", "v")
            assert client.get("k") == b"v"

            port = server.port
            server.restart()
            assert server.port == port and server.running
            assert client.get("k") is None  # no persistence: a restart loses everything
            assert not list(tmp_path.joinpath("redis").glob("*.rdb"))

            server.kill()
            assert not server.running
            with pytest.raises(redis.ConnectionError):
                client.ping()

            server.start()  # after a crash, the same URL works again
            assert client.ping()
        finally:
            client.close()
    assert not server.running
    assert not _accepts(server.port)
    server.stop()  # idempotent
    assert (tmp_path / "redis" / "redis.log").stat().st_size > 0


def _pg_roundtrip(server: EmbeddedPostgres, *, crash: bool) -> str:
    """Write a row, stop (or kill) and start again; the committed row must still be there."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (v text)")
        conn.execute("INSERT INTO t VALUES ('kept')")
        version_row = conn.execute("SHOW server_version").fetchone()
    assert version_row is not None
    port = server.port
    if crash:
        server.kill()
    else:
        server.stop()
    assert not server.running and not _accepts(port)
    server.start()
    assert server.port == port
    with psycopg.connect(server.dsn) as conn:
        assert conn.execute("SELECT v FROM t").fetchall() == [("kept",)]
        # Durability is the server's default, not turned off for speed.
        assert conn.execute("SHOW fsync").fetchone() == ("on",)
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
    return str(version_row[0])


def test_postgres_data_survives_stop_and_start(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg")
    assert server.url == f"postgresql+psycopg://conveyor@127.0.0.1:{server.port}/conveyor"
    with server:
        _pg_roundtrip(server, crash=False)
    assert not server.running
    server.stop()  # idempotent


@pytest.mark.skipif(importlib.util.find_spec("pgserver") is None, reason="pgserver not installed")
def test_postgres_from_wheel_binaries_survives_kill(tmp_path: Path) -> None:
    # What a fresh CI machine without PostgreSQL on PATH gets.
    bin_dir = wheel_pg_bin_dir()
    with EmbeddedPostgres(tmp_path / "pg", bin_dir=bin_dir) as server:
        version = _pg_roundtrip(server, crash=True)  # crash recovery replays the WAL
    shipped = subprocess.run(
        [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    assert version == shipped  # the wheel's server ran, not the one on PATH


def test_pg_bin_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(PG_BIN_DIR_ENV, str(tmp_path))
    assert find_pg_bin_dir() == tmp_path
    monkeypatch.delenv(PG_BIN_DIR_ENV)
    assert find_pg_bin_dir() != tmp_path
