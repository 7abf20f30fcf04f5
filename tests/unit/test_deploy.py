"""Checks of deploy/: Docker and Kubernetes are not on the test machine, so read the files.

Every YAML file must parse; the compose file must match the Compose Specification's JSON schema
(tests/schemas/, after interpolation as compose does it) and its references (depends_on and
their conditions, mounts, build context, health checks) must point at things that exist; every
CONVEYOR_* variable must be a field of `conveyor.config.Settings` (or one explicitly reserved
for a future issue), and the values each service ends up with must validate; Prometheus must
scrape every Conveyor service on the port CONVEYOR_METRICS_ADDR gives it, and Grafana's
provisioning must load the datasource and the dashboard; the dashboard's PromQL may name only
metrics the code defines, aggregated the way they must be. Every Kubernetes manifest must match
the Kubernetes JSON schema (kubernetes-validate, strict) or, for the KEDA ScaledObject, KEDA's
CRD schema, and they must agree with each other and with the configured addresses (probes,
metrics ports and scrape annotations, selectors and labels, ConfigMap/Secret references, the
kustomization's file list, autoscaling targets and disruption budgets); a worker's drain must
fit in the time it is given before SIGKILL; the Dockerfile must run `conveyor` as a non-root
user. The health-check one-liner is run against a real gRPC health server.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import grpc
import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from conveyor.cli.app import app as cli_app
from conveyor.config import Settings
from conveyor.telemetry.metrics import catalogue

ENV_PREFIX = Settings.model_config["env_prefix"]
# The variables the code reads: one per Settings field (pydantic-settings, case-insensitive).
SETTINGS_VARS = frozenset(f"{ENV_PREFIX}{name}".upper() for name in Settings.model_fields)
# Variables deploy files may set before the code reads them (none now); when the code starts
# to, the test below says to move them out of here.
FUTURE_VARS: frozenset[str] = frozenset()
# Every CONVEYOR_* variable the deploy files may name.
ALLOWED_CONVEYOR_VARS = SETTINGS_VARS | FUTURE_VARS
# Needed by every Conveyor service: in the Kubernetes Secret.
REQUIRED_SECRETS = frozenset({"CONVEYOR_DATABASE_URL", "CONVEYOR_REDIS_URL"})
# Never in the ConfigMap: credentials, keys, and URLs that carry a password.
SECRET_VARS = REQUIRED_SECRETS | {
    "CONVEYOR_API_KEY",
    "CONVEYOR_DEV_API_KEY",
    "CONVEYOR_S3_ACCESS_KEY",
    "CONVEYOR_S3_SECRET_KEY",
    "CONVEYOR_SMTP_USERNAME",
    "CONVEYOR_SMTP_PASSWORD",
    "CONVEYOR_SECRET_KEY",
    "CONVEYOR_WEBHOOK_SECRET",
    "CONVEYOR_EXPORT_DATABASE_URL",
}
# The long-running services, and the Settings field holding the address each serves gRPC on.
SERVICE_ADDR = {"api": "api_addr", "worker": "worker_addr", "scheduler": "scheduler_addr"}
# What each service's port is: the address's port in the image, compose and Kubernetes.
SERVICE_PORT = {"api": 50051, "worker": 50052, "scheduler": 50053}
SUBCOMMANDS = frozenset({*SERVICE_ADDR, "migrate"})
# Where every Conveyor container serves Prometheus metrics (CONVEYOR_METRICS_ADDR), in compose
# and Kubernetes alike.
METRICS_PORT = 9100
# How long a stopped container gets before SIGKILL when nothing says otherwise.
DOCKER_STOP_GRACE_DEFAULT = 10.0
K8S_TERMINATION_GRACE_DEFAULT = 30.0

# The metrics the services export (conveyor.telemetry.metrics), by the name a PromQL query uses
# (counters with `_total`, histograms by family name), and their type. To be replaced by an
# import from conveyor.telemetry.metrics.
# What the services expose (prometheus_client's own collectors aside), name → type.
KNOWN_METRICS = catalogue()
# prometheus_client's default collectors, in every process: not listed one by one.
DEFAULT_METRIC_PREFIXES = ("process_", "python_")
# Every api replica reports the same queue gauges (they are read from Redis), so they are
# aggregated with `max by (queue)`: `sum` would count each job once per replica.
REPLICATED_GAUGE_PREFIX = "conveyor_queue_"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
PROMETHEUS_FILE = COMPOSE_DIR / "prometheus.yml"
OTEL_COLLECTOR_FILE = COMPOSE_DIR / "otel-collector.yaml"
DASHBOARD_FILE = DEPLOY / "grafana" / "conveyor-dashboard.json"
K8S_DIR = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
# Vendored JSON schemas; tests/schemas/README.md says where each came from.
SCHEMAS_DIR = REPO / "tests" / "schemas"
COMPOSE_SCHEMA = SCHEMAS_DIR / "compose-spec.json"
KEDA_SCALEDOBJECT_SCHEMA = SCHEMAS_DIR / "keda-scaledobject.json"
# Kubernetes versions the manifests are validated against: the oldest kubernetes-validate
# ships (the manifests need 1.24 or later, for gRPC probes) and the newest.
K8S_VERSIONS = ("1.25.0", str(kubernetes_validate.latest_version()))

# Changes a parsed document in place, to show that a check refuses the result.
Mutation = Callable[[dict[str, Any]], object]

VAR_RE = re.compile(r"\bCONVEYOR_[A-Z0-9_]+\b")
PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
WORKLOAD_KINDS = frozenset({"Deployment", "Job"})


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


@cache
def _load(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def _map(value: object, where: str) -> dict[str, Any]:
    assert isinstance(value, dict), f"{where}: expected a mapping, got {type(value).__name__}"
    return value


def _list(value: object, where: str) -> list[Any]:
    assert isinstance(value, list), f"{where}: expected a list, got {type(value).__name__}"
    return value


class _GivenSettings(Settings):
    """Settings from the values passed in alone: the test's own environment is not read."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def _settings(env: Mapping[str, str]) -> Settings:
    """The Settings a process with exactly `env` would get, validated."""
    fields: dict[str, Any] = {
        k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items() if k in SETTINGS_VARS
    }
    return _GivenSettings(**fields)


def _host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


# --- the allowed variables -------------------------------------------------------------------


def test_settings_vars_are_derived_correctly() -> None:
    assert ENV_PREFIX == "CONVEYOR_"
    assert VAR_RE.fullmatch(ENV_PREFIX + "X")
    for name, field in Settings.model_fields.items():
        # An alias would change the variable's name; the derivation above would be wrong.
        assert field.alias is None and field.validation_alias is None, name
    assert {"CONVEYOR_SCHEDULER_ADDR", "CONVEYOR_SHUTDOWN_GRACE_SECONDS"} <= SETTINGS_VARS
    # A misspelt name here would guard nothing.
    assert SECRET_VARS <= ALLOWED_CONVEYOR_VARS, sorted(SECRET_VARS - ALLOWED_CONVEYOR_VARS)


