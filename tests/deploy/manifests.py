"""What deploy/ holds and what the services read: the files, the CONVEYOR_* variables
(every one a field of `conveyor.config.Settings`), YAML loading, and durations as compose and
Kubernetes write them. A helper of the deploy tests, not a test."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import yaml
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

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


# Services that are clients of the API and nothing else (no database, Redis, object store or
# SMTP, so no Secret), with the port each serves HTTP on.
API_CLIENTS = {"dashboard": 8080}


SUBCOMMANDS = frozenset({*SERVICE_ADDR, *API_CLIENTS, "migrate"})


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


# The environment file that switches compose to its Redis Cluster (`--env-file`).
REDIS_CLUSTER_ENV_FILE = COMPOSE_DIR / "redis-cluster.env"


REDIS_CLUSTER_PROFILE = "redis-cluster"


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


DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(value: str) -> float:
    """A compose duration such as 60s or 1m30s, in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"bad duration {value!r}"
    return sum(float(n) * DURATION_UNITS[u] for n, u in parts)
