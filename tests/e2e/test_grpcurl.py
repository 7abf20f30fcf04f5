"""grpcurl, with no proto files at hand: reflection lists the services and a JSON session
submits a job and watches it to SUCCEEDED (the README's grpcurl session)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.processes import Keys, Stack

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


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
    body = json.dumps({"type": "sleep", "payload": {"seconds": 0.3, "steps": 3}})
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


def test_health_is_serving(stack: Stack) -> None:
    out = grpcurl(stack, stack.api_addr, "grpc.health.v1.Health/Check")
    assert json.loads(out.stdout) == {"status": "SERVING"}
