"""The bind check every Conveyor server runs before gRPC binds (`check_can_listen`), and
the backlog of calls it keeps while its loop is busy."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conveyor.server.grpcserver import CannotListen, Server, check_can_listen


def test_a_taken_port_is_named_with_its_variable_and_the_reason() -> None:
    """Guards the one line an operator reads: address, variable, the system's reason."""
    with socket.create_server(("127.0.0.1", 0)) as holder:
        addr = f"127.0.0.1:{holder.getsockname()[1]}"
        with pytest.raises(CannotListen) as taken:
            check_can_listen(addr, "CONVEYOR_WORKER_ADDR")
    assert str(taken.value) == (
        f"cannot listen on {addr} (CONVEYOR_WORKER_ADDR): address already in use"
    )


def test_a_free_port_port_zero_and_a_port_left_in_time_wait_pass() -> None:
    """Port 0 is gRPC's to pick; a port whose listener is gone is free at once
    (SO_REUSEADDR, as gRPC binds), so a restarted server is not refused."""
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = holder.accept()
            accepted.close()  # the server side closes first: its end waits in TIME_WAIT
            client.recv(1)
    check_can_listen(f"127.0.0.1:{port}", "CONVEYOR_API_ADDR")
    check_can_listen("127.0.0.1:0", "CONVEYOR_API_ADDR")


def test_an_address_that_is_not_this_hosts_says_so() -> None:
    """An address this machine does not have is refused with the system's words."""
    with pytest.raises(CannotListen, match=r"\(CONVEYOR_API_ADDR\): cannot assign requested"):
        check_can_listen("192.0.2.1:50051", "CONVEYOR_API_ADDR")


async def test_thousands_of_streams_opened_at_once_are_all_served() -> None:
    """Guards the backlog gRPC core keeps for the server's loop (`server_options`,
    max_pending_calls): grpc.aio takes up one call per turn of its loop, and core dropped
    the calls waiting beyond 1,000 at random (all beyond 3,000), each ending CANCELLED at
    its client before any servicer saw it. 4,000 health Watch streams (a server stream
    every Conveyor server has) opened in the same instant must all get their first message;
    with gRPC's defaults about a third did not."""
    server = Server(
        "127.0.0.1:0",
        service_names=[],
        checks=[],
        max_message_bytes=1 << 20,
        max_concurrent_rpcs=20_000,
    )
    port = await server.start()
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(8)]
    request = health_pb2.HealthCheckRequest(service="")

    async def first_status(index: int) -> str:
        stub = health_pb2_grpc.HealthStub(channels[index % len(channels)])
        call = stub.Watch(request)
        try:
            async for answer in call:
                return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        finally:
            call.cancel()
        return "ended"

    try:
        outcomes = Counter(await asyncio.gather(*(first_status(i) for i in range(4000))))
    finally:
        for channel in channels:
            await channel.close(None)
        await server.stop(0)
    assert outcomes == {"SERVING": 4000}
