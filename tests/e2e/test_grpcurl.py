"""grpcurl, with no proto files at hand: reflection lists the services and a JSON session
submits a job and watches it to SUCCEEDED (the README's grpcurl session)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import Keys, Stack

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
# grpcurl sees the API's reflection and JSON, whatever Redis is behind it.
pytestmark = pytest.mark.one_redis_shape


def grpcurl(stack: Stack, *args: str, key: str = "") -> subprocess.CompletedProcess[str]:
    auth = ["-H", f"authorization: Bearer {key}"] if key else []
    return subprocess.run(
        [GRPCURL, "-plaintext", *auth, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def stream(text: str) -> list[dict[str, object]]:
    """grpcurl prints one pretty JSON document per streamed message."""
    decoder, docs, pos = json.JSONDecoder(), [], 0
    text = text.strip()
    while pos < len(text):
        doc, end = decoder.raw_decode(text, pos)
        docs.append(doc)
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return docs


def test_reflection_lists_services(stack: Stack) -> None:
    out = grpcurl(stack, stack.api_addr, "list")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "conveyor.v1.ApiKeyService",
        "conveyor.v1.JobService",
        "conveyor.v1.ScheduleService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    described = grpcurl(stack, stack.api_addr, "describe", "conveyor.v1.Job")
    assert "progress_message" in described.stdout


def test_submit_and_watch_with_grpcurl(stack: Stack, keys: Keys) -> None:
    # Long enough that grpcurl (a process start) attaches while the job still runs.
    body = json.dumps({"type": "sleep", "payload": {"seconds": 2, "steps": 4}})
    out = grpcurl(
        stack, "-d", body, stack.api_addr, "conveyor.v1.JobService/SubmitJob", key=keys.alice
    )
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)["job"]
    assert job["state"] == "JOB_STATE_QUEUED"
    watched = grpcurl(
        stack,
        "-d",
        json.dumps({"id": job["id"]}),
        stack.api_addr,
        "conveyor.v1.JobService/WatchJob",
        key=keys.alice,
    )
    assert watched.returncode == 0, watched.stderr
    updates = stream(watched.stdout)
    assert updates[-1]["job"]["state"] == "JOB_STATE_SUCCEEDED"  # type: ignore[index]
    assert any(0 < u["job"].get("progress", 0) < 100 for u in updates)  # type: ignore[attr-defined]


def test_grpcurl_sees_rich_errors(stack: Stack, keys: Keys) -> None:
    out = grpcurl(
        stack,
        "-d",
        '{"type": "noop", "priority": 99}',
        stack.api_addr,
        "conveyor.v1.JobService/SubmitJob",
        key=keys.alice,
    )
    assert out.returncode != 0
    assert "InvalidArgument" in out.stderr and "priority" in out.stderr
    unauth = grpcurl(stack, "-d", "{}", stack.api_addr, "conveyor.v1.JobService/ListJobs")
    assert "Unauthenticated" in unauth.stderr


def test_the_readme_schedule_and_queue_stats_calls(stack: Stack, keys: Keys) -> None:
    """Guards the README's grpcurl examples for ScheduleService and GetQueueStats: the
    JSON shapes it shows are the ones the api takes and gives."""
    body = json.dumps(
        {
            "schedule": {
                "cron": "0 3 * * *",
                "time_zone": "Europe/Berlin",
                "job_template": {"type": "noop", "queue": "reports"},
                "catch_up": "CATCH_UP_POLICY_RUN_ONCE",
            }
        }
    )
    made = grpcurl(
        stack, "-d", body, stack.api_addr, "conveyor.v1.ScheduleService/CreateSchedule",
        key=keys.alice,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    schedule = json.loads(made.stdout)["schedule"]
    assert schedule["time_zone"] == "Europe/Berlin" and len(schedule["next_run_times"]) == 5
    assert schedule["job_template"] == {"type": "noop", "queue": "reports"}
    assert all(t.endswith(("T01:00:00Z", "T02:00:00Z")) for t in schedule["next_run_times"])
    stats = grpcurl(
        stack, "-d", '{"queue": "reports"}', stack.api_addr,
        "conveyor.v1.JobService/GetQueueStats", key=keys.admin,
    )  # fmt: skip
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["queues"][0]["queue"] == "reports"


def test_health_is_serving(stack: Stack) -> None:
    out = grpcurl(stack, stack.api_addr, "grpc.health.v1.Health/Check")
    assert json.loads(out.stdout) == {"status": "SERVING"}


def test_the_readme_list_call_with_time_bounds(stack: Stack, keys: Keys) -> None:
    """Guards the README's ListJobs call: grpcurl sends `create_time_start`/`_end` as RFC 3339
    strings, and only jobs made inside [start, end) come back."""
    made = grpcurl(
        stack, "-d", json.dumps({"type": "noop", "queue": "parked"}), stack.api_addr,
        "conveyor.v1.JobService/SubmitJob", key=keys.alice,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    job = json.loads(made.stdout)["job"]

    def listed(start: str, end: str) -> list[str]:
        body = json.dumps({"queue": "parked", "create_time_start": start, "create_time_end": end})
        out = grpcurl(
            stack, "-d", body, stack.api_addr, "conveyor.v1.JobService/ListJobs", key=keys.alice
        )
        assert out.returncode == 0, out.stderr
        return [j["id"] for j in json.loads(out.stdout).get("jobs", [])]

    assert job["id"] in listed(job["create_time"], "2999-01-01T00:00:00Z")
    assert job["id"] not in listed("2000-01-01T00:00:00Z", job["create_time"])
