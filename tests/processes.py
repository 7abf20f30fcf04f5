"""Start Conveyor's real services as child processes (their real entry points) for tests."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
from sqlalchemy.engine import make_url

from conveyor.cli.dev import wait_serving
from conveyor.db.migrate import migrate
from conveyor.embedded import EmbeddedRedis, free_port
from conveyor.tls import TlsOptions
from conveyor.v1 import worker_control_pb2 as wc
from conveyor.v1.worker_control_pb2_grpc import WorkerControlStub

BIN = Path(sys.executable).parent
# Every service process a test started: whatever a failed test left running is killed when
# the test session exits, so no stray server outlives the run.
_SPAWNED: list[subprocess.Popen[bytes]] = []


@atexit.register
def _kill_leftovers() -> None:
    for proc in _SPAWNED:
        if proc.poll() is None:
            proc.kill()


ROOT = Path(__file__).resolve().parent.parent
CONVEYOR = str(BIN / "conveyor")

# Short timings so crash recovery and retries happen in seconds.
FAST = {
    "CONVEYOR_LEASE_SECONDS": "2",
    "CONVEYOR_HEARTBEAT_SECONDS": "0.4",
    "CONVEYOR_CLAIM_WAIT_SECONDS": "2",
    "CONVEYOR_BACKOFF_BASE_SECONDS": "0.05",
    "CONVEYOR_BACKOFF_MAX_SECONDS": "0.2",
    "CONVEYOR_SHUTDOWN_GRACE_SECONDS": "3",
    # No children forked ahead of need: the fork server starts at a worker's first
    # process-isolated attempt, so the many workers that never run one cost nothing.
    "CONVEYOR_PROCESS_POOL_SIZE": "0",
    "CONVEYOR_LOG_FORMAT": "console",
}


@dataclass
class Service:
    """One running service process and where its output goes."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    addr: str
    # Where its Prometheus /metrics is served (see tests/observability.py to read it).
    metrics_addr: str = ""
    killed: bool = False

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait: the graceful path. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stacks = _py_spy_dump(self.proc.pid)
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} ignored SIGTERM:\n{self.tail()}\n{stacks}") from None

    def kill(self) -> None:
        """kill -9: no cleanup at all."""
        self.killed = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def _py_spy_dump(pid: int) -> str:
    """Where a stuck process is, if py-spy is installed (a debugging aid only)."""
    spy = BIN / "py-spy"
    if not spy.exists():
        return ""
    done = subprocess.run(
        [str(spy), "dump", "-p", str(pid)], capture_output=True, text=True, timeout=30
    )
    return done.stdout + done.stderr


@dataclass
class Stack:
    """The environment shared by the services of one test stack."""

    env: dict[str, str]
    logs: Path
    services: list[Service] = field(default_factory=list)

    @property
    def api_addr(self) -> str:
        return self.env["CONVEYOR_API_ADDR"]

    def start(self, command: str, *args: str, env: Mapping[str, str] | None = None) -> Service:
        """Run `conveyor <command>` and wait until its health says SERVING (over TLS when
        the stack's environment configures TLS for clients)."""
        service = self.spawn(command, *args, env=env)
        tls = TlsOptions.from_environ({**self.env, **(env or {})}) or False
        if not wait_serving(service.addr, timeout=30, tls=tls):
            service.kill()
            raise AssertionError(f"{command} did not become ready:\n{service.tail()}")
        return service

    def spawn(self, command: str, *args: str, env: Mapping[str, str] | None = None) -> Service:
        """Run `conveyor <command>` without waiting for it to be ready."""
        # Each process its own metrics port (they share the stack's environment).
        merged = {"CONVEYOR_METRICS_ADDR": f"127.0.0.1:{free_port()}", **self.env, **(env or {})}
        addr = {
            "api": merged["CONVEYOR_API_ADDR"],
            "worker": merged["CONVEYOR_WORKER_ADDR"],
            "scheduler": merged["CONVEYOR_SCHEDULER_ADDR"],
            "dashboard": merged.get("CONVEYOR_DASHBOARD_ADDR", ""),
        }[command]
        log = self.logs / f"{command}-{len(self.services)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [CONVEYOR, command, *args], env=merged, stdout=out, stderr=subprocess.STDOUT
            )
        _SPAWNED.append(proc)
        service = Service(command, proc, log, addr, merged["CONVEYOR_METRICS_ADDR"])
        self.services.append(service)
        return service

    def worker_env(self) -> dict[str, str]:
        """Environment for one more worker process (its own WorkerControl port)."""
        return {"CONVEYOR_WORKER_ADDR": f"127.0.0.1:{free_port()}"}

    def cli(
        self, *args: str, key: str = "", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "CONVEYOR_API_KEY": key}
        result = subprocess.run(
            [CONVEYOR, *args], env=env, capture_output=True, text=True, timeout=60
        )
        if check and result.returncode != 0:
            raise AssertionError(f"conveyor {' '.join(args)} failed:\n{result.stderr}")
        return result

    def create_key(self, owner: str, role: str = "user") -> str:
        out = self.cli("keys", "create", "--owner", owner, "--role", role, "--json")
        key: str = json.loads(out.stdout)["key"]
        return key

    def stop_all(self) -> dict[str, int]:
        """Stop every service not killed on purpose; their exit codes by name."""
        return {f"{s.name}-{i}": s.stop() for i, s in enumerate(self.services) if not s.killed}


