"""Bulk actions (RetryJobs, CancelJobs, DeleteJobs) through the real api and worker
processes: a dry run counts, `force` starts an operation that is polled to its end, acts
on the caller's own jobs only, keeps its pace, and refuses a filter it must not run."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from conveyor.client import AsyncClient, BulkOperation, BulkOperationState, JobState
from conveyor.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from tests.e2e.test_artifacts import e2e_bucket, row
from tests.e2e.test_jobs import watch_all
from tests.e2e.test_queues import until_done
from tests.objectstores import S3Server
from tests.processes import Keys, Stack

S = JobState
# A queue no worker serves: its jobs stay QUEUED.
PARKED = "parked-bulk"


async def until_ended(client: AsyncClient, op: BulkOperation, within: float = 60) -> BulkOperation:
    """Poll the operation (it has no stream) every 50 ms until it ends."""
    async with asyncio.timeout(within):
        while not op.ended:
            await asyncio.sleep(0.05)
            op = await client.get_bulk_operation(op.id)
    return op


async def dead_jobs(client: AsyncClient, count: int, labels: dict[str, str]) -> list[str]:
    """`count` jobs of the client's that have ended DEAD (one attempt each)."""
    jobs = [
        await client.submit("fail", {"permanent": True}, max_attempts=1, labels=labels)
        for _ in range(count)
    ]
    ids = [job.id for job in jobs]
    await until_done(client, ids)
    return ids


async def test_bulk_retry_replays_the_callers_dead_jobs_at_its_pace(
    alice: AsyncClient, bob: AsyncClient
) -> None:
    """Guards RetryJobs: the dry run counts alice's 50 dead jobs of a label and starts
    nothing; with `force` all 50 run again (a second attempt each) and the operation says
    50 done; bob's dead jobs with the same label are left alone; at 20 a second, the
    operation's own recorded times span at least the 49 intervals between its 50 turns."""
    run = uuid.uuid4().hex
    mine = await dead_jobs(alice, 50, {"run": run})
    theirs = await dead_jobs(bob, 3, {"run": run})
    label = f'labels.run = "{run}"'

    dry = await alice.retry_jobs(label)
    assert dry.dry_run and dry.matched == 50
    assert {(await alice.get(i)).state for i in mine} == {S.DEAD}, "a dry run changes nothing"

    op = await alice.retry_jobs(label, force=True, per_second=20)
    assert op.state is BulkOperationState.RUNNING and op.matched == 50 and op.owner == "alice"
    op = await until_ended(alice, op)
    assert op.state is BulkOperationState.SUCCEEDED, op.error
    assert (op.done, op.skipped, op.failed) == (50, 0, 0)
    assert op.create_time is not None and op.finish_time is not None
    assert (op.finish_time - op.create_time).total_seconds() >= 49 / 20

    await until_done(alice, mine)
    again = [await alice.get(i) for i in mine]
    assert {(j.state, j.attempt) for j in again} == {(S.DEAD, 2)}, "each ran once more"
    others = [await bob.get(i) for i in theirs]
    assert {(j.state, j.attempt) for j in others} == {(S.DEAD, 1)}, "another owner's stay"

    # A second run finds them all again (DEAD again); a retried job already queued is
    # skipped rather than failed when its turn comes: none here, so the counts add up.
    assert (await alice.retry_jobs(label)).matched == 50


async def test_bulk_cancel_cancels_unfinished_jobs_only(alice: AsyncClient) -> None:
    """Guards CancelJobs: it counts and cancels the label's unfinished jobs, leaves a
    finished one alone, and an ended operation cannot be cancelled."""
    run = uuid.uuid4().hex
    labels = {"run": run}
    parked = [(await alice.submit("noop", queue=PARKED, labels=labels)).id for _ in range(6)]
    finished = await alice.submit("noop", labels=labels)
    assert (await watch_all(alice, finished.id))[-1].job.state == S.SUCCEEDED
    label = f'labels.run = "{run}"'

    assert (await alice.cancel_jobs(label)).matched == 6
    op = await until_ended(alice, await alice.cancel_jobs(label, force=True))
    assert op.state is BulkOperationState.SUCCEEDED and op.done == 6, op
    assert {(await alice.get(i)).state for i in parked} == {S.CANCELLED}
    assert (await alice.get(finished.id)).state == S.SUCCEEDED
    with pytest.raises(FailedPrecondition):
        await alice.cancel_bulk_operation(op.id)


