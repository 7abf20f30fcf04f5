"""Unique and debounced jobs end to end (SubmitJobRequest.unique_for and .debounce, see
conveyor.jobs.unique): real api and worker processes, PostgreSQL, single and cluster Redis,
the SDK and the CLI."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from conveyor.client import AsyncClient, Job, JobState, submit_request
from conveyor.errors import InvalidArgument
from conveyor.v1 import job_service_pb2 as pb
from conveyor.v1.job_service_pb2_grpc import JobServiceStub
from tests.processes import Keys, Stack

S = JobState
# A queue no worker serves: jobs there stay as they were submitted.
PARKED = "parked"


async def ended(client: AsyncClient, job_id: str) -> Job:
    async with asyncio.timeout(30):
        updates = [update async for update in client.watch(job_id)]
    return updates[-1].job


async def reached(client: AsyncClient, job_id: str, state: JobState) -> Job:
    async with asyncio.timeout(30):
        async for update in client.watch(job_id):
            if update.job.state == state:
                return update.job
    raise AssertionError(f"job {job_id} ended without reaching {state.name}")


def key() -> str:
    return f"k-{uuid.uuid4()}"


async def test_a_debounced_burst_of_100_runs_once_with_the_last_payload(
    alice: AsyncClient,
) -> None:
    """The issue's acceptance: 100 submits of one key with a debounce make one job, whose
    run_at each submit moves out, that runs once (one attempt) after the burst with the
    last submit's payload (the handler returns what it received). A submit after it ran
    makes a new job."""
    burst = key()
    answers = [
        await alice.submit(
            "test.result", {"value": {"i": i}}, idempotency_key=burst, debounce=timedelta(seconds=1)
        )
        for i in range(100)
    ]
    assert len({job.id for job in answers}) == 1
    run_ats = [job.run_at for job in answers]
    assert run_ats == sorted(run_ats) and run_ats[-1] > run_ats[0]
    assert dict(answers[-1].payload) == {"value": {"i": 99}}
    waiting = await alice.get(answers[0].id)
    assert waiting.state == S.SCHEDULED and waiting.run_at == run_ats[-1]
    final = await ended(alice, answers[0].id)
    assert final.state == S.SUCCEEDED and final.attempt == 1
    assert final.start_time is not None and final.start_time >= run_ats[-1]
    assert (await alice.result(final.id)).result == {"i": 99}
    assert len(await alice.attempts(final.id)) == 1
    after = await alice.submit(
        "test.result", {"value": "again"}, idempotency_key=burst, debounce=timedelta(seconds=1)
    )
    assert after.id != final.id and after.state == S.SCHEDULED


async def test_a_debounce_after_the_job_started_makes_a_new_job(
    alice: AsyncClient, tmp_path: Path
) -> None:
    """Once the debounced job runs, a later submit of its key does not touch it (its payload
    stays what it started with): a new job takes the key."""
    log, gate = tmp_path / "log", tmp_path / "gate"
    hold = {"log": str(log), "gate": str(gate)}
    burst = key()
    first = await alice.submit(
        "test.hold", hold, idempotency_key=burst, debounce=timedelta(milliseconds=50)
    )
    await reached(alice, first.id, S.RUNNING)
    second = await alice.submit(
        "test.hold", {**hold, "n": 2}, idempotency_key=burst, debounce=timedelta(seconds=30)
    )
    assert second.id != first.id and second.state == S.SCHEDULED
    gate.touch()
    done = await ended(alice, first.id)
    assert done.state == S.SUCCEEDED and dict(done.payload) == hold
    assert (await alice.cancel(second.id)).state == S.CANCELLED


async def test_unique_for_returns_the_first_job_within_the_window(alice: AsyncClient) -> None:
    """Within unique_for, a submit of the same key answers the first job even when its
    request differs (no ALREADY_EXISTS: that is what unique jobs are for)."""
    unique = key()
    first = await alice.submit(
        "noop", {"n": 1}, queue=PARKED, idempotency_key=unique, unique_for=timedelta(hours=1)
    )
    other = await alice.submit(
        "noop", {"n": 2}, queue=PARKED, idempotency_key=unique, unique_for=timedelta(hours=1)
    )
    assert other.id == first.id and dict(other.payload) == {"n": 1}


async def test_unique_for_after_the_window_makes_one_new_job(alice: AsyncClient) -> None:
    """After the window the key moves to a new job, and to one only, however many submits
    of it race: 20 at once after the window all answer the same new job."""
    unique = key()
    first = await alice.submit(
        "noop", {"n": 1}, queue=PARKED, idempotency_key=unique, unique_for=timedelta(seconds=1)
    )
    assert first.create_time is not None
    # Not a synchronisation: the window is a span of the server's clock (this host's).
    passed = first.create_time + timedelta(seconds=1, milliseconds=50)
    await asyncio.sleep(max(0.0, (passed - datetime.now(UTC)).total_seconds()))
    racing = await asyncio.gather(
        *(
            alice.submit(
                "noop",
                {"n": 2},
                queue=PARKED,
                idempotency_key=unique,
                unique_for=timedelta(hours=1),
            )
            for _ in range(20)
        )
    )
    assert len({job.id for job in racing}) == 1
    assert racing[0].id != first.id and dict(racing[0].payload) == {"n": 2}


async def test_bad_unique_and_debounce_requests_get_field_violations(alice: AsyncClient) -> None:
    """Without a key, out of bounds, both at once, debounce with run_at or delay, or in a
    SubmitJobs: INVALID_ARGUMENT naming the fields."""

    async def fields(**options: Any) -> set[str]:
        with pytest.raises(InvalidArgument) as bad:
            await alice.submit("noop", queue=PARKED, **options)
        return {v.field for v in bad.value.violations}

    hour = timedelta(hours=1)
    assert await fields(idempotency_key=None, unique_for=hour) == {"unique_for"}
    assert await fields(idempotency_key=None, debounce=hour) == {"debounce"}
    assert await fields(idempotency_key="k", unique_for=timedelta(milliseconds=10)) == {
        "unique_for"
    }
    assert await fields(idempotency_key="k", debounce=timedelta(days=2)) == {"debounce"}
    assert await fields(idempotency_key="k", debounce=timedelta(0)) == {"debounce"}
    assert await fields(idempotency_key="k", unique_for=hour, debounce=hour) == {"debounce"}
    assert await fields(idempotency_key="k", debounce=hour, delay=hour) == {"debounce"}
    with pytest.raises(InvalidArgument) as bulk:
        await alice.submit_many(
            [
                submit_request("noop", queue=PARKED),
                submit_request("noop", queue=PARKED, idempotency_key="k", unique_for=hour),
                submit_request("noop", queue=PARKED, idempotency_key="k2", debounce=hour),
            ]
        )
    assert [v.field for v in bulk.value.violations] == [
        "requests[1].unique_for",
        "requests[2].debounce",
    ]


def test_partial_success_bulks_refuse_unique_requests_alone(stack: Stack, keys: Keys) -> None:
    """With partial_success, a unique request is refused on its own (named without a
    `requests[i].` prefix, as SubmitJob would name it); the others are stored."""
    requests = [
        submit_request("noop", queue=PARKED, idempotency_key=key()),
        submit_request("noop", queue=PARKED, idempotency_key=key(), unique_for=timedelta(hours=1)),
    ]
    with grpc.insecure_channel(stack.api_addr) as channel:
        answer = JobServiceStub(channel).SubmitJobs(
            pb.SubmitJobsRequest(requests=requests, partial_success=True),
            metadata=[("authorization", f"Bearer {keys.alice}")],
        )
    assert [r.WhichOneof("outcome") for r in answer.results] == ["job", "error"]
    assert answer.results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "unique_for" in answer.results[1].error.message


def test_the_cli_submits_unique_and_debounced_jobs(stack: Stack, keys: Keys) -> None:
    """`conveyor submit --unique-for 60s` answers the first job again; `--debounce 5s`
    schedules the job 5 s out."""
    argv = ["submit", "noop", "--queue", PARKED, "--json", "--idempotency-key"]

    def cli(*args: str) -> dict[str, str]:
        return dict(json.loads(stack.cli(*argv, *args, key=keys.alice).stdout))

    unique = key()
    first = cli(unique, "--unique-for", "60s", "--payload", '{"n":1}')
    again = cli(unique, "--unique-for", "1m", "--payload", '{"n":2}')
    assert again["id"] == first["id"]
    assert cli(key(), "--debounce", "5s")["state"] == "JOB_STATE_SCHEDULED"
    bad = stack.cli(*argv, key(), "--debounce", "soon", key=keys.alice, check=False)
    assert bad.returncode == 2 and "--debounce" in bad.stderr