def test_future_vars_are_not_read_yet() -> None:
    now_read = FUTURE_VARS & SETTINGS_VARS
    assert not now_read, f"Settings now reads {sorted(now_read)}: drop them from FUTURE_VARS"


def test_subcommands_exist() -> None:
    commands = {
        c.name or (c.callback.__name__.replace("_", "-") if c.callback else "")
        for c in cli_app.registered_commands
    }
    assert commands >= SUBCOMMANDS, f"no such subcommand: {sorted(SUBCOMMANDS - commands)}"


# --- YAML ------------------------------------------------------------------------------------


def test_deploy_has_yaml_files() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in _yaml_files()}
    assert {
        "compose/compose.yaml",
        "compose/otel-collector.yaml",
        "k8s/kustomization.yaml",
    } <= names


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_yaml_parses_to_mappings(path: Path) -> None:
    docs = _load(path)
    assert docs, f"{path} has no documents"
    for i, doc in enumerate(docs):
        _map(doc, f"{path} document {i}")


def test_conveyor_vars_are_known_everywhere() -> None:
    """A plain text scan of every file in deploy/ (YAML, JSON, the Dockerfile, the README),
    comments included: a typo anywhere is caught."""
    paths = sorted(p for p in DEPLOY.rglob("*") if p.is_file())
    assert {DOCKERFILE, DEPLOY / "README.md", DASHBOARD_FILE, COMPOSE_FILE} <= set(paths)
    for path in paths:
        names = set(VAR_RE.findall(path.read_text(encoding="utf-8")))
        # `CONVEYOR_S3_*` in prose: a prefix that some variable must have.
        unknown = {
            n
            for n in names - ALLOWED_CONVEYOR_VARS
            if not (n.endswith("_") and any(v.startswith(n) for v in ALLOWED_CONVEYOR_VARS))
        }
        assert not unknown, f"{path.relative_to(REPO)}: unknown variables {sorted(unknown)}"


# --- Docker Compose --------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    [doc] = _load(COMPOSE_FILE)
    return _map(doc, "compose.yaml")


def _services() -> dict[str, dict[str, Any]]:
    services = _map(_compose().get("services"), "services")
    return {name: _map(svc, f"service {name}") for name, svc in services.items()}


def _depends_on(svc: dict[str, Any]) -> dict[str, str]:
    """depends_on in either form, as {target: condition}."""
    deps = svc.get("depends_on", {})
    if isinstance(deps, list):
        return {str(d): "service_started" for d in deps}
    return {
        name: str(_map(spec, name).get("condition", "service_started"))
        for name, spec in _map(deps, "depends_on").items()
    }


def _environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        return dict(str(item).partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in _map(env, "environment").items()}


def _healthcheck_test(svc: dict[str, Any]) -> list[str] | None:
    check = svc.get("healthcheck")
    if check is None or _map(check, "healthcheck").get("disable"):
        return None
    test = check["test"]
    return ["CMD-SHELL", test] if isinstance(test, str) else [str(t) for t in test]


def _has_health_check(svc: dict[str, Any]) -> bool:
    """Whether the container reports health: its own healthcheck, or the HEALTHCHECK of
    Conveyor's image (a service built from it) unless compose disables it."""
    check = svc.get("healthcheck")
    if check is not None and _map(check, "healthcheck").get("disable"):
        return False
    return _healthcheck_test(svc) is not None or "build" in svc


def test_compose_depends_on_conditions_suit_their_targets() -> None:
    """compose refuses service_healthy on a container without a health check;
    a one-shot that restarts never completes successfully; a cycle never starts."""
    services = _services()
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    edges = 0
    for name, svc in services.items():
        for target, condition in _depends_on(svc).items():
            edges += 1
            assert target in services, f"{name} depends on unknown service {target}"
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
            n for n, s in services.items() if n not in started and _depends_on(s).keys() <= started
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
    env = _environment(svc)
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


def _compose_settings(name: str) -> Settings:
    """What a compose service's process reads: the image's ENV, then compose's environment."""
    return _settings({**_image_env(), **_environment(_services()[name])})


@pytest.mark.parametrize("name", ["migrate", *SERVICE_ADDR])
def test_compose_settings_validate(name: str) -> None:
    settings = _compose_settings(name)
    assert settings.log_format in {"json", "console"}


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


# --- Compose: the Compose Specification ------------------------------------------------------

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, ${VAR+alt},
# $VAR and $$ (a literal $), as compose interpolates them.
INTERPOLATION_RE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_]\w*))"
)


def _interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """`value` with every string interpolated from `env`, as compose does before it validates
    the file (keys are left alone, as compose leaves them)."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["bare"]
        current = env.get(name)
        op, arg = m["op"], m["arg"] or ""
        unset_or_empty = current is None or (current == "" and op is not None and ":" in op)
        if op in {":-", "-"}:
            return arg if unset_or_empty else str(current)
        if op in {":?", "?"}:
            assert not unset_or_empty, f"${{{name}}}: {arg or 'required'}"
            return str(current)
        if op in {":+", "+"}:
            return "" if unset_or_empty else arg
        return current or ""

    return INTERPOLATION_RE.sub(substitute, value)


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


@cache
def _json_schema(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        return _map(json.load(f), str(path))


def _compose_validator() -> Any:
    schema = _json_schema(COMPOSE_SCHEMA)
    # Its $schema names draft-07 by a URI jsonschema does not look up, so pick the class here.
    assert "draft-07" in schema["$schema"], schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _schema_errors(validator: Any, doc: Any) -> list[str]:
    return sorted(
        f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in validator.iter_errors(doc)
    )


def _interpolated_compose() -> dict[str, Any]:
    """The compose file as `docker compose up` with nothing set in the environment reads it."""
    return _map(_interpolate(_compose(), {}), "compose.yaml")


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


def test_compose_file_matches_the_compose_spec() -> None:
    validator = _compose_validator()
    errors = _schema_errors(validator, _interpolated_compose())
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


# --- Compose: metrics, Prometheus and Grafana -------------------------------------------------


def _bind_mounts(svc: dict[str, Any]) -> dict[str, Path]:
    """A service's bind mounts (short syntax, relative sources) as {container path: host path}."""
    mounts: dict[str, Path] = {}
    for volume in svc.get("volumes", []):
        source, target, *_ = [*str(volume).split(":"), ""]
        if source.startswith("."):
            mounts[target] = (COMPOSE_DIR / source).resolve()
    return mounts


