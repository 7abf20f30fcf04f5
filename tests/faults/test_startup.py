"""Start-up and restart of the real service processes: an API answers within BUDGET_SECONDS of
being spawned (also right after a kill -9, on the same port); clients that waited through
an outage see it back within about a second; a service whose port is taken says so in one
line naming its variable and exits; health is not SERVING before the database answered.

"SERVING" is what `conveyor.cli.dev.wait_serving` sees: the readiness probe that `conveyor
dev` and the tests' `Stack.start` use. Each start-up figure is the best of three starts, to
absorb the noise of a shared 2-core machine."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conveyor.cli.dev import wait_serving
from conveyor.db import Database, KeyStore
from conveyor.embedded import EmbeddedRedis, free_port
from conveyor.server.auth import Authenticator, Role, random_dev_key
from conveyor.tls import open_aio_channel
from conveyor.v1 import job_service_pb2, job_service_pb2_grpc
from tests.processes import Stack, make_env

# Spawn → SubmitJob answered, best of three. The 1.5 s target is the bench's (`--only
# startup`); this guard allows a loaded machine: the same code measured 0.9-1.0 s on a quiet
# day, 1.4-1.7 s on a slower one (2026-12-06, the previous main alike), 1.6 s inside CI.
BUDGET_SECONDS = 2.5
STARTS = 3
# Clients that wait through an outage, and how long it lasts before the API is restarted.
WAITING_CLIENTS = 20
OUTAGE_SECONDS = 4.0
# A waiting client's channel retries at least once a second (conveyor.tls.CLIENT_OPTIONS):
# with gRPC's 20 % jitter, the 50 ms polling here and a connect and a call on a busy
# machine, it is answered within 2 s of SERVING (gRPC's default backoff: 4 s and more here).
CLIENT_LAG_SECONDS = 2.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def fresh(redis_server: EmbeddedRedis, database_url: str, tmp_path: Path) -> Stack:
    """A stack of its own on the session's Redis and (migrated) PostgreSQL."""
    return Stack(make_env(redis_server.url, database_url), tmp_path)


@pytest.fixture
async def api_key(database_url: str) -> str:
    """An admin key written straight to the database (no CLI process to wait for)."""
    key = random_dev_key()
    db = Database(database_url)
    try:
        await Authenticator(KeyStore(db)).ensure_key(key, "startup", Role.ADMIN)
    finally:
        await db.close()
    return key


@pytest.fixture
async def channel(fresh: Stack) -> AsyncIterator[grpc.aio.Channel]:
    """A client's channel (the SDK's options) to the stack's API address."""
    async with open_aio_channel(fresh.api_addr, False) as opened:
        yield opened


async def _submit(channel: grpc.aio.Channel, key: str) -> None:
    await job_service_pb2_grpc.JobServiceStub(channel).SubmitJob(
        job_service_pb2.SubmitJobRequest(type="noop"),
        metadata=[("authorization", f"Bearer {key}")],
        timeout=5,
    )


async def _time_start(stack: Stack, key: str) -> tuple[float, float]:
    """Spawn `conveyor api`; seconds until the readiness probe sees SERVING, and until a
    client that connects then has its SubmitJob answered."""
    started = time.monotonic()
    api = stack.spawn("api")
    assert await asyncio.to_thread(wait_serving, api.addr, 20, tls=False), api.tail()
    serving = time.monotonic() - started
    async with open_aio_channel(api.addr, False) as channel:
        await _submit(channel, key)
    return serving, time.monotonic() - started


async def test_an_api_answers_within_budget_of_being_spawned(fresh: Stack, api_key: str) -> None:
    """Guards start-up time: spawn → health SERVING → SubmitJob answered within BUDGET_SECONDS
    (best of three)."""
    timings = []
    for attempt in range(STARTS):
        serving, submitted = await _time_start(fresh, api_key)
        timings.append(submitted)
        print(f"\nstart {attempt}: SERVING after {serving:.3f}s, SubmitJob {submitted:.3f}s")
        assert fresh.services[-1].stop() == 0
    print(f"api start: {STARTS} starts, best {min(timings):.3f}s to a SubmitJob answered")
    assert min(timings) < BUDGET_SECONDS, timings


