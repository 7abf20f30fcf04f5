"""A bulk submit's answer stays small enough for a stock gRPC client (issue 18, item 6):
SubmitJobs takes a `view` (AIP-157) and the SDK asks for the basic one, so 1,000 jobs of
5 KB (a 5 MB echo with the full view) come back under the 4 MiB a default channel accepts,
and every job is stored. The full view, asked for or by default, still echoes payloads.
A client that refuses a 15 MB answer leaves no traceback in the api's log. Against the
real api process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from conveyor.client import AsyncClient, submit_request
from conveyor.errors import InvalidArgument
from conveyor.v1 import job_service_pb2 as pb
from conveyor.v1.job_service_pb2_grpc import JobServiceStub
from tests.processes import Keys, Stack

STOCK_LIMIT = 4 << 20  # a default channel's max_receive_message_length


@pytest.fixture
async def stock_alice(stack: Stack, keys: Keys) -> AsyncIterator[AsyncClient]:
    """The SDK over a channel with gRPC's default limits (the SDK's own allows 64 MiB)."""
    channel = grpc.aio.insecure_channel(stack.api_addr)
    async with AsyncClient(api_key=keys.alice, channel=channel) as client:
        yield client


def _bulk(queue: str, count: int, size: int) -> list[pb.SubmitJobRequest]:
    return [submit_request("noop", {"blob": "x" * size, "i": i}, queue=queue) for i in range(count)]


async def _stored_ids(client: AsyncClient, queue: str) -> set[str]:
    ids: set[str] = set()
    token = ""
    while True:
        page = await client.list(queue=queue, page_size=1000, page_token=token)
        ids |= {job.id for job in page.items}
        token = page.next_page_token
        if not token:
            return ids


async def test_a_bulk_of_large_payloads_answers_within_a_stock_clients_limit(
    stock_alice: AsyncClient, alice: AsyncClient
) -> None:
    requests = _bulk("bulk-basic", 1000, 5000)
    assert pb.SubmitJobsRequest(requests=requests).ByteSize() > STOCK_LIMIT, (
        "a full echo would not fit"
    )
    jobs = await stock_alice.submit_many(requests)
    assert len({job.id for job in jobs}) == 1000
    assert all(job.state and job.queue == "bulk-basic" for job in jobs)
    # Not echoed (the answer fits), but each job's payload is its request's, put back.
    assert [job.payload["i"] for job in jobs] == list(range(1000))
    assert await _stored_ids(alice, "bulk-basic") == {job.id for job in jobs}
    stored = await alice.get(jobs[7].id)
    assert stored.payload == {"blob": "x" * 5000, "i": 7}


@pytest.mark.parametrize("view", [pb.JOB_VIEW_UNSPECIFIED, pb.JOB_VIEW_FULL])
async def test_the_full_view_still_echoes_every_payload(
    stack: Stack, keys: Keys, view: pb.JobView
) -> None:
    """As every client that does not set `view` (grpcurl, other languages) relies on."""
    request = pb.SubmitJobsRequest(requests=_bulk("bulk-full", 3, 10), view=view)
    async with grpc.aio.insecure_channel(stack.api_addr) as channel:
        response = await JobServiceStub(channel).SubmitJobs(
            request, metadata=(("authorization", f"Bearer {keys.alice}"),)
        )
    assert [json_format.MessageToDict(job.payload)["i"] for job in response.jobs] == [0, 1, 2]


async def test_an_unknown_view_is_invalid(alice: AsyncClient) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await alice.submit_many(_bulk("bulk-full", 1, 10), view=7)  # type: ignore[arg-type]
    assert [v.field for v in refused.value.violations] == ["view"]


async def test_a_refused_answer_leaves_no_traceback_in_the_api_log(
    stack: Stack, keys: Keys
) -> None:
    """Clients with the stock limit refuse 15 MB full-view answers (the jobs are stored);
    grpc's failed send is at most one line in the log, never a traceback. (Before, about one
    refused answer in six logged an ExecuteBatchError traceback: a race in grpc.)"""
    api = next(s for s in stack.services if s.name == "api")
    start = api.log.stat().st_size
    payload = struct_pb2.Struct()
    payload.update({"blob": "x" * 15_000})
    request = pb.SubmitJobsRequest(
        requests=[pb.SubmitJobRequest(type="noop", payload=payload, queue="bulk-refused")] * 1000
    )

    async def refused() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(stack.api_addr) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await JobServiceStub(channel).SubmitJobs(
                    request, metadata=(("authorization", f"Bearer {keys.alice}"),)
                )
        return failed.value.code()

    codes = await asyncio.gather(*(refused() for _ in range(4)))
    assert set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    # grpc logs a failed send when it completes, shortly after the client gave up: watch
    # the log for a second (there is no event for "nothing was logged").
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        with api.log.open("rb") as log:
            log.seek(start)
            written = log.read().decode(errors="replace")
        assert "Traceback" not in written, written[-3000:]
        await asyncio.sleep(0.1)
