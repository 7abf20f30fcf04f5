"""Where a worker says its WorkerControl is dialled (ListWorkers' `control_address`): the
bound port with the configured host, this machine's address for a wildcard host, or
CONVEYOR_WORKER_ADVERTISE_ADDR as given; and announcements of other versions still read."""

from __future__ import annotations

import json
import socket

import pytest

from conveyor.config import ConfigurationError, Settings
from conveyor.redis.workers import WorkerInfo
from conveyor.worker.announcer import control_address


def address(worker_addr: str, port: int, advertise: str = "") -> str:
    settings = Settings.from_env(worker_addr=worker_addr, worker_advertise_addr=advertise)
    return control_address(settings, port)


def test_a_named_host_is_kept_with_the_port_bound() -> None:
    """The port is the one bound, not the configured one: CONVEYOR_WORKER_ADDR may say 0."""
    assert address("127.0.0.1:0", 41234) == "127.0.0.1:41234"
    assert address("127.0.0.1:50052", 50052) == "127.0.0.1:50052"
    assert address("worker-3.internal:50052", 50052) == "worker-3.internal:50052"
    assert address("[::1]:0", 40000) == "[::1]:40000"


@pytest.mark.parametrize("bound", ["0.0.0.0:50052", "[::]:50052", ":50052", "0.0.0.0:0"])
def test_a_wildcard_host_becomes_this_machines_address(bound: str) -> None:
    """A wildcard binds every interface and cannot be dialled: the hostname's address is
    announced instead (the pod's IP in Kubernetes, the container's in compose)."""
    mine = socket.gethostbyname(socket.gethostname())
    assert address(bound, 50111) == f"{mine}:50111"


def test_the_advertised_address_wins_as_given() -> None:
    assert address("0.0.0.0:0", 41234, "gw.example.com:31052") == "gw.example.com:31052"
    assert address("127.0.0.1:50052", 50052, "[2001:db8::7]:9000") == "[2001:db8::7]:9000"


@pytest.mark.parametrize("bad", ["gw.example.com", "gw:0", "gw:70000", ":50052", "gw:port"])
def test_an_advertised_address_must_be_host_and_port(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="CONVEYOR_WORKER_ADVERTISE_ADDR"):
        Settings.from_env(worker_advertise_addr=bad)


def test_announcements_of_older_and_newer_workers_are_read() -> None:
    """An older worker's announcement lacks control_address (empty); a newer one's fields
    this version does not know are left out, so a mixed fleet is listed whole."""
    info = WorkerInfo("w1", "host", ["q"], ["noop"], 4, 1, 10, 20, "10.0.0.7:50052")
    doc = json.loads(json.dumps({f: getattr(info, f) for f in WorkerInfo.__dataclass_fields__}))
    assert WorkerInfo.from_json(json.dumps(doc)) == info
    older = {k: v for k, v in doc.items() if k != "control_address"}
    assert WorkerInfo.from_json(json.dumps(older)).control_address == ""
    assert WorkerInfo.from_json(json.dumps({**doc, "zone": "b"})) == info
    assert info.to_proto().control_address == "10.0.0.7:50052"