async def test_an_api_killed_with_sigkill_listens_again_on_its_port_at_once(
    fresh: Stack, channel: grpc.aio.Channel, api_key: str
) -> None:
    """Guards a crash restart: after kill -9 (the connections it had accepted left in
    TIME_WAIT) a new API binds the same port at once and answers a SubmitJob within BUDGET_SECONDS
    of its spawn (best of three)."""
    api = fresh.spawn("api")
    assert await asyncio.to_thread(wait_serving, api.addr, 20, tls=False), api.tail()
    timings = []
    for attempt in range(STARTS):
        await _submit(channel, api_key)
        fresh.services[-1].kill()
        serving, submitted = await _time_start(fresh, api_key)
        timings.append(submitted)
        print(f"\nrestart {attempt}: SERVING after {serving:.3f}s, SubmitJob {submitted:.3f}s")
    assert fresh.services[-1].stop() == 0
    print(f"api restart after kill -9: {STARTS} restarts, best {min(timings):.3f}s")
    assert min(timings) < BUDGET_SECONDS, timings


async def _serving_seen_afresh(addr: str) -> float:
    """When (monotonic) health says SERVING, asked every 10 ms on a new channel each time:
    when the server is ready, with no channel's reconnect backoff in between."""
    async with asyncio.timeout(20):
        while True:
            async with grpc.aio.insecure_channel(addr) as probe:
                try:
                    reply = await health_pb2_grpc.HealthStub(probe).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                    if reply.status == SERVING:
                        return time.monotonic()
                except grpc.RpcError:
                    pass
            await asyncio.sleep(0.01)


async def _first_answer(channel: grpc.aio.Channel, key: str) -> float:
    """Retry a SubmitJob every 50 ms until one is answered; when (monotonic)."""
    while True:
        try:
            await _submit(channel, key)
            return time.monotonic()
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        await asyncio.sleep(0.05)


