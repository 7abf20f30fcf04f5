"""`conveyor api --processes N`: N API processes on one port (SO_REUSEPORT) under one
supervisor, each with its own metrics port; a stop reaches them all, and one that dies
takes the set down so the orchestrator restarts it whole."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from conveyor.cli.dev import wait_serving
from conveyor.client import AsyncClient
from conveyor.embedded import EmbeddedRedis
from tests.processes import Service, Stack, make_env

PROCESSES = 2
CONNECTIONS = 12  # each its own TCP connection: all on one process has odds 2 ** -11


@pytest.fixture
def fresh(redis_server: EmbeddedRedis, database_url: str, tmp_path: Path) -> Stack:
    """A stack of its own on the session's Redis and (migrated) PostgreSQL."""
    return Stack(make_env(redis_server.url, database_url), tmp_path)


def start_set(stack: Stack) -> tuple[Service, list[psutil.Process]]:
    """`conveyor api --processes 2`, every process serving (health on the shared port says
    only that one does; each serves its metrics once it is up): the supervisor and its API
    processes."""
    supervisor = stack.spawn("api", "--processes", str(PROCESSES))
    assert wait_serving(supervisor.addr, 30, tls=False), supervisor.tail()
    for addr in metrics_addrs(supervisor):
        assert wait_answering(addr, 30), f"no metrics on {addr}:\n{supervisor.tail()}"
    children = psutil.Process(supervisor.proc.pid).children()
    assert len(children) == PROCESSES, supervisor.tail()
    return supervisor, children


def wait_answering(metrics_addr: str, timeout: float) -> bool:
    """Whether the process's /metrics answers within `timeout` seconds (it starts serving
    them once its own start-up checks have passed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            submitted(metrics_addr)
            return True
        except OSError:
            time.sleep(0.05)
    return False


def submitted(metrics_addr: str) -> float:
    """`conveyor_jobs_submitted_total` summed over its labels, scraped from one process."""
    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("conveyor_jobs_submitted_total{")
    )


def metrics_addrs(supervisor: Service) -> list[str]:
    host, _, port = supervisor.metrics_addr.rpartition(":")
    return [f"{host}:{int(port) + i}" for i in range(PROCESSES)]


async def test_the_processes_share_the_port_and_all_serve(fresh: Stack) -> None:
    """Guards what the option is for: both processes listen on the one port and the
    kernel hands each of them connections (each counts submits on its own metrics port),
    and SIGTERM to the supervisor stops them all, exit code 0."""
    supervisor, children = start_set(fresh)
    key = fresh.create_key("processes")
    port = int(supervisor.addr.rpartition(":")[2])
    for child in children:
        listening = [c for c in child.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        assert port in {c.laddr.port for c in listening}, child.pid
    for _ in range(CONNECTIONS):
        async with AsyncClient(supervisor.addr, api_key=key, tls=False) as client:
            await client.submit("noop", queue="parked")
    counts = [submitted(addr) for addr in metrics_addrs(supervisor)]
    assert sum(counts) == CONNECTIONS and all(counts), counts
    supervisor.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(supervisor.proc.wait, 30) == 0, supervisor.tail()
    assert not any(child.is_running() and child.status() != "zombie" for child in children)


async def test_one_client_reaches_every_process_over_several_connections(fresh: Stack) -> None:
    """Guards the SDK's `connections`: one client with 16 connections takes calls to both
    processes (its calls go to its connections in turn; all 16 on one process has odds
    2 ** -15), while with one connection all its calls reach one process."""
    supervisor, _ = start_set(fresh)
    key = fresh.create_key("connections")
    async with AsyncClient(supervisor.addr, api_key=key, tls=False, connections=16) as client:
        await asyncio.gather(*(client.submit("noop", queue="parked") for _ in range(32)))
    counts = [submitted(addr) for addr in metrics_addrs(supervisor)]
    assert sum(counts) == 32 and all(counts), counts
    async with AsyncClient(supervisor.addr, api_key=key, tls=False) as single:
        for _ in range(8):
            await single.submit("noop", queue="parked")
    after = [
        submitted(addr) - before
        for addr, before in zip(metrics_addrs(supervisor), counts, strict=True)
    ]
    assert sorted(after) == [0, 8], after  # one connection: one process
    assert supervisor.stop() == 0


async def test_a_process_that_dies_takes_the_set_down(fresh: Stack) -> None:
    """Guards against a set one short serving on unnoticed: kill -9 of one process stops
    the other, and the supervisor exits non-zero, for the orchestrator to restart it."""
    supervisor, children = start_set(fresh)
    children[1].kill()
    assert await asyncio.to_thread(supervisor.proc.wait, 30) == 128 + signal.SIGKILL
    assert not children[0].is_running()  # stopped, and reaped by the supervisor
    log = supervisor.tail()
    assert "api process 1 exited with code -9: stopping the others" in log
    assert "api shutting down" in log  # the survivor drained as on any SIGTERM
