"""Every CONVEYOR_* variable in deploy/ is a field of `Settings`; every YAML file parses."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.cli.app import app as cli_app
from conveyor.config import Settings
from tests.deploy.manifests import (
    ALLOWED_CONVEYOR_VARS,
    COMPOSE_FILE,
    DASHBOARD_FILE,
    DEPLOY,
    DOCKERFILE,
    ENV_PREFIX,
    FUTURE_VARS,
    REPO,
    SECRET_VARS,
    SETTINGS_VARS,
    SUBCOMMANDS,
    VAR_RE,
    _load,
    _map,
    _yaml_files,
)


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