async def test_clients_that_waited_through_an_outage_see_the_api_back_within_a_second(
    fresh: Stack, api_key: str
) -> None:
    """Guards the clients' side of a restart: SDK channels that kept retrying through a
    4 s outage are answered within about a second of the API serving again (under 2 s
    here), not at the next step of gRPC's default backoff (1 s growing to 2 minutes)."""
    api = fresh.spawn("api")
    assert await asyncio.to_thread(wait_serving, api.addr, 20, tls=False), api.tail()
    # Each its own connection and backoff (gRPC would otherwise share one between them).
    own = [("grpc.use_local_subchannel_pool", 1)]
    channels = [open_aio_channel(api.addr, False, options=own) for _ in range(WAITING_CLIENTS)]
    try:
        for opened in channels:
            await _submit(opened, api_key)
        api.kill()
        answered = [asyncio.create_task(_first_answer(c, api_key)) for c in channels]
        await asyncio.sleep(OUTAGE_SECONDS)
        fresh.spawn("api")
        serving = await _serving_seen_afresh(api.addr)
        async with asyncio.timeout(30):
            lags = [when - serving for when in await asyncio.gather(*answered)]
    finally:
        for opened in channels:
            await opened.close(None)
    assert fresh.services[-1].stop() == 0
    print(
        f"\nafter a {OUTAGE_SECONDS:.0f}s outage: {WAITING_CLIENTS} waiting clients answered "
        f"{min(lags):.3f}-{max(lags):.3f}s after SERVING"
    )
    assert max(lags) < CLIENT_LAG_SECONDS, sorted(lags)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process listens on."""
    with socket.create_server(("127.0.0.1", 0)) as holder:
        yield int(holder.getsockname()[1])


@pytest.mark.parametrize(
    ("command", "variable"),
    [
        ("api", "CONVEYOR_API_ADDR"),
        ("worker", "CONVEYOR_WORKER_ADDR"),
        ("scheduler", "CONVEYOR_SCHEDULER_ADDR"),
        ("dashboard", "CONVEYOR_DASHBOARD_ADDR"),
    ],
)
def test_a_service_whose_port_is_taken_exits_with_one_line_naming_its_variable(
    fresh: Stack, taken_port: int, command: str, variable: str
) -> None:
    """Guards what an operator reads when the port is in use: the process exits non-zero
    within seconds with one line that names the variable, the address and the reason,
    and no traceback (boxed or not) and no gRPC core error line."""
    addr = f"127.0.0.1:{taken_port}"
    started = time.monotonic()
    service = fresh.spawn(command, env={variable: addr})
    code = service.proc.wait(timeout=30)
    took = time.monotonic() - started
    output = service.log.read_text(errors="replace")
    naming = [line for line in output.splitlines() if variable in line]
    print(f"\n{command} on a taken port: exit {code} after {took:.2f}s: {naming}")
    assert code != 0
    assert "Traceback" not in output and "╭" not in output, output
    assert "Failed to bind" not in output and "add_port" not in output, output
    assert len(naming) == 1, output
    assert re.search(rf"cannot listen on {addr} \({variable}\): address already in use", naming[0])
    assert took < 10


class _SilentServer:
    """A TCP server that accepts connections and never says a word: a database that
    hangs (a black-holed route, a stuck proxy)."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._held: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> _SilentServer:
        async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._held.append(writer)

        self._server = await asyncio.start_server(hold, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._held:
            writer.close()


async def test_health_is_not_serving_before_the_database_has_answered(
    fresh: Stack, channel: grpc.aio.Channel
) -> None:
    """Guards honest readiness: an API whose database accepts connections but never
    answers listens, but its health says NOT_SERVING (never SERVING) while it waits."""
    async with _SilentServer() as silent:
        url = f"postgresql+psycopg://conveyor@127.0.0.1:{silent.port}/conveyor"
        api = fresh.spawn("api", env={"CONVEYOR_DATABASE_URL": url})
        seen: list[int] = []
        async with asyncio.timeout(20):
            while len(seen) < 100:  # about 2 s of answers once it listens
                assert api.proc.poll() is None, api.tail()
                try:
                    reply = await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                    seen.append(int(reply.status))
                except grpc.RpcError:
                    pass
                await asyncio.sleep(0.02)
        api.kill()
    print(f"\nhealth against a silent database: {seen.count(SERVING)} SERVING of {len(seen)}")
    assert SERVING not in seen
    assert seen[-1] == NOT_SERVING


def listening(addr: str) -> bool:
    host, port = addr.rsplit(":", 1)
    with socket.socket() as probe:
        return probe.connect_ex((host, int(port))) == 0


@pytest.mark.parametrize("command", ["api", "worker", "scheduler"])
def test_a_service_stopped_while_it_starts_stops_gracefully(fresh: Stack, command: str) -> None:
    """Guards catching SIGTERM from before a service listens: a SIGTERM sent the moment
    its port accepts connections (start-up not done yet: the worker still starting its
    announcer, the API its download server) ends it with exit 0, where the default action
    killed it (-15) with its buffered log lost."""
    env = fresh.worker_env() if command == "worker" else None
    service = fresh.spawn(command, env=env)
    deadline = time.monotonic() + 20
    while not listening(service.addr):
        assert service.proc.poll() is None, service.tail()
        assert time.monotonic() < deadline, f"{command} never listened"
        time.sleep(0.005)
    code = service.stop()
    print(f"\n{command} stopped as soon as it listened: exit {code}")
    assert code == 0, service.tail()