def _host_path(svc: dict[str, Any], container_path: str) -> Path | None:
    """The host file or folder behind `container_path`: a bind mount of it or of a parent."""
    wanted = PurePosixPath(container_path)
    for target, source in _bind_mounts(svc).items():
        mount = PurePosixPath(target)
        if wanted == mount or mount in wanted.parents:
            return source / wanted.relative_to(mount)
    return None


def test_bind_mount_lookup() -> None:
    svc = {"volumes": ["./a:/etc/a:ro", "data:/var/lib/x", "../b/c.json:/etc/c.json"]}
    assert _host_path(svc, "/etc/a/x.yaml") == COMPOSE_DIR / "a" / "x.yaml"
    assert _host_path(svc, "/etc/c.json") == (COMPOSE_DIR / "../b/c.json").resolve()
    assert _host_path(svc, "/var/lib/x") is None
    assert _host_path(svc, "/etc/ab") is None


def _metrics_addr(settings: Settings) -> tuple[str, int]:
    addr = settings.metrics_addr
    assert addr and addr != "off", "metrics are not served on a known address"
    return _host_port(addr)


@pytest.mark.parametrize("name", list(SERVICE_ADDR))
def test_compose_services_serve_metrics_to_other_containers(name: str) -> None:
    settings = _compose_settings(name)
    assert _metrics_addr(settings) == ("0.0.0.0", METRICS_PORT), f"{name}: {settings.metrics_addr}"
    _, grpc_port = _host_port(getattr(settings, SERVICE_ADDR[name]))
    assert grpc_port != METRICS_PORT


def _prometheus_config() -> dict[str, Any]:
    [doc] = _load(PROMETHEUS_FILE)
    return _map(doc, "prometheus.yml")


@dataclass(frozen=True)
class ScrapeTarget:
    job: str
    service: str
    port: int
    discovery: str  # "static" or "dns"


def _scrape_targets() -> list[ScrapeTarget]:
    jobs = _list(_prometheus_config().get("scrape_configs"), "scrape_configs")
    names = [str(_map(job, "scrape config")["job_name"]) for job in jobs]
    assert len(names) == len(set(names)), f"duplicate job names {names}"
    targets: list[ScrapeTarget] = []
    for job in jobs:
        known = {"job_name", "static_configs", "dns_sd_configs", "metrics_path", "scrape_interval"}
        assert job.keys() <= known, (
            f"{job['job_name']}: unchecked keys {sorted(job.keys() - known)}"
        )
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = _host_port(str(target))
                targets.append(ScrapeTarget(job["job_name"], host, port, "static"))
        for dns in job.get("dns_sd_configs", []):
            # Type A names carry no port: the config gives it (SRV records would).
            assert dns.get("type") == "A" and isinstance(dns.get("port"), int), dns
            for host in dns["names"]:
                targets.append(ScrapeTarget(job["job_name"], str(host), dns["port"], "dns"))
    return targets


def _collector_metrics_port() -> int:
    """The port the OpenTelemetry collector serves its own metrics on (otel-collector.yaml)."""
    [config] = _load(OTEL_COLLECTOR_FILE)
    readers = config["service"]["telemetry"]["metrics"]["readers"]
    [prometheus] = [r["pull"]["exporter"]["prometheus"] for r in readers]
    assert prometheus["host"] == "0.0.0.0", "the collector's metrics are not reachable"
    port = prometheus["port"]
    assert isinstance(port, int)
    return port


def _served_metrics_port(service: str) -> int:
    if service in SERVICE_ADDR:
        return _metrics_addr(_compose_settings(service))[1]
    if service == "otel-collector":
        return _collector_metrics_port()
    raise AssertionError(
        f"Prometheus scrapes {service}, whose metrics port this test does not know"
    )


def test_prometheus_scrapes_every_service_where_it_serves_metrics() -> None:
    services = _services()
    targets = _scrape_targets()
    for target in targets:
        assert target.service in services, f"{target.job}: no compose service {target.service}"
        served = _served_metrics_port(target.service)
        assert target.port == served, f"{target.job}: scrapes :{target.port}, served on :{served}"
        replicas = int(
            _map(services[target.service].get("deploy") or {}, "deploy").get("replicas", 1)
        )
        if replicas > 1:
            # A static target resolves the name to one replica at a time: each scrape would hit
            # whichever answered, mixing their counters into one series.
            assert target.discovery == "dns", f"{target.service} has {replicas} replicas"
    scraped = {t.service for t in targets}
    assert scraped >= {*SERVICE_ADDR, "otel-collector"}, (
        f"not scraped: {set(SERVICE_ADDR) - scraped}"
    )


def test_prometheus_service_reads_the_config() -> None:
    svc = _services()["prometheus"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", str(svc["image"])), "pin the image"
    flags = dict(str(a).partition("=")[::2] for a in svc.get("command", []))
    config_path = flags.get("--config.file", "/etc/prometheus/prometheus.yml")
    assert _host_path(svc, config_path) == PROMETHEUS_FILE, f"{config_path} is not prometheus.yml"
    assert "--web.listen-address" not in flags, "the datasource below expects port 9090"
    assert "9090:9090" in [str(p) for p in svc["ports"]]


def _grafana() -> dict[str, Any]:
    return _services()["grafana"]


def _provisioning(kind: str) -> list[dict[str, Any]]:
    """Grafana's provisioning files of `kind` (datasources, dashboards), from the mounts."""
    folder = _host_path(_grafana(), f"/etc/grafana/provisioning/{kind}")
    assert folder is not None and folder.is_dir(), f"no {kind} provisioning mounted"
    files = sorted(p for p in folder.iterdir() if p.suffix in {".yaml", ".yml"})
    assert files, f"{folder} has no provisioning files"
    docs = [_map(doc, str(path)) for path in files for doc in _load(path)]
    for doc in docs:
        assert doc.get("apiVersion") == 1, doc
    return docs


def test_grafana_datasource_is_the_compose_prometheus() -> None:
    svc = _grafana()
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", str(svc["image"])), "pin the image"
    [datasource] = [ds for doc in _provisioning("datasources") for ds in doc["datasources"]]
    assert datasource["type"] == "prometheus"
    url = urlsplit(datasource["url"])
    assert (url.scheme, url.hostname, url.port) == ("http", "prometheus", 9090), datasource["url"]
    assert _depends_on(svc).get("prometheus") == "service_healthy"


def test_grafana_loads_the_dashboard() -> None:
    svc = _grafana()
    [provider] = [p for doc in _provisioning("dashboards") for p in doc["providers"]]
    assert provider["type"] == "file"
    # The provider loads every JSON file in its folder: the dashboard must be mounted there.
    inside = str(PurePosixPath(provider["options"]["path"]) / DASHBOARD_FILE.name)
    assert _host_path(svc, inside) == DASHBOARD_FILE, f"{DASHBOARD_FILE.name} is not at {inside}"
    assert DASHBOARD_FILE.is_file()
    home = _environment(svc).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home is not None:
        assert _host_path(svc, home) == DASHBOARD_FILE, f"home dashboard {home} is not mounted"


# --- PromQL and the Grafana dashboard -------------------------------------------------------

# What is not a metric name in a PromQL expression: strings, label matchers, range and subquery
# brackets, and grouping clauses (their label lists). Blanked to spaces so positions hold.
PROMQL_NOISE = re.compile(
    r'"(?:[^"\\]|\\.)*"|\{[^}]*\}|\[[^\]]*\]'
    r"|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
)
PROMQL_NAME = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")
PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "atan2", "group_left", "group_right", "inf", "nan"}
)


