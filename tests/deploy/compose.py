"""Reading deploy/compose/compose.yaml as Docker Compose does: services, dependencies, health
checks, environment, interpolation and the Compose Specification's schema. A helper, not a test."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema  # type: ignore[import-untyped]

from conveyor.config import Settings
from tests.deploy.image import _image_env
from tests.deploy.manifests import (
    COMPOSE_DIR,
    COMPOSE_FILE,
    COMPOSE_SCHEMA,
    REDIS_CLUSTER_ENV_FILE,
    _host_port,
    _load,
    _map,
    _settings,
)


def _compose() -> dict[str, Any]:
    [doc] = _load(COMPOSE_FILE)
    return _map(doc, "compose.yaml")


def _services(env: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Every service, enabled or not, as written; or, given `env` (what an --env-file sets),
    interpolated from it."""
    compose = _compose() if env is None else _interpolated_compose(env)
    services = _map(compose.get("services"), "services")
    return {name: _map(svc, f"service {name}") for name, svc in services.items()}


def _dotenv(path: Path) -> dict[str, str]:
    """An environment file as compose reads one: KEY=VALUE lines, # comments, blank lines."""
    env = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        assert eq and re.fullmatch(r"[A-Za-z_]\w*", key), f"{path.name}:{number}: {raw!r}"
        assert value == value.strip() and value[:1] not in {"'", '"'}, f"{path.name}:{number}"
        env[key] = value
    return env


# What each way of starting compose sets, by name: nothing (one Redis), or the Redis Cluster's
# environment file (which also names the profile, COMPOSE_PROFILES).
COMPOSE_VARIANTS: dict[str, dict[str, str]] = {
    "redis": {},
    "redis-cluster": _dotenv(REDIS_CLUSTER_ENV_FILE),
}


def _profiles(env: Mapping[str, str]) -> set[str]:
    return {p.strip() for p in env.get("COMPOSE_PROFILES", "").split(",") if p.strip()}


def _enabled(svc: dict[str, Any], env: Mapping[str, str]) -> bool:
    """Whether `docker compose up` starts the service: it has no profile, or an active one."""
    profiles = set(svc.get("profiles", []))
    return not profiles or bool(profiles & _profiles(env))


def _enabled_services(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The services `docker compose up` starts with `env`, interpolated from it."""
    return {name: svc for name, svc in _services(env).items() if _enabled(svc, env)}


def _depends_on(svc: dict[str, Any]) -> dict[str, str]:
    """depends_on in either form, as {target: condition}."""
    deps = svc.get("depends_on", {})
    if isinstance(deps, list):
        return {str(d): "service_started" for d in deps}
    return {
        name: str(_map(spec, name).get("condition", "service_started"))
        for name, spec in _map(deps, "depends_on").items()
    }


def _optional_dependencies(svc: dict[str, Any]) -> set[str]:
    """The depends_on targets marked `required: false`: compose starts the service without
    them when their profile is off."""
    deps = svc.get("depends_on", {})
    if isinstance(deps, list):
        return set()
    return {
        name
        for name, spec in _map(deps, "depends_on").items()
        if _map(spec, name).get("required", True) is False
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


def _compose_settings(name: str, env: Mapping[str, str] | None = None) -> Settings:
    """What a compose service's process reads: the image's ENV, then compose's environment as
    interpolated from `env` (nothing set, by default)."""
    return _settings({**_image_env(), **_environment(_services(env or {})[name])})


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


def _interpolated_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as `docker compose up` reads it with `env` set (by default nothing)."""
    return _map(_interpolate(_compose(), env or {}), "compose.yaml")


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


def _metrics_addr(settings: Settings) -> tuple[str, int]:
    addr = settings.metrics_addr
    assert addr and addr != "off", "metrics are not served on a known address"
    return _host_port(addr)
