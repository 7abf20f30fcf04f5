"""The `conveyor` CLI against the real stack: exit codes and JSON for scripts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from conveyor.cli.app import app as cli_app
from conveyor.client import Client, JobState
from tests.processes import CONVEYOR, Keys, Stack


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
    # Why it waits, as text and as data (no worker ever served `parked`).
    assert got["blocked"] == {"kind": "BLOCKED_KIND_QUEUE_NEVER_SERVED", "queue": "parked"}
    assert got["blocked_reason"].startswith("no worker has ever served queue 'parked'")
    cancelled = json.loads(stack.cli("cancel", job["id"], "--json", key=keys.alice).stdout)
    assert cancelled["state"] == "JOB_STATE_CANCELLED"
    assert "blocked" not in cancelled and "blocked_reason" not in cancelled
    listed = json.loads(stack.cli("list", "--state", "cancelled", "--json", key=keys.alice).stdout)
    assert job["id"] in [j["id"] for j in listed["jobs"]]


def test_labels_are_given_shown_and_filtered_on(stack: Stack, keys: Keys) -> None:
    """`submit --label K=V` tags a job, `get` shows its labels, `list --filter` finds it;
    a `--label` without `=` is refused before anything is sent."""
    run = f"cli-{os.getpid()}-{threading.get_ident()}"
    out = stack.cli("submit", "noop", "--queue", "parked", "--label", f"run={run}",
                    "--label", "team=billing", "--json", key=keys.alice)  # fmt: skip
    job = json.loads(out.stdout)
    assert job["labels"] == {"run": run, "team": "billing"}
    human = stack.cli("get", job["id"], key=keys.alice).stdout
    assert f"run={run} team=billing" in human
    listed = stack.cli("list", "--filter", f'labels.run = "{run}" AND labels.team = billing',
                       "--json", key=keys.alice)  # fmt: skip
    assert [j["id"] for j in json.loads(listed.stdout)["jobs"]] == [job["id"]]
    bad = stack.cli("submit", "noop", "--label", "team", key=keys.alice, check=False)
    assert bad.returncode == 2 and "expected KEY=VALUE" in bad.stderr
    refused = stack.cli("list", "--filter", "labels.run =", key=keys.alice, check=False)
    assert refused.returncode == 2 and "filter" in refused.stderr


def test_errors_are_clear_and_non_zero(stack: Stack, keys: Keys) -> None:
    bad = stack.cli("submit", "noop", "--payload", "[1]", key=keys.alice, check=False)
    assert bad.returncode == 2 and "JSON object" in bad.stderr
    # Every built-in checks its payload at submit (issue 23, item 6: sleep took these).
    for payload, field in (('{"seconds": "three"}', "payload.seconds"),
                           ('{"secs": 3}', "payload.secs")):  # fmt: skip
        refused = stack.cli("submit", "sleep", "--payload", payload, key=keys.alice, check=False)
        assert refused.returncode == 2 and "INVALID_ARGUMENT" in refused.stderr
        assert field in refused.stderr
    missing = stack.cli("get", "01a20882-0767-7403-bae1-c2539d44da27", key=keys.alice, check=False)
    assert missing.returncode == 2 and "NOT_FOUND" in missing.stderr
    anonymous = stack.cli("list", check=False)
    assert anonymous.returncode == 2 and "UNAUTHENTICATED" in anonymous.stderr
    assert "set CONVEYOR_API_KEY" in anonymous.stderr, "says what to do, not gRPC's words"


def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`conveyor ARGS` in `cwd`, with no CONVEYOR_* setting but `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    return subprocess.run([CONVEYOR, *args], cwd=cwd, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_ordinary_mistakes_print_a_line_not_a_traceback(tmp_path: Path) -> None:
    """Guards issue 23, item 4: `conveyor keys list` outside the folder `conveyor dev`
    runs in (its SQLite database is relative) says where it looked and what to do, in a
    line, instead of a 720-line traceback; a database that cannot be reached and a bad
    setting are a line each too, and `--debug` shows the traceback."""
    elsewhere = run_cli("keys", "list", cwd=tmp_path)
    assert elsewhere.returncode == 2
    assert elsewhere.stderr.startswith(f"error no database at {tmp_path}/.conveyor/conveyor.db")
    assert len(elsewhere.stderr.splitlines()) <= 2 and "Traceback" not in elsewhere.stderr
    down = {"CONVEYOR_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:9/none"}
    unreachable = run_cli("keys", "list", cwd=tmp_path, **down)
    assert unreachable.returncode == 2 and "UNAVAILABLE" in unreachable.stderr
    assert len(unreachable.stderr.splitlines()) <= 2
    bad = run_cli("keys", "list", cwd=tmp_path, CONVEYOR_DATABASE_URL="mysql://x/y")
    assert bad.returncode == 1 and "unsupported database URL scheme" in bad.stderr
    assert len(bad.stderr.splitlines()) == 2 and "conveyor --debug" in bad.stderr
    debug = run_cli("--debug", "keys", "list", cwd=tmp_path, CONVEYOR_DATABASE_URL="mysql://x/y")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_dead_letters_listed_retried_and_their_attempts_shown(stack: Stack, keys: Keys) -> None:
    out = stack.cli(
        "submit", "fail", "--max-attempts", "2", "--wait", "--json",
        key=keys.alice, check=False,
    )  # fmt: skip
    assert out.returncode == 1
    job_id = json.loads(out.stdout.splitlines()[0])["id"]
    dead = json.loads(stack.cli("dead", "list", "--type", "fail", "--json", key=keys.alice).stdout)
    assert job_id in [j["id"] for j in dead["jobs"]]
    assert all(j["state"] == "JOB_STATE_DEAD" for j in dead["jobs"])
    tried = json.loads(stack.cli("attempts", job_id, "--json", key=keys.alice).stdout)
    assert [(a["attempt"], a["outcome"]) for a in tried] == [
        (1, "ATTEMPT_OUTCOME_FAILED"),
        (2, "ATTEMPT_OUTCOME_FAILED"),
    ]
    human = stack.cli("attempts", job_id, key=keys.alice).stdout
    assert "#1" in human and "FAILED" in human and "failed on purpose" in human
    replayed = json.loads(
        stack.cli("retry", job_id, "--max-attempts", "1", "--json", key=keys.alice).stdout
    )
    assert replayed["max_attempts"] == 3
    assert stack.cli("watch", job_id, key=keys.alice, check=False).returncode == 1
    final = json.loads(stack.cli("get", job_id, "--json", key=keys.alice).stdout)
    assert final["state"] == "JOB_STATE_DEAD" and final["attempt"] == 3
    again = stack.cli("retry", job_id, key=keys.bob, check=False)
    assert again.returncode == 2 and "NOT_FOUND" in again.stderr


def test_queues_schedules_and_workers_from_the_command_line(stack: Stack, keys: Keys) -> None:
    """Guards the admin and schedule commands end to end: JSON for scripts, the exit code
    and the error for a user key on an admin command."""
    limited = json.loads(
        stack.cli("queues", "limits", "cli-q", "--max-running", "2", "--rate", "10",
                  "--per", "2", "--json", key=keys.admin).stdout
    )["queues"][0]  # fmt: skip
    assert limited["limits"]["max_running"] == 2 and limited["limits"]["rate_jobs"] == 10
    assert limited["limits"]["rate_interval"] == "2s"
    paused = json.loads(stack.cli("queues", "pause", "cli-q", "--json", key=keys.admin).stdout)
    assert paused["queues"][0]["paused"] is True
    assert "cli-q" in stack.cli("queues", "stats", key=keys.admin).stdout
    created = stack.cli("queues", "create", "cli-hot", "--shards", "3", key=keys.admin).stdout
    assert created.startswith("cli-hot ") and "[3 shards]" in created
    shown = stack.cli("queues", "limits", "cli-hot", key=keys.admin).stdout
    assert "shards=3" in shown
    shrunk = stack.cli("queues", "create", "cli-hot", "--shards", "2", key=keys.admin, check=False)
    assert shrunk.returncode == 2 and "FAILED_PRECONDITION" in shrunk.stderr
    denied = stack.cli("queues", "resume", "cli-q", key=keys.alice, check=False)
    assert denied.returncode == 2 and "PERMISSION_DENIED" in denied.stderr
    workers = json.loads(stack.cli("workers", "--json", key=keys.admin).stdout)["workers"]
    assert workers and all(w["concurrency"] >= 1 for w in workers)
    made = json.loads(
        stack.cli("schedules", "create", "noop", "--cron", "0 3 * * *", "--tz",
                  "Europe/Berlin", "--queue", "cli-q", "--catch-up", "once", "--json",
                  key=keys.alice).stdout
    )  # fmt: skip
    assert made["time_zone"] == "Europe/Berlin" and len(made["next_run_times"]) == 5
    assert made["catch_up"] == "CATCH_UP_POLICY_RUN_ONCE"
    listed = stack.cli("schedules", "list", key=keys.alice).stdout
    assert made["id"] in listed and "cron '0 3 * * *' Europe/Berlin" in listed
    job_id = stack.cli("schedules", "trigger", made["id"], key=keys.alice).stdout.strip()
    assert json.loads(stack.cli("get", job_id, "--json", key=keys.alice).stdout)["queue"] == "cli-q"
    stack.cli("schedules", "delete", made["id"], key=keys.alice)
    gone = stack.cli("schedules", "get", made["id"], key=keys.alice, check=False)
    assert gone.returncode == 2 and "NOT_FOUND" in gone.stderr
    bad = stack.cli("schedules", "create", "noop", "--every", "0.5", key=keys.alice, check=False)
    assert bad.returncode == 2 and "schedule.interval" in bad.stderr


def _command_paths(group: TyperGroup, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group of the CLI, found by walking it (so a new one is not missed)."""
    paths = []
    for name, command in group.commands.items():
        paths.append((*prefix, name))
        if isinstance(command, TyperGroup):
            paths.extend(_command_paths(command, (*prefix, name)))
    return paths