def _promql_blank(expr: str) -> str:
    return PROMQL_NOISE.sub(lambda m: " " * len(m.group()), expr)


def _promql_metrics(expr: str) -> list[tuple[str, str | None]]:
    """Each metric selector in `expr`, with the function or aggregation directly around it
    (None when there is none)."""
    text = _promql_blank(expr)
    found: list[tuple[str, str | None]] = []
    for m in PROMQL_NAME.finditer(text):
        name = m.group()
        if name.lower() in PROMQL_KEYWORDS or text[m.end() :].lstrip().startswith("("):
            continue  # an operator, or a function or aggregation being called
        found.append((name, _enclosing_call(text, m.start())))
    return found


def _enclosing_call(text: str, pos: int) -> str | None:
    depth = 0
    for i in range(pos - 1, -1, -1):
        if text[i] == ")":
            depth += 1
        elif text[i] == "(":
            if depth == 0:
                call = re.search(r"([A-Za-z_]\w*)\s*$", text[:i])
                return call.group(1) if call else None
            depth -= 1
    return None


def _metric_family(name: str) -> str:
    """The name KNOWN_METRICS lists for a series name: histograms by their family name."""
    for suffix in HISTOGRAM_SUFFIXES:
        family = name.removesuffix(suffix)
        if family != name and KNOWN_METRICS.get(family) == "histogram":
            return family
    return name


def test_promql_parsing() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (type, le) "
        '(rate(conveyor_job_wait_seconds_bucket{queue=~"a|b"}[$__rate_interval])))'
    )
    assert _promql_metrics(expr) == [("conveyor_job_wait_seconds_bucket", "rate")]
    assert _promql_metrics('max by (queue) (conveyor_queue_depth{queue="default"}) + 1e3') == [
        ("conveyor_queue_depth", "max")
    ]
    assert _promql_metrics("sum(conveyor_queue_depth) or vector(0)") == [
        ("conveyor_queue_depth", "sum")
    ]
    assert _promql_metrics("process_resident_memory_bytes offset 5m") == [
        ("process_resident_memory_bytes", None)
    ]
    assert _metric_family("conveyor_job_run_seconds_count") == "conveyor_job_run_seconds"
    assert _metric_family("conveyor_queue_depth_count") == "conveyor_queue_depth_count"


def _promql_problems(expr: str) -> list[str]:
    """What is wrong with how `expr` uses Conveyor's metrics."""
    problems: list[str] = []
    for name, around in _promql_metrics(expr):
        if name.startswith(DEFAULT_METRIC_PREFIXES):
            continue
        family = _metric_family(name)
        kind = KNOWN_METRICS.get(family)
        if kind is None:
            problems.append(f"{name}: no such metric")
        elif kind == "histogram" and family == name:
            problems.append(f"{name}: a histogram is queried by its _bucket, _sum or _count")
        elif (kind == "counter" or family != name) and around not in {"rate", "irate", "increase"}:
            problems.append(f"{name}: a counter is only meaningful through rate() or increase()")
        elif name.startswith(REPLICATED_GAUGE_PREFIX) and around != "max":
            problems.append(
                f"{name}: every api replica reports it, aggregate with max, not {around}"
            )
    if "histogram_quantile" in expr and not re.search(r"\bby\s*\([^)]*\ble\b", expr):
        problems.append("histogram_quantile over buckets aggregated without `le`")
    return problems


def test_promql_checks_catch_mistakes() -> None:
    good = 'max by (queue) (conveyor_queue_depth{queue=~"$queue"})'
    assert _promql_problems(good) == []
    for bad in (
        "sum by (queue) (conveyor_queue_depth)",  # counts each job once per api replica
        "conveyor_queue_running",
        "sum(conveyor_jobs_submitted_total)",  # a raw counter
        "rate(conveyor_job_run_seconds[5m])",  # a histogram's family name is no series
        "histogram_quantile(0.5, sum by (type) (rate(conveyor_job_run_seconds_bucket[5m])))",
        "rate(conveyor_jobs_submited_total[5m])",  # misspelt
    ):
        assert _promql_problems(bad), bad


@cache
def _dashboard() -> dict[str, Any]:
    with DASHBOARD_FILE.open(encoding="utf-8") as f:
        return _map(json.load(f), DASHBOARD_FILE.name)


def _panels() -> list[dict[str, Any]]:
    """Every panel, rows' nested ones included."""
    out: list[dict[str, Any]] = []
    for panel in _list(_dashboard()["panels"], "panels"):
        out.append(_map(panel, "panel"))
        out.extend(_map(p, "panel") for p in panel.get("panels", []))
    return out


def _variables() -> dict[str, dict[str, Any]]:
    variables = _list(_dashboard()["templating"]["list"], "templating")
    return {str(v["name"]): _map(v, "variable") for v in variables}


def _variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query")
    return str(query.get("query") if isinstance(query, dict) else query)


def test_dashboard_is_grafana_ready() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard.get("id") is None, "an exported id would clash on import"
    variables = _variables()
    # The datasource is a variable, so that the same file works provisioned (compose) and
    # imported by hand into any Grafana with a Prometheus datasource.
    [ds_name] = [n for n, v in variables.items() if v["type"] == "datasource"]
    assert variables[ds_name]["query"] == "prometheus"
    expected = {"type": "prometheus", "uid": f"${{{ds_name}}}"}
    panels = [p for p in _panels() if p.get("type") != "row"]
    users = [
        *panels,
        *(t for p in panels for t in p.get("targets", [])),
        *(v for v in variables.values() if v["type"] == "query"),
    ]
    assert len(panels) >= 12, "the dashboard lost its panels"
    for user in users:
        where = user.get("title") or user.get("name") or user.get("expr")
        assert user.get("datasource") == expected, f"{where} uses {user.get('datasource')}"
    queue = variables["queue"]
    assert queue["type"] == "query"
    assert re.sub(r"\s", "", _variable_query(queue)) == "label_values(conveyor_queue_depth,queue)"


