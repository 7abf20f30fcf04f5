"""Checks of deploy/: Docker and Kubernetes are not on the test machine, so read the files.

Every YAML file must parse; the compose file's references (depends_on, mounts, build context,
health checks) must point at things that exist; every CONVEYOR_* variable must be one the
services know (DESIGN.md §9, plus the ones reserved for future issues); the Kubernetes manifests
must be well formed and agree with each other (probes and ports, selectors and labels,
ConfigMap/Secret references, the kustomization's file list); the Dockerfile must run `conveyor`
as a non-root user. The health-check one-liner is run against a real gRPC health server.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

# Every CONVEYOR_* variable the deploy files may set.
ALLOWED_CONVEYOR_VARS = frozenset(
    {
        # DESIGN.md §9.
        "CONVEYOR_API_ADDR",
        "CONVEYOR_WORKER_ADDR",
        "CONVEYOR_DATABASE_URL",
        "CONVEYOR_REDIS_URL",
        "CONVEYOR_WORKER_CONCURRENCY",
        "CONVEYOR_HANDLERS",
        # Reserved for future issues (object store, SMTP).
        "CONVEYOR_S3_ENDPOINT",
        "CONVEYOR_S3_ACCESS_KEY",
        "CONVEYOR_S3_SECRET_KEY",
        "CONVEYOR_S3_BUCKET",
        "CONVEYOR_SMTP_HOST",
        "CONVEYOR_SMTP_PORT",
    }
)
# Secrets: in the Kubernetes Secret, never in the ConfigMap.
SECRET_VARS = frozenset({"CONVEYOR_DATABASE_URL", "CONVEYOR_REDIS_URL"})
SUBCOMMANDS = frozenset({"api", "worker", "scheduler", "migrate"})

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
    assert seen == ALLOWED_CONVEYOR_VARS, (
        f"compose never sets {sorted(ALLOWED_CONVEYOR_VARS - seen)}"
    )


def test_compose_ports_and_replicas() -> None:
    services = _services()
    api, worker = services["api"], services["worker"]
    assert _environment(api)["CONVEYOR_API_ADDR"] == "0.0.0.0:50051"
    assert "50051:50051" in [str(p) for p in api.get("ports", [])]
    assert _environment(worker)["CONVEYOR_WORKER_ADDR"] == "0.0.0.0:50052"
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


def _health_code() -> str:
    [check] = [i for i in _dockerfile() if i.keyword == "HEALTHCHECK"]
    _, _, cmd = check.args.partition("CMD ")
    argv = json.loads(cmd)
    assert argv[:2] == ["python", "-c"], argv
    code = argv[2]
    assert isinstance(code, str)
    return code


@pytest.mark.parametrize("name", ["api", "worker"])
def test_compose_health_checks_use_the_one_liner(name: str) -> None:
    svc = _services()[name]
    test = _healthcheck_test(svc)
    assert test is not None, f"{name} has no health check"
    assert test[:4] == ["CMD", "python", "-c", _health_code()]
    addr = _environment(svc)["CONVEYOR_API_ADDR" if name == "api" else "CONVEYOR_WORKER_ADDR"]
    assert test[4:] == [addr.rsplit(":", 1)[1]], f"{name} probes another port than it serves"


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
    assert secret_vars >= SECRET_VARS
    required = {
        "CONVEYOR_API_ADDR",
        "CONVEYOR_WORKER_ADDR",
        "CONVEYOR_WORKER_CONCURRENCY",
        "CONVEYOR_HANDLERS",
    }
    assert config_vars >= required
    assert config["data"]["CONVEYOR_API_ADDR"] == "0.0.0.0:50051"
    assert config["data"]["CONVEYOR_WORKER_ADDR"] == "0.0.0.0:50052"


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
    assert probed.get("conveyor-api") == {50051}
    assert probed.get("conveyor-worker") == {50052}


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
