"""The Dockerfile runs `conveyor` as a non-root user from a wheel, and the health-check
one-liner works against a real gRPC health server."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.deploy.compose import _compose_settings, _healthcheck_test, _services
from tests.deploy.image import _dockerfile, _health_code, _image_env, _probe
from tests.deploy.kubernetes import _k8s_uid
from tests.deploy.manifests import (
    API_CLIENTS,
    DEPLOY,
    METRICS_PORT,
    SERVICE_ADDR,
    SERVICE_PORT,
    _host_port,
    _settings,
)


def test_image_env_sets_the_addresses() -> None:
    settings = _settings(_image_env())
    for name, field in SERVICE_ADDR.items():
        addr = getattr(settings, field)
        assert _host_port(addr) == ("0.0.0.0", SERVICE_PORT[name]), f"image: {name} on {addr}"
    # Metrics on one port whatever the service, reachable from outside the container.
    assert _host_port(settings.metrics_addr) == ("0.0.0.0", METRICS_PORT)
    [expose] = [i.args.split() for i in _dockerfile() if i.keyword == "EXPOSE"]
    assert _host_port(settings.dashboard_addr) == ("0.0.0.0", API_CLIENTS["dashboard"])
    ports = [*SERVICE_PORT.values(), *API_CLIENTS.values(), METRICS_PORT]
    assert sorted(int(p) for p in expose) == sorted(ports)


@pytest.mark.parametrize("name", list(SERVICE_ADDR))
def test_compose_health_checks_use_the_one_liner(name: str) -> None:
    test = _healthcheck_test(_services()[name])
    assert test is not None, f"{name} has no health check"
    assert test[:4] == ["CMD", "python", "-c", _health_code()]
    _, port = _host_port(getattr(_compose_settings(name), SERVICE_ADDR[name]))
    assert test[4:] == [str(port)], f"{name} probes another port than it serves"


@pytest.fixture
def health_server() -> Iterator[tuple[health.HealthServicer, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(None)


def test_health_one_liner_against_a_real_server(
    health_server: tuple[health.HealthServicer, int],
) -> None:
    servicer, port = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert _probe(port) == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert _probe(port) == 1


def test_dockerfile_entrypoint_and_user() -> None:
    instructions = _dockerfile()
    [entrypoint] = [i for i in instructions if i.keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint.args) == ["conveyor"]
    users = [i.args for i in instructions if i.keyword == "USER"]
    assert users, "the image runs as root"
    user = users[-1].split(":", 1)[0]
    assert user not in {"root", "0"}, f"runs as {user}"
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
    assert user.isdigit() and int(user) == _k8s_uid()


def test_dockerfile_is_multi_stage_and_installs_the_wheel() -> None:
    instructions = _dockerfile()
    args = dict(
        i.args.partition("=")[::2]
        for i in instructions[: next(n for n, i in enumerate(instructions) if i.keyword == "FROM")]
        if i.keyword == "ARG"
    )
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], i.args.split()[0])
        for i in instructions
        if i.keyword == "FROM"
    ]
    assert bases == ["python:3.11-slim", "python:3.11-slim"], bases
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert "pip wheel" in runs
    assert "--no-index" in runs
    assert "[dev" not in runs, "the image must not install the dev extra"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    assert {".git", ".venv"} <= set(ignore)