def test_dashboard_panels_have_ids_and_do_not_overlap() -> None:
    panels = _panels()
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids)), ids
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = _map(panel.get("gridPos"), f"{panel['title']} gridPos")
        x, y, w, h = (pos[k] for k in ("x", "y", "w", "h"))
        assert all(isinstance(v, int) for v in (x, y, w, h)) and w > 0 and h > 0, panel["title"]
        assert x + w <= 24, f"{panel['title']} is wider than the dashboard"
        for cell in ((cx, cy) for cx in range(x, x + w) for cy in range(y, y + h)):
            assert cell not in cells, f"{panel['title']} overlaps {cells[cell]}"
            cells[cell] = panel["title"]


def _dashboard_queries() -> list[str]:
    return [
        str(target["expr"])
        for panel in _panels()
        if panel.get("type") != "row"
        for target in panel.get("targets", [])
    ]


def test_dashboard_queries_use_known_metrics_correctly() -> None:
    queries = _dashboard_queries()
    assert len(queries) >= 15, "fewer queries than panels asked for"
    used: set[str] = set()
    for expr in queries:
        problems = _promql_problems(expr)
        assert not problems, f"{expr}: {problems}"
        used |= {_metric_family(name) for name, _ in _promql_metrics(expr)}
    for variable in _variables().values():
        if variable["type"] == "query":
            [(metric, _label)] = re.findall(
                r"label_values\((\w+),\s*(\w+)\)", _variable_query(variable)
            )
            assert metric in KNOWN_METRICS or metric.startswith(DEFAULT_METRIC_PREFIXES), metric
    # What the dashboard is for: each of these has a panel.
    assert used >= {
        "conveyor_queue_depth",
        "conveyor_queue_oldest_age_seconds",
        "conveyor_jobs_submitted_total",
        "conveyor_job_outcomes_total",
        "conveyor_job_wait_seconds",
        "conveyor_job_run_seconds",
        "conveyor_leases_reclaimed_total",
        "conveyor_stale_writes_refused_total",
        "conveyor_rate_limited_total",
        "conveyor_watch_streams",
        "conveyor_worker_running_jobs",
        "conveyor_worker_concurrency",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    }, f"no panel for {sorted(set(KNOWN_METRICS) - used)}"


# --- the health-check one-liner --------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def _dockerfile() -> list[Instruction]:
    """Instructions, with comments dropped and continuation lines joined."""
    out: list[Instruction] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a continuation"
    return out


def _image_env() -> dict[str, str]:
    """The runtime stage's ENV (KEY=VALUE form), as every container starts with it."""
    instructions = _dockerfile()
    last_from = max(n for n, i in enumerate(instructions) if i.keyword == "FROM")
    env: dict[str, str] = {}
    for instruction in instructions[last_from:]:
        if instruction.keyword == "ENV":
            for word in shlex.split(instruction.args):
                key, eq, value = word.partition("=")
                assert eq, f"ENV {instruction.args}: use the KEY=VALUE form"
                env[key] = value
    return env


def test_image_env_sets_the_addresses() -> None:
    settings = _settings(_image_env())
    for name, field in SERVICE_ADDR.items():
        addr = getattr(settings, field)
        assert _host_port(addr) == ("0.0.0.0", SERVICE_PORT[name]), f"image: {name} on {addr}"
    # Metrics on one port whatever the service, reachable from outside the container.
    assert _host_port(settings.metrics_addr) == ("0.0.0.0", METRICS_PORT)
    [expose] = [i.args.split() for i in _dockerfile() if i.keyword == "EXPOSE"]
    assert sorted(int(p) for p in expose) == sorted([*SERVICE_PORT.values(), METRICS_PORT])


def _health_code() -> str:
    [check] = [i for i in _dockerfile() if i.keyword == "HEALTHCHECK"]
    _, _, cmd = check.args.partition("CMD ")
    argv = json.loads(cmd)
    assert argv[:2] == ["python", "-c"], argv
    code = argv[2]
    assert isinstance(code, str)
    return code


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


