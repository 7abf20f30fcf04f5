"""deploy/compose: the stack's services, their dependencies and health checks, their
environment (complete, known, valid), ports, mounts, and the Compose Specification's schema."""

from __future__ import annotations

import copy
import hashlib
import re

import pytest

from tests.deploy.compose import (
    COMPOSE_VARIANTS,
    _compose,
    _compose_settings,
    _compose_validator,
    _depends_on,
    _enabled_services,
    _environment,
    _has_health_check,
    _healthcheck_test,
    _interpolate,
    _interpolated_compose,
    _json_schema,
    _optional_dependencies,
    _schema_errors,
    _services,
)
from tests.deploy.manifests import (
    ALLOWED_CONVEYOR_VARS,
    API_CLIENTS,
    COMPOSE_DIR,
    COMPOSE_FILE,
    COMPOSE_SCHEMA,
    DOCKERFILE,
    FUTURE_VARS,
    KEDA_SCALEDOBJECT_SCHEMA,
    REDIS_CLUSTER_PROFILE,
    REPO,
    SCHEMAS_DIR,
    SERVICE_ADDR,
    SERVICE_PORT,
    Mutation,
    _host_port,
    _list,
    _map,
)


@pytest.mark.parametrize("variant", list(COMPOSE_VARIANTS))
def test_compose_depends_on_conditions_suit_their_targets(variant: str) -> None:
    """compose refuses service_healthy on a container without a health check, and a
    dependency on a service its profile leaves out unless it is `required: false`; a one-shot
    that restarts never completes successfully; a cycle never starts."""
    env = COMPOSE_VARIANTS[variant]
    every = _services(env)
    services = _enabled_services(env)
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    edges = 0
    for name, svc in services.items():
        for target, condition in _depends_on(svc).items():
            assert target in every, f"{name} depends on unknown service {target}"
            if target not in services:
                assert target in _optional_dependencies(svc), f"{name} needs disabled {target}"
                continue
            edges += 1
            assert target != name, f"{name} depends on itself"
            assert condition in conditions, f"{name} -> {target}: condition {condition}"
            target_svc = services[target]
            if condition == "service_healthy":
                assert _has_health_check(target_svc), f"{name} waits for {target}'s health"
            if condition == "service_completed_successfully":
                restart = str(target_svc.get("restart", "no"))
                assert restart in {"no", "on-failure"}, f"one-shot {target} has restart {restart}"
    assert edges >= 10, "depends_on was not read"
    # No cycles: repeatedly take the services whose dependencies have all started.
    started: set[str] = set()
    while len(started) < len(services):
        ready = {
            n
            for n, s in services.items()
            if n not in started and _depends_on(s).keys() & services.keys() <= started
        }
        assert ready, f"depends_on cycle among {sorted(set(services) - started)}"
        started |= ready


def test_health_check_detection() -> None:
    assert _has_health_check({"healthcheck": {"test": ["CMD", "true"]}})
    assert _has_health_check({"build": {"context": "."}})
    assert not _has_health_check({"build": {"context": "."}, "healthcheck": {"disable": True}})
    assert not _has_health_check({"image": "x"})


def test_compose_has_the_stack() -> None:
    services = _services()
    assert {
        "postgres",
        "redis",
        "minio",
        "mailpit",
        "jaeger",
        "otel-collector",
        "migrate",
        "api",
        "worker",
        "scheduler",
        "prometheus",
        "grafana",
    } <= services.keys()
    assert str(services["postgres"]["image"]).startswith("postgres:16")
    assert str(services["redis"]["image"]).startswith("redis:7")
    pg_check, redis_check = (_healthcheck_test(services[s]) for s in ("postgres", "redis"))
    assert pg_check is not None and pg_check[1] == "pg_isready"
    assert redis_check is not None and redis_check[1:] == ["redis-cli", "ping"]