@pytest.mark.one_redis_shape
def test_every_command_has_help(stack: Stack) -> None:
    """Every command and group, walked from the app rather than listed by hand (the hand
    list had missed `dashboard`, `jobs` and `bulk`), answers --help; the installed entry
    point does too."""
    root = typer.main.get_command(cli_app)
    assert isinstance(root, TyperGroup)
    paths = _command_paths(root)
    assert {("dashboard",), ("dead", "retry"), ("jobs", "delete"), ("bulk", "get")} <= set(paths)
    runner = CliRunner()
    for path in paths:
        answer = runner.invoke(cli_app, [*path, "--help"])
        assert answer.exit_code == 0 and "Usage" in answer.output, (path, answer.output)
    assert "Usage" in stack.cli("dev", "--help").stdout
    assert "--owner" in stack.cli("keys", "create", "--help").stdout


def test_configuration_errors_name_the_variable_without_a_traceback(tmp_path: Path) -> None:
    """Guards the entry points: a bad setting or TLS file ends the CLI and each service with
    exit 2 and one line naming the variable, never a traceback or the value (which may be a
    secret)."""
    base = {**os.environ, "CONVEYOR_REDIS_URL": "redis://127.0.0.1:1"}
    missing = str(tmp_path / "absent.pem")
    cases = [
        ([CONVEYOR, "list"], {"CONVEYOR_LEASE_SECONDS": "s3cret-lease"}, "CONVEYOR_LEASE_SECONDS"),
        ([CONVEYOR, "list"], {"CONVEYOR_TLS_CA": missing}, "CONVEYOR_TLS_CA"),
        (
            [str(Path(CONVEYOR).with_name("conveyor-api"))],
            {"CONVEYOR_TLS_CERT": missing, "CONVEYOR_TLS_KEY": missing},
            "CONVEYOR_TLS_CERT",
        ),
        (
            [str(Path(CONVEYOR).with_name("conveyor-worker"))],
            {"CONVEYOR_WORKER_CONCURRENCY": "many"},
            "CONVEYOR_WORKER_CONCURRENCY",
        ),
    ]
    for command, env, variable in cases:
        done = subprocess.run(
            command, env={**base, **env}, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2, (command, done.stderr)
        assert done.stderr.startswith(f"conveyor: configuration error: {variable}:"), done.stderr
        assert "Traceback" not in done.stderr and "s3cret" not in done.stderr


def test_artifacts_are_listed_and_downloaded_and_retention_shown(
    stack: Stack, keys: Keys, tmp_path: Path
) -> None:
    """Guards `conveyor artifacts`, `conveyor download` (bytes checked against the
    artifact's SHA-256) and what `conveyor get` says is kept."""
    out = stack.cli(
        "submit", "test.artifact", "--payload", '{"count": 2, "size": 70000}',
        "--retention", "3600", "--wait", "--json", key=keys.alice,
    )  # fmt: skip
    job_id = json.loads(out.stdout.splitlines()[0])["id"]
    listed = json.loads(stack.cli("artifacts", job_id, "--json", key=keys.alice).stdout)
    assert [(a["name"], a["size"]) for a in listed] == [("a0.txt", "70000"), ("a1.txt", "70000")]
    target = tmp_path / "first.txt"
    stack.cli("download", job_id, "a0.txt", "-o", str(target), key=keys.alice)
    assert target.read_bytes().startswith(b"artifact 0 ") and target.stat().st_size == 70000
    human = stack.cli("get", job_id, key=keys.alice).stdout
    assert "kept until" in human
    missing = stack.cli("download", job_id, "nope.txt", key=keys.alice, check=False)
    assert missing.returncode == 2 and "no artifact 'nope.txt'" in missing.stderr
    other = stack.cli("artifacts", job_id, key=keys.bob, check=False)
    assert other.returncode == 2 and "NOT_FOUND" in other.stderr


def test_output_copies_and_pastes_whole(stack: Stack, keys: Keys, tmp_path: Path) -> None:
    """Guards issue 23, item 5: a page token is printed on one line however narrow the
    output (rich wrapped it at 80 columns); a result's whole numbers print as ints, not
    `2.0`; attempts show their times, and a running job's attempts say why none is listed
    yet; workers show their job types; `schedules get` shows the five next runs and
    `schedules delete` says what it did."""
    for _ in range(2):
        stack.cli("submit", "noop", "--queue", "parked", key=keys.bob)
    first = json.loads(stack.cli("list", "--page-size", "1", "--json", key=keys.bob).stdout)
    listed = stack.cli("list", "--page-size", "1", key=keys.bob)
    [more] = [line for line in listed.stderr.splitlines() if line.startswith("more:")]
    assert more == f"more: --page-token {first['next_page_token']}"
    assert len(more) > 80, "a token longer than the default width, so a wrap would show"

    done = json.loads(
        stack.cli("submit", "test.sync_steps", "--payload", '{"steps": 2, "delay": 0.01}',
                  "--wait", "--json", key=keys.bob).stdout.splitlines()[0]
    )  # fmt: skip
    assert stack.cli("result", done["id"], key=keys.bob).stdout.strip() == '{"done": 2}'
    tried = stack.cli("attempts", done["id"], key=keys.bob).stdout
    assert re.match(r"#1\s+SUCCEEDED\s+\d{4}-\d\d-\d\dT\S+Z → \d{4}-\d\d-\d\dT\S+Z", tried)

    hold = {"log": str(tmp_path / "hold.log"), "gate": str(tmp_path / "never")}
    held = json.loads(
        stack.cli("submit", "test.hold", "--payload", json.dumps(hold), "--json",
                  key=keys.bob).stdout
    )  # fmt: skip
    with Client(stack.api_addr, api_key=keys.bob) as client:
        for update in client.watch(held["id"]):
            if update.job.state == JobState.RUNNING:
                break
        running = stack.cli("attempts", held["id"], key=keys.bob).stdout
        client.cancel(held["id"])
    assert running.startswith("no attempt recorded yet: attempt 1 is RUNNING since 20")

    workers = stack.cli("workers", key=keys.admin).stdout
    assert "types=" in workers and "test.sync_steps" in workers
    made = json.loads(
        stack.cli("schedules", "create", "noop", "--every", "3600", "--json",
                  key=keys.bob).stdout
    )  # fmt: skip
    shown = stack.cli("schedules", "get", made["id"], key=keys.bob).stdout
    assert shown.count("next run ") == 5
    deleted = stack.cli("schedules", "delete", made["id"], key=keys.bob).stdout
    assert deleted.strip() == f"deleted schedule {made['id']} (the jobs it made stay)"


def test_following_a_waiting_job_says_why_it_waits(stack: Stack, keys: Keys) -> None:
    """Guards issue 23, item 3: `conveyor watch` on a job in a paused queue says why it
    waits, as it waits (a line per new reason when stderr is a log, under the bar on a
    terminal), where it showed `QUEUED 0.0%` and nothing else until the job moved."""
    stack.cli("queues", "pause", "cli-held", key=keys.admin)
    job_id = stack.cli("submit", "noop", "--queue", "cli-held", key=keys.alice).stdout.split()[0]
    env = {**stack.env, "CONVEYOR_API_KEY": keys.alice}
    watching = subprocess.Popen([CONVEYOR, "watch", job_id], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    said: list[str] = []
    told = threading.Event()

    def read() -> None:
        assert watching.stderr is not None
        for line in watching.stderr:
            said.append(line.rstrip("\n"))
            if line.startswith("waiting: "):
                told.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert told.wait(30), f"watch never said why the job waits: {said}"
    finally:
        stack.cli("cancel", job_id, key=keys.alice)
        code = watching.wait(timeout=30)
        reader.join(timeout=5)
    assert "waiting: queue 'cli-held' is paused" in said
    assert code == 1, "the job was cancelled"