def _probe(port: int) -> int:
    result = subprocess.run(
        [sys.executable, "-c", _health_code(), str(port)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return result.returncode


def test_health_one_liner_against_a_real_server(
    health_server: tuple[health.HealthServicer, int],
) -> None:
    servicer, port = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert _probe(port) == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert _probe(port) == 1


# --- Dockerfile ------------------------------------------------------------------------------


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


# --- Kubernetes ------------------------------------------------------------------------------


def _kustomization() -> dict[str, Any]:
    [doc] = _load(K8S_DIR / "kustomization.yaml")
    return _map(doc, "kustomization.yaml")


def _k8s_files() -> list[Path]:
    return [K8S_DIR / str(r) for r in _list(_kustomization()["resources"], "resources")]


def _k8s_docs() -> list[dict[str, Any]]:
    return [_map(doc, str(path)) for path in _k8s_files() for doc in _load(path)]


def _of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in _k8s_docs() if doc["kind"] == kind}


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return _map(doc["spec"]["template"]["spec"], f"{doc['metadata']['name']} pod spec")


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = _pod_spec(doc)
    found = [*spec.get("initContainers", []), *spec["containers"]]
    return [_map(c, "container") for c in found]


def _workloads() -> list[dict[str, Any]]:
    return [doc for doc in _k8s_docs() if doc["kind"] in WORKLOAD_KINDS]


def _k8s_uid() -> int:
    uids = {_pod_spec(doc)["securityContext"]["runAsUser"] for doc in _workloads()}
    assert len(uids) == 1, f"pods run as several users: {uids}"
    uid = uids.pop()
    assert isinstance(uid, int)
    return uid


def test_kustomization_files_exist_and_none_is_left_out() -> None:
    listed = _k8s_files()
    for path in listed:
        assert path.is_file(), f"kustomization.yaml lists missing {path.name}"
    on_disk = {p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert on_disk == set(listed), f"not listed: {sorted(p.name for p in on_disk - set(listed))}"


def test_k8s_documents_are_well_formed() -> None:
    seen: set[tuple[str, str]] = set()
    for doc in _k8s_docs():
        assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], doc
        assert isinstance(doc.get("kind"), str) and doc["kind"], doc
        name = _map(doc.get("metadata"), "metadata").get("name")
        assert isinstance(name, str) and name, f"{doc['kind']} without metadata.name"
        key = (doc["kind"], name)
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
    namespaces = _of_kind("Namespace")
    assert list(namespaces) == [_kustomization()["namespace"]]


def test_k8s_has_the_parts() -> None:
    deployments = _of_kind("Deployment")
    assert set(deployments) == {"conveyor-api", "conveyor-worker", "conveyor-scheduler"}
    # The api's HPA owns its replica count (a `replicas` would reset it on every apply).
    assert "replicas" not in deployments["conveyor-api"]["spec"]
    [api_hpa] = _of_kind("HorizontalPodAutoscaler").values()
    assert api_hpa["spec"]["minReplicas"] == 2
    assert deployments["conveyor-scheduler"]["spec"]["replicas"] == 2
    assert _pod_spec(deployments["conveyor-worker"])["terminationGracePeriodSeconds"] == 60
    for name, doc in deployments.items():
        [container] = _containers(doc)
        assert container["args"] == [name.removeprefix("conveyor-")]
    [job] = _of_kind("Job").values()
    assert [c["args"] for c in _containers(job)] == [["migrate"]]
    assert set(_of_kind("PodDisruptionBudget")) == {"conveyor-api", "conveyor-worker"}


def test_k8s_conveyor_vars_are_known() -> None:
    [config] = _of_kind("ConfigMap").values()
    [secret] = _of_kind("Secret").values()
    config_vars = set(_map(config["data"], "ConfigMap data"))
    secret_vars = set(_map(secret.get("stringData", secret.get("data")), "Secret data"))
    env_vars = {
        str(_map(e, "env")["name"])
        for doc in _workloads()
        for c in _containers(doc)
        for e in c.get("env", [])
    }
    for where, names in [("ConfigMap", config_vars), ("Secret", secret_vars), ("env", env_vars)]:
        conveyor = {n for n in names if n.startswith("CONVEYOR_")}
        assert conveyor <= ALLOWED_CONVEYOR_VARS, (
            f"{where}: {sorted(conveyor - ALLOWED_CONVEYOR_VARS)}"
        )
    assert not config_vars & SECRET_VARS, "secrets in the ConfigMap"
    assert not env_vars & SECRET_VARS, "secrets as plain env values"
    assert secret_vars >= REQUIRED_SECRETS
    required = {
        "CONVEYOR_API_ADDR",
        "CONVEYOR_WORKER_ADDR",
        "CONVEYOR_SCHEDULER_ADDR",
        "CONVEYOR_WORKER_CONCURRENCY",
        "CONVEYOR_HANDLERS",
        "CONVEYOR_LOG_FORMAT",
    }
    assert config_vars >= required
    for name, field in SERVICE_ADDR.items():
        addr = config["data"][f"{ENV_PREFIX}{field}".upper()]
        assert _host_port(addr) == ("0.0.0.0", SERVICE_PORT[name]), f"ConfigMap: {name} on {addr}"


def _k8s_env(doc: dict[str, Any]) -> dict[str, str]:
    """What a workload's (single) container's environment is: image ENV, envFrom, then env, in
    that order."""
    [container] = _containers(doc)
    configmaps, secrets = _of_kind("ConfigMap"), _of_kind("Secret")
    env = _image_env()
    for ref in container.get("envFrom", []):
        if "configMapRef" in ref:
            env |= {k: str(v) for k, v in configmaps[ref["configMapRef"]["name"]]["data"].items()}
        else:
            secret = secrets[ref["secretRef"]["name"]]
            # A template's stringData; base64 `data` would not be readable here.
            env |= {k: str(v) for k, v in _map(secret["stringData"], "stringData").items()}
    for item in container.get("env", []):
        assert "value" in item, f"{item['name']}: only literal env values are checked"
        env[str(item["name"])] = str(item["value"])
    return env


def _k8s_settings(doc: dict[str, Any]) -> Settings:
    """The Settings a workload's container reads."""
    return _settings(_k8s_env(doc))


def test_k8s_settings_validate() -> None:
    for doc in _workloads():
        settings = _k8s_settings(doc)
        assert settings.log_format in {"json", "console"}, doc["metadata"]["name"]


def test_k8s_env_from_references_exist() -> None:
    configmaps, secrets = set(_of_kind("ConfigMap")), set(_of_kind("Secret"))
    for doc in _workloads():
        for container in _containers(doc):
            refs = container.get("envFrom", [])
            assert refs, f"{container['name']} gets no configuration"
            for ref in refs:
                if "configMapRef" in ref:
                    assert ref["configMapRef"]["name"] in configmaps
                else:
                    assert ref["secretRef"]["name"] in secrets


def _port_ids(container: dict[str, Any]) -> set[int | str]:
    ids: set[int | str] = set()
    for port in container.get("ports", []):
        ids.add(port["containerPort"])
        if "name" in port:
            ids.add(port["name"])
    return ids


def test_k8s_probes_match_container_ports() -> None:
    probed: dict[str, set[int | str]] = {}
    for name, doc in _of_kind("Deployment").items():
        for container in _containers(doc):
            ports = _port_ids(container)
            for probe_name in PROBES:
                probe = container.get(probe_name)
                if probe is None:
                    continue
                [(handler, spec)] = [
                    (k, v) for k, v in probe.items() if k in {"grpc", "httpGet", "tcpSocket"}
                ]
                port = spec["port"]
                assert port in ports, f"{name}/{probe_name} probes {port}, container has {ports}"
                probed.setdefault(name, set()).add(port)
                if handler == "grpc":
                    assert isinstance(port, int), "grpc probes take a port number"
    assert probed == {f"conveyor-{name}": {port} for name, port in SERVICE_PORT.items()}
    # And the port probed is the one the process serves on, on every interface.
    for name, field in SERVICE_ADDR.items():
        addr = getattr(_k8s_settings(_of_kind("Deployment")[f"conveyor-{name}"]), field)
        assert _host_port(addr) == ("0.0.0.0", SERVICE_PORT[name]), f"{name} serves on {addr}"


def test_k8s_selectors_match_their_pods() -> None:
    deployments = _of_kind("Deployment")
    pod_labels = {
        name: _map(doc["spec"]["template"]["metadata"]["labels"], "labels")
        for name, doc in deployments.items()
    }
    for name, doc in deployments.items():
        selector = _map(doc["spec"]["selector"]["matchLabels"], "matchLabels")
        assert selector.items() <= pod_labels[name].items(), f"{name} does not select its pods"

    def selected(selector: dict[str, Any]) -> list[str]:
        return [n for n, labels in pod_labels.items() if selector.items() <= labels.items()]

    for name, service in _of_kind("Service").items():
        [target] = selected(_map(service["spec"]["selector"], "selector"))
        [container] = _containers(deployments[target])
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in _port_ids(container), f"Service {name}: {port}"
    assert [p["port"] for p in _of_kind("Service")["conveyor-api"]["spec"]["ports"]] == [50051]
    for name, pdb in _of_kind("PodDisruptionBudget").items():
        assert len(selected(pdb["spec"]["selector"]["matchLabels"])) == 1, f"PDB {name}"


def test_k8s_hpa_scales_the_api_on_cpu() -> None:
    [hpa] = _of_kind("HorizontalPodAutoscaler").values()
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "conveyor-api")
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def _scaled_object() -> dict[str, Any]:
    [scaled] = _of_kind("ScaledObject").values()
    return scaled


