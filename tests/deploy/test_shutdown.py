"""A worker's drain and the api's pause fit in the time each is given before SIGKILL."""

from __future__ import annotations

import pytest

from conveyor.config import Settings
from tests.deploy.compose import _compose_settings, _services
from tests.deploy.kubernetes import _k8s_settings, _of_kind, _pod_spec, _pre_stop_seconds
from tests.deploy.manifests import (
    DOCKER_STOP_GRACE_DEFAULT,
    K8S_TERMINATION_GRACE_DEFAULT,
    _duration,
)


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
