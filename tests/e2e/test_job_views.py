"""Views (AIP-157) on SubmitJob, GetJob and ListJobs: JOB_VIEW_BASIC answers every field but
the payload, unset is the full job (as every client that never heard of views relies on),
and a view that is not a JobView is INVALID_ARGUMENT before any work. Raw stubs against
the real api process, as a grpcurl user would call it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import json_format

from conveyor.client import submit_request
from conveyor.v1 import job_pb2
from conveyor.v1 import job_service_pb2 as pb
from conveyor.v1.job_service_pb2_grpc import JobServiceStub
from tests.processes import Keys, Stack

PAYLOAD = {"report": "monthly", "rows": 3}


@pytest.fixture
async def jobs(stack: Stack) -> AsyncIterator[JobServiceStub]:
    async with grpc.aio.insecure_channel(stack.api_addr) as channel:
        yield JobServiceStub(channel)


def _auth(keys: Keys) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {keys.alice}"),)


def _without_payload(job: job_pb2.Job) -> job_pb2.Job:
    copy = job_pb2.Job()
    copy.CopyFrom(job)
    copy.ClearField("payload")
    return copy


async def test_basic_view_leaves_out_only_the_payload(jobs: JobServiceStub, keys: Keys) -> None:
    request = submit_request("noop", PAYLOAD, queue="views-parked")
    request.view = pb.JOB_VIEW_BASIC
    submitted = (await jobs.SubmitJob(request, metadata=_auth(keys))).job
    assert submitted.id and not submitted.HasField("payload")

    full = (await jobs.GetJob(pb.GetJobRequest(id=submitted.id), metadata=_auth(keys))).job
    assert json_format.MessageToDict(full.payload) == PAYLOAD
    basic_get = pb.GetJobRequest(id=submitted.id, view=pb.JOB_VIEW_BASIC)
    basic = (await jobs.GetJob(basic_get, metadata=_auth(keys))).job
    assert not basic.HasField("payload")
    assert basic == _without_payload(full)
    for answer in (submitted, basic):  # GetJob adds why a waiting job waits
        answer.ClearField("blocked")
        answer.ClearField("blocked_reason")
    assert submitted == basic

    listed = pb.ListJobsRequest(queue="views-parked", view=pb.JOB_VIEW_BASIC)
    page = await jobs.ListJobs(listed, metadata=_auth(keys))
    assert [job.id for job in page.jobs] == [submitted.id]
    assert not page.jobs[0].HasField("payload")


@pytest.mark.parametrize("view", [pb.JOB_VIEW_UNSPECIFIED, pb.JOB_VIEW_FULL])
async def test_unset_and_full_views_carry_the_payload(
    jobs: JobServiceStub, keys: Keys, view: pb.JobView
) -> None:
    request = submit_request("noop", PAYLOAD, queue=f"views-full-{view}")
    request.view = view
    submitted = (await jobs.SubmitJob(request, metadata=_auth(keys))).job
    assert json_format.MessageToDict(submitted.payload) == PAYLOAD
    got = await jobs.GetJob(pb.GetJobRequest(id=submitted.id, view=view), metadata=_auth(keys))
    assert json_format.MessageToDict(got.job.payload) == PAYLOAD
    page = await jobs.ListJobs(
        pb.ListJobsRequest(queue=f"views-full-{view}", view=view), metadata=_auth(keys)
    )
    assert json_format.MessageToDict(page.jobs[0].payload) == PAYLOAD


async def test_an_unknown_view_is_refused_before_any_work(jobs: JobServiceStub, keys: Keys) -> None:
    request = submit_request("noop", PAYLOAD, queue="views-unknown")
    request.view = 7  # type: ignore[assignment]
    calls = [
        jobs.SubmitJob(request, metadata=_auth(keys)),
        jobs.GetJob(pb.GetJobRequest(id="x", view=7), metadata=_auth(keys)),  # type: ignore[arg-type]
        jobs.ListJobs(pb.ListJobsRequest(view=7), metadata=_auth(keys)),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "view" in (refused.value.details() or "")
    page = await jobs.ListJobs(pb.ListJobsRequest(queue="views-unknown"), metadata=_auth(keys))
    assert not page.jobs  # the refused submit stored nothing


@pytest.mark.parametrize("partial_success", [False, True])
async def test_a_requests_own_view_in_a_bulk_applies_to_its_job(
    jobs: JobServiceStub, keys: Keys, partial_success: bool
) -> None:
    """Set, a request's view answers its job; unset, the bulk's does (as SubmitJob alone
    would answer it: what the SDK's coalesced submits rely on)."""
    queue = f"views-bulk-{partial_success}"
    own = submit_request("noop", PAYLOAD, queue=queue)
    own.view = pb.JOB_VIEW_BASIC
    bulk = pb.SubmitJobsRequest(
        requests=[submit_request("noop", PAYLOAD, queue=queue), own],
        view=pb.JOB_VIEW_FULL,
        partial_success=partial_success,
    )
    answer = await jobs.SubmitJobs(bulk, metadata=_auth(keys))
    answered = [r.job for r in answer.results] if partial_success else list(answer.jobs)
    assert [json_format.MessageToDict(job.payload) for job in answered] == [PAYLOAD, {}]
    assert not answered[1].HasField("payload")


async def test_an_unknown_view_inside_a_bulk_is_refused(jobs: JobServiceStub, keys: Keys) -> None:
    """All or none: the bulk is INVALID_ARGUMENT naming the request; per item: that item
    alone fails, as its SubmitJob would."""
    bad = submit_request("noop", PAYLOAD, queue="views-bulk-bad")
    bad.view = 7  # type: ignore[assignment]
    good = submit_request("noop", PAYLOAD, queue="views-bulk-bad")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await jobs.SubmitJobs(pb.SubmitJobsRequest(requests=[good, bad]), metadata=_auth(keys))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "requests[1].view" in (refused.value.details() or "")

    each = pb.SubmitJobsRequest(requests=[good, bad], partial_success=True)
    results = (await jobs.SubmitJobs(each, metadata=_auth(keys))).results
    assert results[0].HasField("job")
    assert results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "view" in results[1].error.message
