"""Job dependencies and batches through the clients, against the real stack (issue 25,
items 1, 2 and 6): the CLI's `submit --after`, `--run-anyway`, `retry --include-dependents`
and `batches get`; the SDK's worked example of docs/workflows.md (export -> bundle -> email
the link, the mail's link downloading the bundle), in-call indexes and `submit_batch`.
The server's dependency logic is tested on its own elsewhere; these prove the clients
carry it whole."""

from __future__ import annotations

import io
import json
import re
import uuid
import zipfile

import pytest
from typer.testing import CliRunner

from conveyor.cli.app import app as cli_app
from conveyor.client import (
    AsyncClient,
    BlockedKind,
    DependencyFailurePolicy,
    JobState,
    submit_request,
)
from tests.e2e.test_artifacts import download
from tests.e2e.test_queues import spans, until_done
from tests.mailbox import Mailbox
from tests.processes import Keys, Stack

S = JobState
# What these tests prove does not depend on Redis's shape (the dependency paths are the
# server's tests' to run on both).
pytestmark = pytest.mark.one_redis_shape


def test_the_cli_submits_after_a_job_shows_it_and_revives_it(stack: Stack, keys: Keys) -> None:
    """`submit --after` makes a job that waits (SCHEDULED, blocked DEPENDENCIES, `get`
    showing `after=`); cancelling its dependency cancels it; `retry --include-dependents`
    brings it back waiting and prints its id."""

    def cli(*args: str, check: bool = True) -> str:
        return stack.cli(*args, key=keys.alice, check=check).stdout

    parent = json.loads(cli("submit", "noop", "--queue", "never-served-wf", "--json"))["id"]
    child = json.loads(cli("submit", "noop", "--after", parent, "--json"))
    assert child["depends_on"] == [parent] and child["state"] == "JOB_STATE_SCHEDULED"
    got = json.loads(cli("get", child["id"], "--json"))
    assert got["blocked"]["kind"] == "BLOCKED_KIND_DEPENDENCIES", got
    assert got["blocked"]["waiting_for"] == [parent]
    assert f"after={parent}" in cli("get", child["id"])

    cli("cancel", parent)
    watched = stack.cli("watch", child["id"], key=keys.alice, check=False)
    assert watched.returncode == 1 and "CANCELLED" in watched.stdout

    retried = json.loads(cli("retry", parent, "--include-dependents", "--json"))
    assert retried["job"]["id"] == parent and retried["revived_dependents"] == [child["id"]]
    assert json.loads(cli("get", child["id"], "--json"))["state"] == "JOB_STATE_SCHEDULED"
    cli("cancel", parent)  # leave nothing waiting behind


def test_run_anyway_needs_after() -> None:
    """`--run-anyway` says what a failed dependency does: alone it is refused before any
    call is made (no stack needed)."""
    refused = CliRunner().invoke(cli_app, ["submit", "noop", "--run-anyway"])
    assert refused.exit_code == 2 and "--run-anyway needs --after" in refused.output


async def test_the_worked_example_mails_a_link_that_downloads_the_bundle(
    alice: AsyncClient, mailbox: Mailbox, stack: Stack
) -> None:
    """docs/workflows.md's DAG of built-in types: csv.export -> files.bundle -> email.send
    with a `links` entry. Each starts after the one before ended (times from the database),
    and the mail's link downloads a zip holding the export."""
    subject = f"Your orders export {uuid.uuid4().hex[:8]}"  # the mailbox is shared
    rows = [{"order": n, "total": 10 * n} for n in range(1, 4)]
    export = await alice.submit("csv.export", {"rows": rows, "name": "orders.csv"})
    bundle = await alice.submit(
        "files.bundle",
        {"files": [{"job_id": export.id, "artifact": "orders.csv"}], "name": "orders.zip"},
        depends_on=[export],
    )
    mail = await alice.submit(
        "email.send",
        {
            "to": "ada@example.com",
            "subject": subject,
            "text": "Ready: {{ download }}",
            "links": {"download": {"job_id": bundle.id, "artifact": "orders.zip"}},
        },
        depends_on=[bundle.id],
    )
    assert mail.depends_on == [bundle.id] and bundle.depends_on == [export.id]
    await until_done(alice, [mail.id])
    assert (await alice.get(mail.id)).state is S.SUCCEEDED
    (made, zipped, mailed) = spans(stack, [export.id, bundle.id, mail.id])
    assert made[1] <= zipped[0] and zipped[1] <= mailed[0]

    body = mailbox.wait_for(subject).message.get_body(preferencelist=("plain",))
    assert body is not None
    link = re.search(r"https?://\S+", body.get_content())
    assert link is not None
    status, data = download(link[0])
    assert status == 200
    bundled = zipfile.ZipFile(io.BytesIO(data))
    assert bundled.namelist() == ["orders.csv"]
    assert bundled.read("orders.csv").decode().splitlines()[1:] == ["1,10", "2,20", "3,30"]


