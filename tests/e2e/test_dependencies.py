"""Job dependencies and batches across real processes (issue 25, items 1 and 2): a diamond
DAG starts its last job only after both middle ones succeeded (start times from the
database) and cancels it when one goes DEAD; RUN_ANYWAY runs it anyway with what each
returned; a replay revives what a failure cancelled; a cancel cascades; bad references
are INVALID_ARGUMENT without a job written; a batch's callback runs once with its counts."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from conveyor.client import AsyncClient, JobResult, JobState, submit_request
from conveyor.db.bulk import psycopg_dsn
from conveyor.v1 import job_pb2
from conveyor.v1 import job_service_pb2 as pb
from conveyor.v1.job_service_pb2_grpc import JobServiceStub
from tests.e2e.test_queues import until_blocked, until_done
from tests.processes import Keys, Stack

S = JobState
RUN_ANYWAY = job_pb2.DEPENDENCY_FAILURE_POLICY_RUN_ANYWAY


def request(
    job_type: str, payload: dict[str, Any] | None = None, *, after: Sequence[str] = (),
    requests: Sequence[int] = (), policy: int = 0,
) -> pb.SubmitJobRequest:  # fmt: skip
    """A SubmitJobRequest with dependencies on ids (`after`) and earlier requests."""
    req = submit_request(job_type, payload, idempotency_key=uuid.uuid4().hex)
    req.depends_on.extend(after)
    req.depends_on_requests.extend(requests)
    req.dependency_failure_policy = policy  # type: ignore[assignment]
    return req


async def call(stack: Stack, key: str, rpc: str, message: Any) -> Any:
    """One JobService call with `key` (raw protos: the fields under test, as sent)."""
    async with grpc.aio.insecure_channel(stack.api_addr) as channel:
        method = getattr(JobServiceStub(channel), rpc)
        return await method(message, metadata=(("authorization", f"Bearer {key}"),))


async def submit(
    stack: Stack, key: str, *requests: pb.SubmitJobRequest,
    on_complete: pb.SubmitJobRequest | None = None,
) -> pb.SubmitJobsResponse:  # fmt: skip
    bulk = pb.SubmitJobsRequest(requests=list(requests))
    if on_complete is not None:
        bulk.on_complete.CopyFrom(on_complete)
    made: pb.SubmitJobsResponse = await call(stack, key, "SubmitJobs", bulk)
    return made


def result_of(found: JobResult) -> dict[str, Any]:
    assert found.result is not None
    return found.result


def times(stack: Stack, ids: list[str]) -> dict[str, tuple[int, int]]:
    """Each job's (start_time, finish_time) from the database."""
    with psycopg.connect(psycopg_dsn(stack.env["CONVEYOR_DATABASE_URL"])) as conn:
        rows = conn.execute(
            "SELECT id, start_time, finish_time FROM jobs WHERE id = ANY(%s)", (ids,)
        ).fetchall()
    return {r[0]: (int(r[1] or 0), int(r[2] or 0)) for r in rows}


async def test_a_diamond_starts_its_last_job_after_both_middle_ones_succeeded(
    stack: Stack, keys: Keys, alice: AsyncClient, tmp_path: Path
) -> None:
    """Guards the diamond (A -> B, A -> C, B and C -> D) submitted in one call by request
    index: while A is held, D is SCHEDULED and names what it waits for; D's start (from
    the database) is after B's and C's finish, and D reads both results."""
    gate = tmp_path / "gate"
    a = request("test.hold", {"gate": str(gate), "log": str(tmp_path / "log")})
    b = request("test.result", {"value": {"from": "b"}}, requests=[0])
    c = request("test.result", {"value": {"from": "c"}}, requests=[0])
    d = request("test.collect", requests=[1, 2])
    made = (await submit(stack, keys.alice, a, b, c, d)).jobs
    ids = [j.id for j in made]
    assert list(made[3].depends_on) == [ids[1], ids[2]]
    assert [j.state for j in made[1:]] == [job_pb2.JOB_STATE_SCHEDULED] * 3
    waiting = await until_blocked(alice, ids[3], "waiting for 2 of 2 dependencies")
    assert waiting.state == S.SCHEDULED
    assert waiting.raw.blocked.kind == job_pb2.BLOCKED_KIND_DEPENDENCIES
    assert waiting.raw.blocked.dependencies_pending == 2
    assert sorted(waiting.raw.blocked.waiting_for) == sorted(ids[1:3])
    assert (await alice.get(ids[1])).blocked_reason == f"waiting for 1 of 1 dependencies: {ids[0]}"
    gate.touch()
    await until_done(alice, ids, within=30)
    assert [(await alice.get(i)).state for i in ids] == [S.SUCCEEDED] * 4
    spans = times(stack, ids)
    assert spans[ids[3]][0] >= max(spans[ids[1]][1], spans[ids[2]][1])
    assert min(spans[ids[1]][0], spans[ids[2]][0]) >= spans[ids[0]][1]
    result = result_of(await alice.result(ids[3]))
    assert result["results"] == {ids[1]: {"from": "b"}, ids[2]: {"from": "c"}}


