"""The `conveyor` CLI against the real stack: exit codes and JSON for scripts."""

from __future__ import annotations

import json

from tests.processes import Keys, Stack


def test_submit_wait_exits_zero_on_success(stack: Stack, keys: Keys) -> None:
    out = stack.cli("submit", "noop", "--wait", "--json", key=keys.alice)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert lines[0]["state"] == "JOB_STATE_QUEUED"
    assert lines[-1]["job"]["state"] == "JOB_STATE_SUCCEEDED"


def test_watch_exits_non_zero_when_the_job_dies(stack: Stack, keys: Keys) -> None:
    out = stack.cli("submit", "fail", "--payload", '{"permanent": true}', "--json", key=keys.alice)
    job_id = json.loads(out.stdout)["id"]
    watched = stack.cli("watch", job_id, key=keys.alice, check=False)
    assert watched.returncode == 1
    assert "DEAD" in watched.stdout


def test_get_cancel_and_list(stack: Stack, keys: Keys) -> None:
    out = stack.cli(
        "submit", "noop", "--queue", "parked", "--priority", "9", "--json", key=keys.alice
    )
    job = json.loads(out.stdout)
    got = json.loads(stack.cli("get", job["id"], "--json", key=keys.alice).stdout)
    assert got["id"] == job["id"] and got["priority"] == 9
    cancelled = json.loads(stack.cli("cancel", job["id"], "--json", key=keys.alice).stdout)
    assert cancelled["state"] == "JOB_STATE_CANCELLED"
    listed = json.loads(stack.cli("list", "--state", "cancelled", "--json", key=keys.alice).stdout)
    assert job["id"] in [j["id"] for j in listed["jobs"]]


def test_errors_are_clear_and_non_zero(stack: Stack, keys: Keys) -> None:
    bad = stack.cli("submit", "noop", "--payload", "[1]", key=keys.alice, check=False)
    assert bad.returncode == 2 and "JSON object" in bad.stderr
    missing = stack.cli("get", "01a20882-0767-7403-bae1-c2539d44da27", key=keys.alice, check=False)
    assert missing.returncode == 2 and "NOT_FOUND" in missing.stderr
    anonymous = stack.cli("list", check=False)
    assert anonymous.returncode == 2 and "UNAUTHENTICATED" in anonymous.stderr


def test_every_command_has_help(stack: Stack) -> None:
    for command in [
        "dev",
        "api",
        "worker",
        "scheduler",
        "migrate",
        "submit",
        "get",
        "watch",
        "cancel",
        "list",
    ]:
        assert "Usage" in stack.cli(command, "--help").stdout
    assert "--owner" in stack.cli("keys", "create", "--help").stdout