@pytest.mark.parametrize("name", ["migrate", "api", "worker", "scheduler"])
def test_compose_conveyor_service(name: str) -> None:
    svc = _services()[name]
    build = _map(svc["build"], f"{name}.build")
    context = (COMPOSE_DIR / build["context"]).resolve()
    assert context == REPO, f"{name} builds from {context}, not the repository root"
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    assert _list(svc["command"], f"{name}.command")[0] == name
    env = _environment(_services({})[name])
    assert {"CONVEYOR_DATABASE_URL", "CONVEYOR_REDIS_URL"} <= env.keys()
    assert env["CONVEYOR_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["CONVEYOR_REDIS_URL"].startswith("redis://redis:6379/")
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in env
    if name != "migrate":
        assert _depends_on(svc).get("migrate") == "service_completed_successfully"


def test_compose_environment_is_complete_and_known() -> None:
    seen: set[str] = set()
    for name, svc in _services().items():
        names = {k for k in _environment(svc) if k.startswith("CONVEYOR_")}
        assert names <= ALLOWED_CONVEYOR_VARS, f"{name}: {sorted(names - ALLOWED_CONVEYOR_VARS)}"
        seen |= names
    required = FUTURE_VARS | {
        "CONVEYOR_API_ADDR",
        "CONVEYOR_WORKER_ADDR",
        "CONVEYOR_SCHEDULER_ADDR",
        "CONVEYOR_DATABASE_URL",
        "CONVEYOR_REDIS_URL",
        "CONVEYOR_WORKER_CONCURRENCY",
        "CONVEYOR_HANDLERS",
        "CONVEYOR_SHUTDOWN_GRACE_SECONDS",
        "CONVEYOR_LOG_FORMAT",
    }
    assert seen >= required, f"compose never sets {sorted(required - seen)}"


@pytest.mark.parametrize("variant", list(COMPOSE_VARIANTS))
@pytest.mark.parametrize("name", ["migrate", *SERVICE_ADDR])
def test_compose_settings_validate(name: str, variant: str) -> None:
    settings = _compose_settings(name, COMPOSE_VARIANTS[variant])
    assert settings.log_format in {"json", "console"}
    assert settings.redis_cluster is (variant == REDIS_CLUSTER_PROFILE)


def test_compose_ports_and_replicas() -> None:
    services = _services()
    for name in SERVICE_ADDR:
        addr = getattr(_compose_settings(name), SERVICE_ADDR[name])
        assert _host_port(addr) == ("0.0.0.0", SERVICE_PORT[name]), f"{name} serves on {addr}"
    api, worker = services["api"], services["worker"]
    assert "50051:50051" in [str(p) for p in api.get("ports", [])]
    assert _map(worker.get("deploy"), "worker.deploy").get("replicas") == 2
    # Two replicas cannot publish the same host port.
    assert "ports" not in worker


def test_compose_interpolations_have_defaults() -> None:
    """`docker compose up` must work with nothing set: every ${VAR} has a default."""
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    for expr in re.findall(r"\$\{([^}]*)\}", text):
        assert ":-" in expr, f"${{{expr}}} has no default"
    bare = re.findall(r"\$(?![{$])\w+", text)
    assert not bare, f"bare interpolations {bare}"


def test_compose_mounts_exist() -> None:
    declared = set(_map(_compose().get("volumes") or {}, "volumes"))
    for name, svc in _services().items():
        for volume in svc.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"


def test_interpolation_follows_compose() -> None:
    env = {"SET": "v", "EMPTY": ""}
    cases = {
        "${SET:-d}": "v",
        "${UNSET:-d}": "d",
        "${EMPTY:-d}": "d",
        "${EMPTY-d}": "",
        "${UNSET-d}": "d",
        "${SET:+alt}": "alt",
        "${UNSET:+alt}": "",
        "$SET/${SET}": "v/v",
        "$$SET": "$SET",
        "a${UNSET}b": "ab",
        "${SET:?needed}": "v",
    }
    for text, expected in cases.items():
        assert _interpolate(text, env) == expected, text
    assert _interpolate({"k": ["${UNSET:-1}", 2]}, env) == {"k": ["1", 2]}
    with pytest.raises(AssertionError, match="needed"):
        _interpolate("${UNSET:?needed}", env)


def test_vendored_schemas_are_listed_with_their_source() -> None:
    """Each vendored schema is in tests/schemas/README.md, which says where it came from, and is
    the file recorded there (its sha256): an edit by hand shows."""
    readme = (SCHEMAS_DIR / "README.md").read_text(encoding="utf-8")
    files = sorted(p for p in SCHEMAS_DIR.iterdir() if p.name != "README.md")
    assert files == [COMPOSE_SCHEMA, KEDA_SCALEDOBJECT_SCHEMA]
    for path in files:
        [row] = [line for line in readme.splitlines() if line.startswith(f"| `{path.name}`")]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert f"`{digest}`" in row, f"{path.name} changed since it was vendored"
        assert re.search(r"commit `[0-9a-f]{40}`", row), f"{path.name}: no commit recorded"
        _json_schema(path)  # parses


@pytest.mark.parametrize("variant", list(COMPOSE_VARIANTS))
def test_compose_file_matches_the_compose_spec(variant: str) -> None:
    validator = _compose_validator()
    errors = _schema_errors(validator, _interpolated_compose(COMPOSE_VARIANTS[variant]))
    assert not errors, "compose.yaml does not match the Compose Specification:\n" + "\n".join(
        errors
    )


def test_compose_spec_check_catches_mistakes() -> None:
    """The schema check is not vacuous: a misspelt key, an unknown condition, a misspelt port
    field and a number where a duration string belongs are each refused."""
    validator = _compose_validator()
    mutations: list[Mutation] = [
        lambda c: c["services"]["api"].update(restrat="always"),
        lambda c: c["services"]["worker"]["depends_on"]["migrate"].update(condition="done"),
        lambda c: c["services"]["prometheus"].update(ports=[{"target": 9090, "publish": 9090}]),
        lambda c: c["services"]["api"]["healthcheck"].update(interval=10),
    ]
    for mutate in mutations:
        broken = copy.deepcopy(_interpolated_compose())
        mutate(broken)
        assert _schema_errors(validator, broken), "a broken compose file passed the schema"


def test_compose_dashboard_is_a_client_of_the_api() -> None:
    """The dashboard reaches the api by its service name once the api is healthy, serves HTTP
    on every interface of the port it publishes, and is health-checked on /healthz."""
    svc = _services()["dashboard"]
    assert _list(svc["command"], "dashboard.command") == ["dashboard"]
    settings = _compose_settings("dashboard")
    assert settings.api_addr == "api:50051"
    port = API_CLIENTS["dashboard"]
    assert _host_port(settings.dashboard_addr) == ("0.0.0.0", port)
    assert f"{port}:{port}" in [str(p) for p in svc.get("ports", [])]
    assert _depends_on(svc) == {"api": "service_healthy"}
    check = _healthcheck_test(svc)
    assert check is not None and "/healthz" in check[-1]
