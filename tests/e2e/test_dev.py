"""`conveyor dev`: the two-command promise. On nothing but this checkout it starts Redis,
SQLite, api, worker and scheduler; a sleep job submitted with grpcurl is watched to
SUCCEEDED; Ctrl-C (SIGINT) stops everything and exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from conveyor.cli.dev import wait_serving
from conveyor.client import Client, Job, JobState
from conveyor.embedded import free_port
from conveyor.errors import InvalidArgument
from tests.e2e.test_grpcurl import GRPCURL, stream
from tests.processes import CONVEYOR

DEV_KEY = "cvk_dev_test_key"


def check_folder_store_links(api: str, objects: Path) -> None:
    """Dev mode keeps artifacts in a folder; GetJobResult's links to them are served by
    the API, download the right bytes, and stop working once they expire (403)."""
    rows = [{"n": i, "word": f"w{i}"} for i in range(500)]
    with Client(api, api_key=DEV_KEY) as client:
        payload = {"rows": rows, "columns": ["n", "word"], "name": "words.csv"}
        job = client.submit("csv.export", payload)
        for _ in range(300):  # a sync client has no stream helper here; the job is short
            if client.get(job.id).state == JobState.SUCCEEDED:
                break
            time.sleep(0.05)
        found = client.result(job.id)
    (artifact,) = found.artifacts
    expected = "n,word\r\n" + "".join(f"{i},w{i}\r\n" for i in range(500))  # RFC 4180
    with urllib.request.urlopen(artifact.url, timeout=10) as response:
        assert response.read().decode() == expected
    assert (objects / "jobs" / job.id / "artifacts" / "words.csv").read_bytes() == expected.encode()
    assert artifact.url_expire_time is not None
    time.sleep(max(artifact.url_expire_time.timestamp() - time.time(), 0) + 1.1)
    with pytest.raises(urllib.error.HTTPError) as expired:
        urllib.request.urlopen(artifact.url, timeout=10)
    assert expired.value.code == 403


def dev_env(tmp_path: Path) -> tuple[dict[str, str], str]:
    """The environment of a `conveyor dev` with its data in `tmp_path / "data"`, on free ports,
    accepting DEV_KEY, and none of the caller's CONVEYOR_* settings; and its API address."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    api = f"127.0.0.1:{free_port()}"
    env.update(
        CONVEYOR_DATA_DIR=str(tmp_path / "data"),
        CONVEYOR_API_ADDR=api,
        CONVEYOR_WORKER_ADDR=f"127.0.0.1:{free_port()}",
        CONVEYOR_SCHEDULER_ADDR=f"127.0.0.1:{free_port()}",
        CONVEYOR_DEV_API_KEY=DEV_KEY,
        CONVEYOR_DOWNLOAD_ADDR=f"127.0.0.1:{free_port()}",
        CONVEYOR_DASHBOARD_ADDR=f"127.0.0.1:{free_port()}",
    )
    return env, api