async def test_a_diamond_whose_middle_job_dies_cancels_its_last_and_a_replay_revives_it(
    stack: Stack, keys: Keys, alice: AsyncClient, tmp_path: Path
) -> None:
    """Guards the failure rule: C going DEAD cancels D, its error naming C, while B still
    succeeds; RetryJob on C with include_dependents makes D wait again, and once C
    succeeds on its replay, D runs."""
    log = tmp_path / "log"
    a = request("test.result", {"value": {"from": "a"}})
    b = request("test.result", {"value": {"from": "b"}}, requests=[0])
    c = request("test.effect", {"log": str(log), "fail_until": 1}, requests=[0])
    c.max_attempts = 1
    d = request("test.collect", requests=[1, 2])
    ids = [j.id for j in (await submit(stack, keys.alice, a, b, c, d)).jobs]
    await until_done(alice, ids, within=30)
    states = [(await alice.get(i)).state for i in ids]
    assert states == [S.SUCCEEDED, S.SUCCEEDED, S.DEAD, S.CANCELLED]
    cancelled = await alice.get(ids[3])
    assert cancelled.error == f"cancelled: dependency {ids[2]} ended DEAD"
    replay = await call(
        stack, keys.alice, "RetryJob", pb.RetryJobRequest(id=ids[2], include_dependents=True)
    )
    assert list(replay.revived_dependents) == [ids[3]]
    await until_done(alice, [ids[2], ids[3]], within=30)
    assert (await alice.get(ids[3])).state == S.SUCCEEDED
    assert result_of(await alice.result(ids[3]))["results"][ids[2]] is None  # test.effect: None


async def test_run_anyway_runs_after_a_failed_dependency_and_sees_it_failed(
    stack: Stack, keys: Keys, alice: AsyncClient
) -> None:
    """Guards RUN_ANYWAY: the dependent runs once its dependencies have ended, whatever
    the outcome, and reads None for the one that did not succeed."""
    ok = request("test.result", {"value": {"ok": 1}})
    bad = request("fail", {"permanent": True})
    after = request("test.sync_collect", requests=[0, 1], policy=RUN_ANYWAY)
    ids = [j.id for j in (await submit(stack, keys.alice, ok, bad, after)).jobs]
    await until_done(alice, ids, within=30)
    assert (await alice.get(ids[2])).state == S.SUCCEEDED
    assert result_of(await alice.result(ids[2]))["results"] == {ids[0]: {"ok": 1}, ids[1]: None}


async def test_a_dependency_that_ended_before_the_submit_counts_at_once(
    stack: Stack, keys: Keys, alice: AsyncClient
) -> None:
    """Guards dependencies on jobs that already ended: a SUCCEEDED one is met (the job
    runs at once), a DEAD one cancels the new job as it is made."""
    ok, bad = (
        await submit(stack, keys.alice, request("noop"), request("fail", {"permanent": True}))
    ).jobs
    await until_done(alice, [ok.id, bad.id], within=30)
    runs, never = (await submit(stack, keys.alice, request("noop", after=[ok.id]),
                                request("noop", after=[bad.id]))).jobs  # fmt: skip
    assert never.state == job_pb2.JOB_STATE_CANCELLED
    assert never.error == f"cancelled: dependency {bad.id} ended DEAD"
    await until_done(alice, [runs.id], within=30)
    assert (await alice.get(runs.id)).state == S.SUCCEEDED