def _scale_target(ref: dict[str, Any]) -> tuple[str, str]:
    """(kind, name) of a scaleTargetRef; KEDA's default kind is an apps/v1 Deployment."""
    assert ref.get("apiVersion", "apps/v1") == "apps/v1", ref
    return str(ref.get("kind", "Deployment")), str(ref["name"])


def test_k8s_workers_scale_with_keda_not_a_plain_hpa() -> None:
    """KEDA creates the HPA for its target itself: a second HPA on the same Deployment would
    fight it over the replica count."""
    scaled = _scaled_object()
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    target = _scale_target(spec["scaleTargetRef"])
    assert target == ("Deployment", "conveyor-worker")
    assert target[1] in _of_kind("Deployment")
    hpa_targets = {
        _scale_target(hpa["spec"]["scaleTargetRef"])
        for hpa in _of_kind("HorizontalPodAutoscaler").values()
    }
    assert target not in hpa_targets, "conveyor-worker has a plain HPA as well as KEDA's"
    # The ScaledObject owns the count; a `replicas` here would undo it on every apply.
    assert "replicas" not in _of_kind("Deployment")[target[1]]["spec"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert isinstance(spec.get("cooldownPeriod"), int)


def test_k8s_keda_triggers_measure_the_workers_queues() -> None:
    spec = _scaled_object()["spec"]
    triggers = {t["type"]: t for t in spec["triggers"]}
    assert sorted(triggers) == ["cpu", "prometheus"], sorted(triggers)
    prometheus = triggers["prometheus"]["metadata"]
    server = urlsplit(prometheus["serverAddress"])
    assert server.scheme in {"http", "https"} and server.hostname, prometheus["serverAddress"]
    query = prometheus["query"]
    problems = _promql_problems(query)
    assert not problems, f"{query}: {problems}"
    metrics = {_metric_family(name) for name, _ in _promql_metrics(query)}
    assert "conveyor_queue_depth" in metrics, f"{query} does not measure the queue"
    # Every queue the query names is one the workers serve (the api reports all queues).
    worker = _of_kind("Deployment")["conveyor-worker"]
    queues = set(re.findall(r'\bqueue\s*=\s*"([^"]*)"', query))
    assert queues and queues <= set(_k8s_settings(worker).queue_list), (queues, "worker queues")
    # ceil(ready + running jobs / threshold) workers: the threshold is one worker's slots.
    threshold = float(prometheus["threshold"])
    assert threshold == _k8s_settings(worker).worker_concurrency, "threshold != worker concurrency"
    cpu = triggers["cpu"]
    assert cpu.get("metricType") == "Utilization"
    assert 0 < int(cpu["metadata"]["value"]) <= 100
    # KEDA's cpu trigger, like an HPA's, needs CPU requests to compute utilisation.
    [container] = _containers(worker)
    assert "cpu" in container["resources"]["requests"]


def _min_replicas(deployment: str) -> int:
    """The fewest pods `deployment` runs: its autoscaler's minimum, else its replicas."""
    for scaled in _of_kind("ScaledObject").values():
        if _scale_target(scaled["spec"]["scaleTargetRef"]) == ("Deployment", deployment):
            return int(scaled["spec"].get("minReplicaCount", 0))
    for hpa in _of_kind("HorizontalPodAutoscaler").values():
        if _scale_target(hpa["spec"]["scaleTargetRef"]) == ("Deployment", deployment):
            return int(hpa["spec"].get("minReplicas", 1))
    return int(_of_kind("Deployment")[deployment]["spec"].get("replicas", 1))


def test_k8s_disruption_budgets_fit_the_smallest_scale() -> None:
    """At its autoscaler's minimum, a drain may still evict a pod and leaves at least one."""
    deployments = _of_kind("Deployment")
    checked = set()
    for name, pdb in _of_kind("PodDisruptionBudget").items():
        selector = pdb["spec"]["selector"]["matchLabels"].items()
        [target] = [
            n
            for n, d in deployments.items()
            if selector <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        low = _min_replicas(target)
        spec = pdb["spec"]
        if "maxUnavailable" in spec:
            unavailable = spec["maxUnavailable"]
            assert isinstance(unavailable, int), f"PDB {name}: use a number"
            assert 1 <= unavailable < low, f"PDB {name}: {unavailable} of {low} may go"
        else:
            available = spec["minAvailable"]
            assert isinstance(available, int), f"PDB {name}: use a number"
            assert 1 <= available < low, f"PDB {name}: {available} of {low} must stay"
        checked.add(target)
    assert checked == {"conveyor-api", "conveyor-worker"}


@pytest.mark.parametrize("name", list(SERVICE_ADDR))
def test_k8s_metrics_port_and_scrape_annotations_agree(name: str) -> None:
    deployment = _of_kind("Deployment")[f"conveyor-{name}"]
    host, port = _metrics_addr(_k8s_settings(deployment))
    assert (host, port) == ("0.0.0.0", METRICS_PORT), f"{name} serves metrics on {host}:{port}"
    [container] = _containers(deployment)
    named = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
    assert named.get("metrics") == port, f"{name}: container ports {named}"
    annotations = _map(deployment["spec"]["template"]["metadata"].get("annotations"), "annotations")
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_k8s_configures_the_object_store_and_smtp() -> None:
    """Pods have a read-only root filesystem and share nothing, so the object store must be S3;
    credentials come from the Secret."""
    [secret] = _of_kind("Secret").values()
    secret_vars = set(_map(secret["stringData"], "stringData"))
    assert {
        "CONVEYOR_S3_ACCESS_KEY",
        "CONVEYOR_S3_SECRET_KEY",
        "CONVEYOR_SMTP_USERNAME",
        "CONVEYOR_SMTP_PASSWORD",
    } <= secret_vars
    for doc in _workloads():
        settings = _k8s_settings(doc)
        name = doc["metadata"]["name"]
        assert urlsplit(settings.s3_endpoint).scheme in {"http", "https"}, f"{name}: no S3"
        assert settings.s3_bucket and settings.s3_access_key and settings.s3_secret_key, name
        assert settings.smtp_host not in {"", "127.0.0.1", "localhost"}, f"{name}: SMTP is local"
        assert not (settings.smtp_ssl and settings.smtp_starttls), name


# --- Kubernetes: schemas ----------------------------------------------------------------------


def _structural_to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """A CRD's OpenAPI v3 schema as a JSON Schema that, like the API server under kubectl's
    default strict field validation, refuses fields the schema does not declare."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _structural_to_json_schema(s) for name, s in value.items()}
        elif key in {"items", "additionalProperties", "not"} and isinstance(value, dict):
            out[key] = _structural_to_json_schema(value)
        elif key in {"anyOf", "allOf", "oneOf"}:
            out[key] = [_structural_to_json_schema(s) for s in value]
        elif key == "x-kubernetes-int-or-string" and value:
            out["type"] = ["integer", "string"]
        elif not key.startswith("x-kubernetes-") and not (
            key == "type" and node.get("x-kubernetes-int-or-string")
        ):
            out[key] = value
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def _keda_validator() -> Any:
    schema = _structural_to_json_schema(_json_schema(KEDA_SCALEDOBJECT_SCHEMA))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_structural_schema_conversion() -> None:
    converted = _structural_to_json_schema(
        {
            "type": "object",
            "properties": {
                "a": {"type": "object", "properties": {"b": {"type": "string"}}},
                "m": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "n": {"type": "string", "x-kubernetes-int-or-string": True},
            },
        }
    )
    validator = jsonschema.Draft7Validator(converted)
    assert validator.is_valid({"a": {"b": "x"}, "m": {"k": "v"}, "free": {"any": 1}, "n": 3})
    assert not validator.is_valid({"a": {"c": "x"}})
    assert not validator.is_valid({"m": {"k": 1}})
    assert not validator.is_valid({"extra": 1})


def _k8s_schema_errors(doc: dict[str, Any]) -> list[str]:
    """Schema errors of one manifest: KEDA's CRD schema for a ScaledObject, else the
    Kubernetes schemas of every version in K8S_VERSIONS (strict: no unknown fields)."""
    if doc["kind"] == "ScaledObject":
        return _schema_errors(_keda_validator(), doc)
    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path) or "(root)"
            errors.append(f"Kubernetes {version}: {path}: {e.message}")
    return errors


def test_k8s_documents_match_their_schemas() -> None:
    kinds: set[str] = set()
    for path in _k8s_files():
        for doc in _load(path):
            errors = _k8s_schema_errors(doc)
            assert not errors, f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {errors}"
            kinds.add(doc["kind"])
    assert kinds == {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Job",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ScaledObject",
    }


def test_k8s_schema_check_catches_mistakes() -> None:
    """The schema checks are not vacuous: an unknown field, a wrong type and KEDA's classic
    mix-up with the HPA's field names are refused."""
    deployment = _of_kind("Deployment")["conveyor-worker"]
    scaled = _scaled_object()
    mutations: list[tuple[dict[str, Any], Mutation]] = [
        (deployment, lambda d: _pod_spec(d)["containers"][0].update(imagePulPolicy="Always")),
        (deployment, lambda d: _pod_spec(d)["containers"][0]["ports"][0].update(containerPort="x")),
        (deployment, lambda d: d["spec"]["template"]["metadata"]["annotations"].update(p=9100)),
        (scaled, lambda d: d["spec"].update(minReplicas=2)),
        (scaled, lambda d: d["spec"]["triggers"][0]["metadata"].update(threshold=10)),
        (scaled, lambda d: d["spec"]["scaleTargetRef"].pop("name")),
    ]
    for doc, mutate in mutations:
        broken = copy.deepcopy(doc)
        mutate(broken)
        assert _k8s_schema_errors(broken), f"a broken {doc['kind']} passed its schema"


def test_k8s_pods_are_non_root_and_bounded() -> None:
    image = _list(_kustomization()["images"], "images")[0]["name"]
    for doc in _workloads():
        name = doc["metadata"]["name"]
        assert _pod_spec(doc)["securityContext"]["runAsNonRoot"] is True, name
        for container in _containers(doc):
            assert container["image"] == image, f"{name}: kustomization does not set its image"
            resources = _map(container.get("resources"), f"{name} resources")
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= _map(resources.get(part), f"{name} {part}").keys()
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


# --- graceful shutdown -----------------------------------------------------------------------

DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(value: str) -> float:
    """A compose duration such as 60s or 1m30s, in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"bad duration {value!r}"
    return sum(float(n) * DURATION_UNITS[u] for n, u in parts)


def test_duration_parser() -> None:
    assert _duration("60s") == 60.0
    assert _duration("1m30s") == 90.0
    assert _duration("500ms") == 0.5


# api: `server.stop(shutdown_grace)`; worker: `worker.stop(shutdown_grace)`, then the rest.
@pytest.mark.parametrize("name", ["api", "worker"])
def test_shutdown_grace_fits_before_sigkill(name: str) -> None:
    """CONVEYOR_SHUTDOWN_GRACE_SECONDS must end before the container is killed, with room left
    to stop the server and close connections."""
    svc = _services()[name]
    compose_kill = _duration(str(svc.get("stop_grace_period", f"{DOCKER_STOP_GRACE_DEFAULT}s")))
    compose_grace = _compose_settings(name).shutdown_grace_seconds
    assert compose_grace < compose_kill, (
        f"compose {name}: drains {compose_grace}s, stop_grace_period is {compose_kill}s"
    )
    deployment = _of_kind("Deployment")[f"conveyor-{name}"]
    k8s_kill = float(
        _pod_spec(deployment).get("terminationGracePeriodSeconds", K8S_TERMINATION_GRACE_DEFAULT)
    )
    # The period runs from the start of the preStop hook: SIGTERM comes after it.
    k8s_grace = _pre_stop_seconds(deployment) + _k8s_settings(deployment).shutdown_grace_seconds
    assert k8s_grace < k8s_kill, (
        f"k8s {name}: preStop and drain take {k8s_grace}s, "
        f"terminationGracePeriodSeconds is {k8s_kill}"
    )


def _pre_stop_seconds(deployment: dict[str, Any]) -> float:
    """How long the container's preStop hook pauses (a `sleep`), 0 without one."""
    [container] = _containers(deployment)
    hook = container.get("lifecycle", {}).get("preStop")
    if hook is None:
        return 0.0
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, f"preStop {command}: its length is unknown"
    return float(command[1])


def test_api_pauses_before_sigterm() -> None:
    """The api's Service stops routing to a terminating pod a moment after it is told to stop;
    the preStop pause keeps serving calls that arrive in that moment."""
    api = _of_kind("Deployment")["conveyor-api"]
    # An exec `sleep`: the image is python:*-slim (checked above), which has coreutils.
    assert 0 < _pre_stop_seconds(api) <= 10


def test_workers_drain_longer_than_the_default() -> None:
    """Running jobs get most of the termination period, not the 10 s default."""
    default = Settings.model_fields["shutdown_grace_seconds"].default
    deployment = _of_kind("Deployment")["conveyor-worker"]
    for where, settings in [
        ("compose", _compose_settings("worker")),
        ("k8s", _k8s_settings(deployment)),
    ]:
        assert settings.shutdown_grace_seconds > default, f"{where}: worker drain is the default"