def _data_dir() -> str:
    """A folder for one stack's data, removed when the test session exits."""
    path = tempfile.mkdtemp(prefix="conveyor-data-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def make_env(redis_url: str, database_url: str, *, cluster: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(FAST)
    env.update(
        CONVEYOR_REDIS_URL=redis_url,
        CONVEYOR_REDIS_CLUSTER=str(cluster).lower(),
        CONVEYOR_DATABASE_URL=database_url,
        CONVEYOR_API_ADDR=f"127.0.0.1:{free_port()}",
        CONVEYOR_WORKER_ADDR=f"127.0.0.1:{free_port()}",
        CONVEYOR_SCHEDULER_ADDR=f"127.0.0.1:{free_port()}",
        CONVEYOR_DOWNLOAD_ADDR=f"127.0.0.1:{free_port()}",
        # The folder store (when no S3 is configured) in a folder of the stack's own.
        CONVEYOR_DATA_DIR=_data_dir(),
        # Workers load the tests' own handlers from this checkout.
        CONVEYOR_HANDLERS="tests.handlers",
        PYTHONPATH=str(ROOT),
    )
    return env


@contextlib.contextmanager
def own_stack(database_url: str, folder: Path, name: str, **env: str) -> Iterator[Stack]:
    """A stack with a Redis and a database of its own (named `name`, beside `database_url`),
    for tests that do to them what others must not see (pause, fill, flood). No service is
    started; on the way out every service still running must stop cleanly."""
    redis = EmbeddedRedis(folder / "redis")
    redis.start()
    url = fresh_database(database_url, name)
    migrate(url)
    stack = Stack({**make_env(redis.url, url), **env}, folder / "logs")
    stack.logs.mkdir(parents=True, exist_ok=True)
    try:
        yield stack
    finally:
        codes = stack.stop_all()
        redis.stop()
    assert all(code == 0 for code in codes.values()), f"unclean shutdown: {codes}"


def fresh_database(url: str, name: str) -> str:
    """Create (or recreate) database `name` beside the one at `url`; its URL."""
    parsed = make_url(url)
    admin = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return parsed.set(database=name).render_as_string(hide_password=False)


def login_role(url: str, role: str, *grants: str, password: str = "role-pw") -> str:
    """Create login role `role` (not a superuser) if the cluster lacks it, run `grants` (SQL
    with `{role}` for its quoted name) in the database at `url` as `url`'s user; the URL of
    that database as `role`."""
    parsed = make_url(url)
    admin = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    quoted = f'"{role}"'
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
        if exists is None:
            conn.execute(f"CREATE ROLE {quoted} LOGIN PASSWORD '{password}'")
        for grant in grants:
            conn.execute(grant.format(role=quoted))
    return parsed.set(username=role, password=password).render_as_string(hide_password=False)


def read_only_role(url: str, role: str = "conveyor_export_reader") -> str:
    """`role` reading every table of the public schema of the database at `url`, now and
    those `url`'s user makes later, and writing none: what a worker's export check accepts.
    Its URL."""
    return login_role(
        url,
        role,
        "GRANT USAGE ON SCHEMA public TO {role}",
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {role}",
    )


@dataclass
class Keys:
    """API keys of the shared e2e stack: one admin and two users."""

    admin: str
    alice: str
    bob: str


async def worker_status(worker: Service, key: str) -> wc.WorkerStatus:
    """A worker process's own account of itself (WorkerControl, with an admin `key`)."""
    async with grpc.aio.insecure_channel(worker.addr) as channel:
        reply = await WorkerControlStub(channel).GetWorkerStatus(
            wc.GetWorkerStatusRequest(), metadata=(("authorization", f"Bearer {key}"),), timeout=10
        )
    return reply.status  # type: ignore[no-any-return]
