"""Keepalive enforcement: a client that pings every 20 ms is answered with a GOAWAY
(ENHANCE_YOUR_CALM, "too_many_pings") after two strikes instead of being served pongs, and
the flood costs the server next to no CPU; the server goes on serving everyone else."""

from __future__ import annotations

import subprocess
import sys

import psutil

from conveyor.client import AsyncClient
from tests.processes import Keys, Stack

FLOODER = """
import asyncio, sys
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

async def main(addr):
    options = [("grpc.keepalive_time_ms", 20), ("grpc.keepalive_permit_without_calls", 1),
               ("grpc.http2.max_pings_without_data", 0),
               ("grpc.http2.min_time_between_pings_ms", 10)]
    async with grpc.aio.insecure_channel(addr, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        for _ in range(30):  # 3 s, or up to 9 s on a busy machine
            await asyncio.sleep(0.3)
            if channel.get_state() != grpc.ChannelConnectivity.READY:
                break  # the GOAWAY closed the connection
        try:  # a call after the GOAWAY dials again
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            print(exc.code().name)

asyncio.run(main(sys.argv[1]))
"""


async def test_a_ping_flood_gets_a_goaway_not_cpu(stack: Stack, keys: Keys) -> None:
    api = next(s for s in stack.services if s.name == "api")
    proc = psutil.Process(api.proc.pid)
    before = proc.cpu_times()
    flood = subprocess.run(  # noqa: ASYNC221 - the flood must run apart from this loop
        [sys.executable, "-c", FLOODER, stack.api_addr],
        capture_output=True,
        text=True,
        timeout=60,
        env={"GRPC_VERBOSITY": "ERROR", "PATH": ""},
    )
    after = proc.cpu_times()
    used = after.user + after.system - before.user - before.system
    print(f"\nping flood: pings every 20 ms until the GOAWAY cost the api {used:.3f} s of CPU")
    assert flood.returncode == 0, flood.stderr
    assert "ENHANCE_YOUR_CALM" in flood.stderr and "too_many_pings" in flood.stderr
    assert used < 0.1, "the flood is refused, not served (measured 0.01-0.02 s)"
    async with AsyncClient(stack.api_addr, api_key=keys.alice) as alice:
        assert (await alice.list(page_size=1)) is not None
