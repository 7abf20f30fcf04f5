"""Per-item SubmitJobs (`partial_success`) and the SDK's batching of concurrent submits,
against the real api process, PostgreSQL and Redis: a bad request fails alone with the
status its SubmitJob would get and nothing stored, idempotency holds per item, and the
SDK's concurrent submits share calls while each caller keeps its own job or error."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from concurrent import futures
from typing import TYPE_CHECKING, Any, cast

import grpc
import pytest
from grpc_status import rpc_status

from conveyor.client import AsyncClient, Client, Job, submit_request
from conveyor.errors import AlreadyExists, InvalidArgument, Unauthenticated
from conveyor.v1 import job_pb2
from conveyor.v1 import job_service_pb2 as pb
from conveyor.v1.job_service_pb2_grpc import JobServiceStub
from tests.e2e.test_grpcurl import grpcurl
from tests.processes import Keys, Stack

# A queue no worker serves: jobs there stay QUEUED.
PARKED = "parked"

if TYPE_CHECKING:  # generic in the stubs only
    AioInterceptor = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    BlockingInterceptor = grpc.UnaryUnaryClientInterceptor[Any, Any]
else:
    AioInterceptor = grpc.aio.UnaryUnaryClientInterceptor
    BlockingInterceptor = grpc.UnaryUnaryClientInterceptor


class Recorder(AioInterceptor):
    """Notes every unary call the client makes (method, number of requests it carries);
    with `gate`, the first call waits for it before it is sent (`entered` says it does)."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.gate = gate
        self.entered = asyncio.Event()

    async def intercept_unary_unary(
        self, continuation: Callable[..., Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        name = method.rsplit("/", 1)[-1]
        self.calls.append((name, len(request.requests) if name == "SubmitJobs" else 1))
        if self.gate is not None and len(self.calls) == 1:
            self.entered.set()
            await self.gate.wait()
        return await continuation(details, request)

    def submits(self) -> list[tuple[str, int]]:
        return [c for c in self.calls if c[0] in ("SubmitJob", "SubmitJobs")]


class BlockingRecorder(BlockingInterceptor):
    """`Recorder` for the blocking client (thread-safe)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        name = details.method.rsplit("/", 1)[-1]
        with self.lock:
            self.calls.append((name, len(request.requests) if name == "SubmitJobs" else 1))
        return continuation(details, request)


def recorded_client(stack: Stack, key: str, recorder: Recorder) -> AsyncClient:
    interceptors: list[grpc.aio.ClientInterceptor] = [cast(grpc.aio.ClientInterceptor, recorder)]
    channel = grpc.aio.insecure_channel(stack.api_addr, interceptors=interceptors)
    return AsyncClient(api_key=key, channel=channel)


def lone_status(stub: JobServiceStub, key: str, request: pb.SubmitJobRequest) -> Any:
    """The google.rpc.Status that SubmitJob alone answers `request` with."""
    with pytest.raises(grpc.RpcError) as failed:
        stub.SubmitJob(request, metadata=[("authorization", f"Bearer {key}")])
    return rpc_status.from_call(cast(grpc.Call, failed.value))


def test_a_bad_request_fails_alone_with_its_submit_jobs_status(stack: Stack) -> None:
    """partial_success: a request with a bad field and one whose idempotency key was used
    for another request each get exactly the status (code, message, details) SubmitJob
    alone answers; the good ones are stored, in request order, visible by GetJob, and
    nothing is stored for the bad ones. Without partial_success the same call still fails
    as a whole and stores nothing."""
    key = stack.create_key("per-item")
    auth = [("authorization", f"Bearer {key}")]
    with grpc.insecure_channel(stack.api_addr) as channel:
        stub = JobServiceStub(channel)
        stub.SubmitJob(
            submit_request("noop", {"v": 1}, queue=PARKED, idempotency_key="taken"),
            metadata=auth,
        )
        requests = [
            submit_request("noop", {"i": 0}, queue=PARKED),
            submit_request("noop", {"i": 1}, queue=PARKED, priority=12),
            submit_request("noop", {"v": 2}, queue=PARKED, idempotency_key="taken"),
            submit_request("noop", {"i": 3}, queue=PARKED),
        ]
        with pytest.raises(grpc.RpcError) as whole:
            stub.SubmitJobs(pb.SubmitJobsRequest(requests=requests), metadata=auth)
        assert whole.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(stub.ListJobs(pb.ListJobsRequest(), metadata=auth).jobs) == 1

        answer = stub.SubmitJobs(
            pb.SubmitJobsRequest(requests=requests, partial_success=True), metadata=auth
        )
        assert not answer.jobs and len(answer.results) == 4
        kinds = [result.WhichOneof("outcome") for result in answer.results]
        assert kinds == ["job", "error", "error", "job"]
        assert answer.results[1].error == lone_status(stub, key, requests[1])
        assert answer.results[2].error == lone_status(stub, key, requests[2])
        assert answer.results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert answer.results[2].error.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
        stored = {job.id for job in stub.ListJobs(pb.ListJobsRequest(), metadata=auth).jobs}
        made = [answer.results[i].job for i in (0, 3)]
        assert len(stored) == 3 and {job.id for job in made} < stored
        for job, i in zip(made, (0, 3), strict=True):
            seen = stub.GetJob(pb.GetJobRequest(id=job.id), metadata=auth).job
            assert seen.state == job_pb2.JOB_STATE_QUEUED and dict(seen.payload) == {"i": i}


def test_the_readme_per_item_call_with_grpcurl(stack: Stack, keys: Keys) -> None:
    """The README's grpcurl session: per-item results in JSON, the refused request's
    google.rpc.Status with its BadRequest details resolved by reflection."""
    body = json.dumps(
        {
            "partial_success": True,
            "view": "JOB_VIEW_BASIC",
            "requests": [{"type": "noop", "queue": PARKED}, {"type": "noop", "priority": 12}],
        }
    )
    out = grpcurl(
        stack, "-d", body, stack.api_addr, "conveyor.v1.JobService/SubmitJobs", key=keys.alice
    )
    assert out.returncode == 0, out.stderr
    stored, refused = json.loads(out.stdout)["results"]
    assert stored["job"]["state"] == "JOB_STATE_QUEUED"
    assert refused["error"]["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    (detail,) = refused["error"]["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert [v["field"] for v in detail["field_violations"]] == ["priority"]


def test_idempotency_holds_per_item(stack: Stack) -> None:
    """partial_success: a request repeated with its key (in a later call, or twice in one)
    answers the job its first request made, and the same key with another request is
    ALREADY_EXISTS for that request alone."""
    key = stack.create_key("per-item-keys")
    auth = [("authorization", f"Bearer {key}")]
    with grpc.insecure_channel(stack.api_addr) as channel:
        stub = JobServiceStub(channel)

        def submit(*requests: pb.SubmitJobRequest) -> list[pb.SubmitJobsResult]:
            call = pb.SubmitJobsRequest(requests=requests, partial_success=True)
            return list(stub.SubmitJobs(call, metadata=auth).results)

        a = submit_request("noop", {"n": 1}, queue=PARKED, idempotency_key="a")
        b = submit_request("noop", {"n": 2}, queue=PARKED, idempotency_key="b")
        first = submit(a, b, a)
        assert first[0].job.id == first[2].job.id != first[1].job.id
        again = submit(b, submit_request("noop", {"n": 3}, queue=PARKED, idempotency_key="a"))
        assert again[0].job.id == first[1].job.id
        assert again[1].error.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
        assert len(stub.ListJobs(pb.ListJobsRequest(), metadata=auth).jobs) == 2


async def test_a_lone_submit_sends_a_plain_submit_job(stack: Stack) -> None:
    """No timer: a submit on a quiet client goes at once as its own SubmitJob, and so does
    each of a sequence of them."""
    recorder = Recorder()
    async with recorded_client(stack, stack.create_key("lone"), recorder) as client:
        for i in range(3):
            await client.submit("noop", {"i": i}, queue=PARKED)
    assert recorder.submits() == [("SubmitJob", 1)] * 3


async def test_concurrent_submits_share_calls(stack: Stack) -> None:
    """64 concurrent submits of one client go in a few calls (the first alone, the rest
    batched while it flies), not 64; each caller gets its own stored job."""
    recorder = Recorder()
    async with recorded_client(stack, stack.create_key("many"), recorder) as client:
        jobs = await asyncio.gather(
            *(client.submit("noop", {"i": i}, queue=PARKED) for i in range(64))
        )
        assert [dict(job.payload)["i"] for job in jobs] == list(range(64))
        assert len({job.id for job in jobs}) == 64
        for job in (jobs[0], jobs[-1]):
            assert (await client.get(job.id)).id == job.id
    calls = recorder.submits()
    assert len(calls) <= 8 and ("SubmitJobs", 63) in calls
    assert sum(count for _, count in calls) == 64


def test_submits_from_many_threads_share_calls(stack: Stack) -> None:
    """`Client.submit` from 64 threads at once: fewer calls than submits, every thread its
    own job."""
    recorder = BlockingRecorder()
    channel = grpc.intercept_channel(grpc.insecure_channel(stack.api_addr), recorder)
    start = threading.Barrier(64)

    def submit(client: Client, i: int) -> Job:
        start.wait()
        return client.submit("noop", {"i": i}, queue=PARKED)

    key = stack.create_key("threads")
    with Client(api_key=key, channel=channel) as client, futures.ThreadPoolExecutor(64) as pool:
        jobs = list(pool.map(lambda i: submit(client, i), range(64)))
    assert [dict(job.payload)["i"] for job in jobs] == list(range(64))
    assert len({job.id for job in jobs}) == 64
    calls = [c for c in recorder.calls if c[0] in ("SubmitJob", "SubmitJobs")]
    assert len(calls) <= 32 and sum(count for _, count in calls) == 64


async def test_a_bad_submit_among_concurrent_ones_raises_in_its_caller_alone(
    stack: Stack,
) -> None:
    """Batched with good submits, a submit with a bad field and one whose key was used for
    another request raise in their own callers, as the same submits alone do; the others
    get their jobs."""
    recorder = Recorder()
    async with recorded_client(stack, stack.create_key("one-bad"), recorder) as client:
        await client.submit("noop", {"v": 1}, queue=PARKED, idempotency_key="taken")
        with pytest.raises(InvalidArgument) as alone:
            await client.submit("noop", queue=PARKED, priority=12)
        recorder.calls.clear()

        def submit(i: int) -> Awaitable[Job]:
            if i == 10:
                return client.submit("noop", queue=PARKED, priority=12)
            if i == 20:
                return client.submit("noop", {"v": 2}, queue=PARKED, idempotency_key="taken")
            return client.submit("noop", {"i": i}, queue=PARKED)

        outcomes = await asyncio.gather(*(submit(i) for i in range(32)), return_exceptions=True)
    assert any(name == "SubmitJobs" for name, _ in recorder.submits())
    bad = outcomes[10]
    assert isinstance(bad, InvalidArgument)
    assert (bad.message, bad.violations) == (alone.value.message, alone.value.violations)
    assert isinstance(outcomes[20], AlreadyExists)
    good = [o for i, o in enumerate(outcomes) if i not in (10, 20)]
    assert all(isinstance(o, Job) for o in good)


async def test_a_cancelled_caller_leaves_the_others_batch_alone(stack: Stack) -> None:
    """The caller whose submit flies alone and one whose submit waits in the queue are
    cancelled: the queued submits still go, as one batch, and every other caller gets its
    job; nothing is made for the queued caller that left."""
    gate = asyncio.Event()
    recorder = Recorder(gate)
    key = stack.create_key("cancelled")
    async with recorded_client(stack, key, recorder) as client:
        tasks = [
            asyncio.create_task(client.submit("noop", {"i": i}, queue=PARKED)) for i in range(16)
        ]
        await recorder.entered.wait()  # the first flies; the others queued behind it
        tasks[0].cancel()
        tasks[5].cancel()
        gate.set()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(outcomes[0], asyncio.CancelledError)
        assert isinstance(outcomes[5], asyncio.CancelledError)
        jobs = [o for i, o in enumerate(outcomes) if i not in (0, 5)]
        assert all(isinstance(job, Job) for job in jobs)
        listed = {job.id for job in (await client.list(page_size=100)).items}
        assert {job.id for job in jobs if isinstance(job, Job)} == listed
    assert ("SubmitJobs", 14) in recorder.submits()


async def test_a_batch_refused_as_a_whole_raises_in_every_caller(stack: Stack) -> None:
    """A failure of the whole call (here: a key the API does not know) is every batched
    caller's error."""
    recorder = Recorder()
    async with recorded_client(stack, "cvk_wrong", recorder) as client:
        outcomes = await asyncio.gather(
            *(client.submit("noop", queue=PARKED) for _ in range(8)), return_exceptions=True
        )
    assert all(isinstance(o, Unauthenticated) for o in outcomes)
    assert any(name == "SubmitJobs" for name, _ in recorder.submits())