async def test_bulk_delete_removes_rows_and_objects(
    alice: AsyncClient, bob: AsyncClient, stack: Stack, s3_server: S3Server
) -> None:
    """Guards DeleteJobs: finished jobs go with their attempts and artifacts (in the object
    store too); an unfinished job with the same label stays; the operation is the caller's
    own (another owner's key does not find it)."""
    run = uuid.uuid4().hex
    labels = {"run": run}
    made = [await alice.submit("test.artifact", {"count": 1}, labels=labels) for _ in range(3)]
    await until_done(alice, [job.id for job in made])
    waiting = await alice.submit("noop", queue=PARKED, labels=labels)
    bucket = e2e_bucket(s3_server)
    assert all(bucket.stat(f"jobs/{job.id}/artifacts/a0.txt") for job in made)
    label = f'labels.run = "{run}"'

    assert (await alice.delete_jobs(label)).matched == 3
    op = await alice.delete_jobs(label, force=True)
    with pytest.raises(NotFound):
        await bob.get_bulk_operation(op.id)
    op = await until_ended(alice, op)
    assert op.state is BulkOperationState.SUCCEEDED and op.done == 3, op
    for job in made:
        with pytest.raises(NotFound):
            await alice.get(job.id)
        assert row(stack, "SELECT count(*) FROM job_attempts WHERE job_id = :id", id=job.id) == (0,)
        assert bucket.stat(f"jobs/{job.id}/artifacts/a0.txt") is None
    assert (await alice.get(waiting.id)).state == S.QUEUED


async def test_bulk_requests_are_validated(alice: AsyncClient, admin: AsyncClient) -> None:
    """Guards the refusals: an empty filter (a bulk action must say what it acts on), a bad
    filter, a pace or attempt budget out of range are INVALID_ARGUMENT with field
    violations; `owner` from a user key is PERMISSION_DENIED, from an admin's it counts."""
    for call in (alice.retry_jobs, alice.cancel_jobs, alice.delete_jobs):
        with pytest.raises(InvalidArgument) as empty:
            await call("  ", force=True)
        assert [v.field for v in empty.value.violations] == ["filter"]
    with pytest.raises(InvalidArgument) as bad:
        await alice.retry_jobs("state = DEAD AND stat = X")
    assert [v.field for v in bad.value.violations] == ["filter"]
    with pytest.raises(InvalidArgument) as ranges:
        await alice.retry_jobs("state = DEAD", per_second=10_001, max_attempts=101)
    assert sorted(v.field for v in ranges.value.violations) == ["max_attempts", "per_second"]
    with pytest.raises(PermissionDenied):
        await alice.retry_jobs('owner = "bob"')
    run = uuid.uuid4().hex
    await alice.submit("noop", queue=PARKED, labels={"run": run})
    assert (await admin.cancel_jobs(f'owner = "alice" AND labels.run = "{run}"')).matched == 1
    assert (await admin.cancel_jobs(f'owner = "bob" AND labels.run = "{run}"')).matched == 0


async def test_cli_dead_retry_dry_run_then_waits_to_the_end(
    alice: AsyncClient, stack: Stack, keys: Keys
) -> None:
    """Guards `conveyor dead retry --filter`: without --yes it prints the count and exits 0
    having changed nothing; with --yes --wait it follows the operation to SUCCEEDED and
    exits 0; `conveyor bulk get` prints the same operation."""
    run = uuid.uuid4().hex
    ids = await dead_jobs(alice, 3, {"run": run})
    label = f'labels.run = "{run}"'
    dry = stack.cli("dead", "retry", "--filter", label, "--json", key=keys.alice)
    assert json.loads(dry.stdout) == {
        "dry_run": True,
        "count": 3,
        "filter": f"state = DEAD AND ({label})",
    }
    human = stack.cli("dead", "retry", "--filter", label, key=keys.alice)
    assert human.stdout.startswith("3 job(s) match") and "--yes" in human.stderr
    assert {(await alice.get(i)).attempt for i in ids} == {1}
    done = stack.cli(
        "dead", "retry", "--filter", label, "--yes", "--wait", "--per-second", "50", "--json",
        key=keys.alice,
    )  # fmt: skip
    op = json.loads(done.stdout)
    assert op["state"] == "BULK_OPERATION_STATE_SUCCEEDED" and op["done"] == "3", op
    got = json.loads(stack.cli("bulk", "get", op["id"], "--json", key=keys.alice).stdout)
    assert got["id"] == op["id"] and got["matched"] == "3"
    await until_done(alice, ids)
    assert {(await alice.get(i)).attempt for i in ids} == {2}
    refused = stack.cli("jobs", "delete", "--filter", "", key=keys.alice, check=False)
    assert refused.returncode == 2 and "INVALID_ARGUMENT" in refused.stderr
