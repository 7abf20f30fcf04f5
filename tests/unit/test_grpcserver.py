"""The bind check every Conveyor server runs before gRPC binds (`check_can_listen`)."""

from __future__ import annotations

import socket

import pytest

from conveyor.server.grpcserver import CannotListen, check_can_listen


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
