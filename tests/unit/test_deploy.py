"""Checks of deploy/: Docker and Kubernetes are not on the test machine, so read the files.

Every YAML file must parse; the compose file's references (depends_on, mounts, build context,
health checks) must point at things that exist; every CONVEYOR_* variable must be a field of
`conveyor.config.Settings` (or one explicitly reserved for a future issue), and the values each
service ends up with must validate; the Kubernetes manifests must be well formed and agree with
each other and with the configured addresses (probes and ports, selectors and labels,
ConfigMap/Secret references, the kustomization's file list); a worker's drain must fit in the
time it is given before SIGKILL; the Dockerfile must run `conveyor` as a non-root user. The
health-check one-liner is run against a real gRPC health server.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from conveyor.cli.app import app as cli_app
from conveyor.config import Settings

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
# Never in the ConfigMap.
SECRET_VARS = REQUIRED_SECRETS | {
    "CONVEYOR_API_KEY",
    "CONVEYOR_DEV_API_KEY",
    "CONVEYOR_S3_SECRET_KEY",
}
# The long-running services, and the Settings field holding the address each serves gRPC on.
SERVICE_ADDR = {"api": "api_addr", "worker": "worker_addr", "scheduler": "scheduler_addr"}
# What each service's port is: the address's port in the image, compose and Kubernetes.
SERVICE_PORT = {"api": 50051, "worker": 50052, "scheduler": 50053}
SUBCOMMANDS = frozenset({*SERVICE_ADDR, "migrate"})
# How long a stopped container gets before SIGKILL when nothing says otherwise.
DOCKER_STOP_GRACE_DEFAULT = 10.0
K8S_TERMINATION_GRACE_DEFAULT = 30.0

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
K8S_DIR = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"

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
    """A plain text scan, comments included: a typo anywhere in deploy/ is caught."""
    for path in [*_yaml_files(), DOCKERFILE]:
        unknown = set(VAR_RE.findall(path.read_text(encoding="utf-8"))) - ALLOWED_CONVEYOR_VARS
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


def test_compose_depends_on_targets_exist() -> None:
    services = _services()
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, svc in services.items():
        for target, condition in _depends_on(svc).items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert target != name, f"{name} depends on itself"
            assert condition in conditions, f"{name} -> {target}: condition {condition}"
            target_svc = services[target]
            if condition == "service_healthy":
                # Conveyor's image has a HEALTHCHECK of its own; other images need one here.
                has_own = "build" in target_svc
                assert has_own or _healthcheck_test(target_svc), f"{target} has no health check"
            if condition == "service_completed_successfully":
                restart = str(target_svc.get("restart", "no"))
                assert restart in {"no", "on-failure"}, f"one-shot {target} has restart {restart}"


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
    [expose] = [i.args.split() for i in _dockerfile() if i.keyword == "EXPOSE"]
    assert sorted(int(p) for p in expose) == sorted(SERVICE_PORT.values())


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
    assert deployments["conveyor-api"]["spec"]["replicas"] == 2
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


def _k8s_settings(doc: dict[str, Any]) -> Settings:
    """What a workload's (single) container reads: image ENV, envFrom, then env, in that order."""
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
    return _settings(env)


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
    k8s_grace = _k8s_settings(deployment).shutdown_grace_seconds
    assert k8s_grace < k8s_kill, (
        f"k8s {name}: drains {k8s_grace}s, terminationGracePeriodSeconds is {k8s_kill}"
    )


def test_workers_drain_longer_than_the_default() -> None:
    """Running jobs get most of the termination period, not the 10 s default."""
    default = Settings.model_fields["shutdown_grace_seconds"].default
    deployment = _of_kind("Deployment")["conveyor-worker"]
    for where, settings in [
        ("compose", _compose_settings("worker")),
        ("k8s", _k8s_settings(deployment)),
    ]:
        assert settings.shutdown_grace_seconds > default, f"{where}: worker drain is the default"