async def test_cancelling_a_dependency_cancels_its_dependents_transitively(
    stack: Stack, keys: Keys, alice: AsyncClient, tmp_path: Path
) -> None:
    """Guards the cascade: cancelling A (held running) cancels B (waits for A) and C
    (waits for B), each naming its own dependency."""
    held = request("test.hold", {"gate": str(tmp_path / "never"), "log": str(tmp_path / "l")})
    ids = [j.id for j in (await submit(stack, keys.alice, held, request("noop", requests=[0]),
                                       request("noop", requests=[1]))).jobs]  # fmt: skip
    await alice.cancel(ids[0])
    await until_done(alice, ids, within=30)
    jobs = [await alice.get(i) for i in ids]
    assert [j.state for j in jobs] == [S.CANCELLED] * 3
    assert jobs[1].error == f"cancelled: dependency {ids[0]} ended CANCELLED"
    assert jobs[2].error == f"cancelled: dependency {ids[1]} ended CANCELLED"


@pytest.mark.one_redis_shape
async def test_bad_references_are_invalid_and_write_nothing(
    stack: Stack, keys: Keys, alice: AsyncClient, bob: AsyncClient
) -> None:
    """Guards validation: an unknown id, another owner's job (the same answer: nothing is
    learnt of it), a later or own request index, and request indexes outside SubmitJobs
    are INVALID_ARGUMENT naming the field, and nothing of the call is stored."""
    bobs = await bob.submit("noop")
    marker = uuid.uuid4().hex
    cases = {
        "requests[1].depends_on[0]": [request("noop"), request("noop", after=[str(uuid.uuid4())])],
        "requests[0].depends_on[0]": [request("noop", after=[bobs.id]), request("noop")],
        "requests[0].depends_on_requests[0]": [request("noop", requests=[1]), request("noop")],
        "requests[1].depends_on_requests[0]": [request("noop"), request("noop", requests=[1])],
    }
    for field, requests in cases.items():
        for r in requests:
            r.labels["marker"] = marker
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await submit(stack, keys.alice, *requests)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (refused.value.details() or ""), (field, refused.value.details())
    lone = request("noop", requests=[0])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(stack, keys.alice, "SubmitJob", lone)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not (await alice.list(filter=f'labels.marker = "{marker}"')).items


async def test_a_batch_callback_runs_once_with_its_counts(
    stack: Stack, keys: Keys, alice: AsyncClient
) -> None:
    """Guards batches: the callback runs once after every job of the call ended, with
    `batch` (its id, counts by final state and job ids) in its payload, and GetBatch
    shows the batch's counts."""
    jobs = [request("noop") for _ in range(8)]
    jobs += [request("fail", {"permanent": True}) for _ in range(2)]
    made = await submit(stack, keys.alice, *jobs, on_complete=request("test.collect"))
    batch = made.batch
    ids = [j.id for j in made.jobs]
    assert batch.job_count == 10 and batch.callback_job_id and batch.unfinished <= 10
    assert all(j.batch_id == batch.id for j in made.jobs)
    await until_done(alice, [*ids, batch.callback_job_id], within=30)
    result = result_of(await alice.result(batch.callback_job_id))
    assert result["batch"] == {
        "id": batch.id,
        "counts": {"succeeded": 8, "dead": 2, "cancelled": 0},
        "job_ids": sorted(ids),
    }
    now = (await call(stack, keys.alice, "GetBatch", pb.GetBatchRequest(id=batch.id))).batch
    assert (now.succeeded, now.dead, now.cancelled, now.unfinished) == (8, 2, 0, 0)
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await call(stack, keys.bob, "GetBatch", pb.GetBatchRequest(id=batch.id))
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_typed_built_in_type_can_be_a_batch_callback(
    stack: Stack, keys: Keys, alice: AsyncClient
) -> None:
    """Guards callbacks of types whose payload model forbids unknown fields (every
    built-in's): the `batch` added at release does not fail them."""
    made = await submit(
        stack, keys.alice, request("noop"), on_complete=request("sleep", {"seconds": 0})
    )
    await until_done(alice, [made.jobs[0].id, made.batch.callback_job_id], within=30)
    assert (await alice.get(made.batch.callback_job_id)).state == S.SUCCEEDED