async def test_indexes_of_one_call_and_the_failure_policy(alice: AsyncClient) -> None:
    """A diamond by indexes in one submit_many (0 -> 1, 0 -> 2, 1 and 2 -> 3) resolves to
    ids and runs in order; a DEAD dependency cancels a CANCEL dependent and not a
    RUN_ANYWAY one."""
    jobs = await alice.submit_many(
        [
            submit_request("noop"),
            submit_request("noop", depends_on=[0]),
            submit_request("noop", depends_on=[0]),
            submit_request("noop", depends_on=[1, 2]),
        ]
    )
    assert [job.depends_on for job in jobs] == [
        [], [jobs[0].id], [jobs[0].id], [jobs[1].id, jobs[2].id]
    ]  # fmt: skip
    await until_done(alice, [jobs[3].id])
    assert (await alice.get(jobs[3].id)).state is S.SUCCEEDED

    broken = await alice.submit("fail", {"permanent": True})
    cancels = await alice.submit("noop", depends_on=[broken])
    runs = await alice.submit(
        "noop",
        depends_on=[broken],
        dependency_failure_policy=DependencyFailurePolicy.RUN_ANYWAY,
    )
    assert runs.dependency_failure_policy is DependencyFailurePolicy.RUN_ANYWAY
    await until_done(alice, [cancels.id, runs.id])
    cancelled, ran = await alice.get(cancels.id), await alice.get(runs.id)
    assert cancelled.state is S.CANCELLED and broken.id in cancelled.error
    assert ran.state is S.SUCCEEDED


async def test_a_batch_callback_runs_once_with_the_counts_and_the_cli_shows_it(
    alice: AsyncClient, stack: Stack, keys: Keys
) -> None:
    """submit_batch makes the jobs and a callback that runs after all of them, its payload
    carrying the batch's counts and job ids; get_batch and `conveyor batches get` agree."""
    requests = [submit_request("noop", {"i": i}) for i in range(3)]
    requests.append(submit_request("fail", {"permanent": True}))
    made = await alice.submit_batch(requests, on_complete=submit_request("noop", {"cb": 1}))
    assert len(made.jobs) == 4 and made.batch.job_count == 4
    assert {job.batch_id for job in made.jobs} == {made.batch.id}
    callback_id = made.batch.callback_job_id
    await until_done(alice, [callback_id])
    callback = await alice.get(callback_id)
    assert callback.state is S.SUCCEEDED and callback.batch_id == made.batch.id
    assert callback.payload["cb"] == 1
    assert callback.payload["batch"]["counts"] == {"succeeded": 3, "dead": 1, "cancelled": 0}
    assert sorted(callback.payload["batch"]["job_ids"]) == sorted(j.id for j in made.jobs)
    assert (await alice.attempts(callback_id))[0].attempt == 1
    assert len(await alice.attempts(callback_id)) == 1

    batch = await alice.get_batch(made.batch.id)
    assert (batch.succeeded, batch.dead, batch.cancelled, batch.ended) == (3, 1, 0, True)
    shown = stack.cli("batches", "get", made.batch.id, "--json", key=keys.alice).stdout
    assert json.loads(shown)["callback_job_id"] == callback_id
    line = stack.cli("batches", "get", made.batch.id, key=keys.alice).stdout
    assert "4 jobs: 3 succeeded, 1 dead, 0 cancelled, ended" in line
    assert f"batch={made.batch.id}" in stack.cli("get", callback_id, key=keys.alice).stdout


async def test_a_waiting_job_reads_its_blocked_dependencies(alice: AsyncClient) -> None:
    """The typed Blocked of a job waiting for a job that never runs: kind, counts, ids."""
    parent = await alice.submit("noop", queue="never-served-wf")
    child = await alice.submit("noop", depends_on=[parent])
    waiting = await alice.get(child.id)
    assert waiting.state is S.SCHEDULED and waiting.blocked is not None
    assert waiting.blocked.kind is BlockedKind.DEPENDENCIES
    assert (waiting.blocked.dependencies_pending, waiting.blocked.dependencies_total) == (1, 1)
    assert waiting.blocked.waiting_for == (parent.id,)
    await alice.cancel(parent.id)