def test_dev_runs_everything_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    env, api = dev_env(tmp_path)
    env["CONVEYOR_ARTIFACT_URL_SECONDS"] = "2"
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        dev = subprocess.Popen([CONVEYOR, "dev"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_serving(api, timeout=60), log.read_text()
        auth = ["-H", "authorization: Bearer cvk_dev_test_key"]
        body = '{"type": "sleep", "payload": {"seconds": 0.3, "steps": 3}}'
        submitted = subprocess.run(
            [GRPCURL, "-plaintext", *auth, "-d", body, api, "conveyor.v1.JobService/SubmitJob"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert submitted.returncode == 0, submitted.stderr
        job_id = json.loads(submitted.stdout)["job"]["id"]
        watched = subprocess.run(
            [
                GRPCURL,
                "-plaintext",
                *auth,
                "-d",
                json.dumps({"id": job_id}),
                api,
                "conveyor.v1.JobService/WatchJob",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert stream(watched.stdout)[-1]["job"]["state"] == "JOB_STATE_SUCCEEDED"  # type: ignore[index]
        assert (tmp_path / "data" / "conveyor.db").exists()
        check_folder_store_links(api, tmp_path / "data" / "objects")
        dashboard = f"http://{env['CONVEYOR_DASHBOARD_ADDR']}"
        with urllib.request.urlopen(f"{dashboard}/login", timeout=10) as page:
            assert 'name="api_key"' in page.read().decode()
        children = psutil.Process(dev.pid).children(recursive=True)
        assert len(children) >= 5  # redis, api, worker, scheduler, dashboard
    finally:
        dev.send_signal(signal.SIGINT)
        code = dev.wait(30)
    banner = log.read_text()
    assert code == 0, banner
    assert DEV_KEY in banner and "grpcurl" in banner
    assert dashboard in banner  # its URL, to open
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)


REPORTS = """
from datetime import timedelta

from pydantic import BaseModel, Field

from conveyor.handlers import SyncJobContext, handler


class ReportPayload(BaseModel, extra="forbid"):
    account: str = Field(min_length=1)
    month: str = Field(pattern=r"^\\d{4}-\\d{2}$")


@handler("report.build", max_attempts=5, retention=timedelta(days=30))
def build_report(payload: ReportPayload, ctx: SyncJobContext) -> dict[str, int]:
    return {"rows": 2}
"""


def until_ended(client: Client, job_id: str) -> Job:
    """The job once it has ended, followed on its stream."""
    for update in client.watch(job_id):
        if update.job.state in (JobState.SUCCEEDED, JobState.DEAD):
            return update.job
    raise AssertionError("the stream ended before the job did")


def test_your_own_handler_runs_with_one_command_from_your_folder(tmp_path: Path) -> None:
    """Guards issue 23, item 1, as docs/handlers.md tells it, from a folder outside the
    repository: `conveyor dev --handlers mypkg.reports` imports the app's module from the
    current folder, in the api too (a bad payload is refused at submit, the type's 5
    attempts apply) and in the worker (the job runs); then `conveyor worker --handlers
    mypkg.reports --queues reports`, with no setting at all, joins that dev stack on a free
    WorkerControl port and runs the queue only it serves. A module that is not there is
    one line saying where it was looked for."""
    app = tmp_path / "app"
    (app / "mypkg").mkdir(parents=True)
    (app / "mypkg" / "__init__.py").write_text("")
    (app / "mypkg" / "reports.py").write_text(REPORTS)
    env, api = dev_env(tmp_path)
    del env["CONVEYOR_DATA_DIR"]  # dev's own default, .conveyor in the app's folder
    bare = {k: v for k, v in env.items() if not k.startswith("CONVEYOR_")}
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        dev = subprocess.Popen([CONVEYOR, "dev", "--handlers", "mypkg.reports"], cwd=app,
                               env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    joined: subprocess.Popen[bytes] | None = None
    try:
        assert wait_serving(api, timeout=60), log.read_text()
        with Client(api, api_key=DEV_KEY) as client:
            with pytest.raises(InvalidArgument) as refused:
                client.submit("report.build", {"account": "acme", "month": "May"})
            assert [v.field for v in refused.value.violations] == ["payload.month"]
            job = client.submit("report.build", {"account": "acme", "month": "2026-05"})
            assert job.max_attempts == 5, "the api loaded the module: the type's policy"
            assert until_ended(client, job.id).state == JobState.SUCCEEDED
            found = client.result(job.id).result
            assert found is not None and found["rows"] == 2

            worker_log = tmp_path / "worker.log"
            with worker_log.open("wb") as out:
                joined = subprocess.Popen(
                    [CONVEYOR, "worker", "--handlers", "mypkg.reports", "--queues", "reports"],
                    cwd=app, env=bare, stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
            queued = client.submit(
                "report.build", {"account": "acme", "month": "2026-06"}, queue="reports"
            )
            ended = until_ended(client, queued.id)
            assert ended.state == JobState.SUCCEEDED, worker_log.read_text()
        assert "joining the `conveyor dev` stack" in worker_log.read_text()
    finally:
        if joined is not None:
            joined.send_signal(signal.SIGTERM)
            assert joined.wait(30) == 0, (tmp_path / "worker.log").read_text()
        dev.send_signal(signal.SIGINT)
        assert dev.wait(30) == 0, log.read_text()
    assert not (app / ".conveyor" / "dev-stack.json").exists(), "dev removes it as it stops"

    missing = subprocess.run(
        [CONVEYOR, "worker", "--handlers", "nosuch.reports"], cwd=app, capture_output=True,
        text=True, timeout=60, env={**bare, "CONVEYOR_REDIS_URL": "redis://127.0.0.1:9"},
    )  # fmt: skip
    assert missing.returncode == 2, missing.stderr
    assert (
        f"handler module 'nosuch.reports' not found (no 'nosuch' in the current folder {app}"
        in (missing.stderr)
    )
    assert "Traceback" not in missing.stderr
