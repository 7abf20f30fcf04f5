"""`AsyncClient` and `Client` are one core with two drivers (`conveyor.client._client`):
the same methods with the same parameters and docstrings, and the same behaviour, proven
here on both against a real in-process gRPC server that answers as the test scripts it:
an ambiguous submit is sent again with the same key, a call that is not retry-safe is not,
every failure (schedule calls and streams included) is a `conveyor.errors` error, and a
watch yields the snapshot then every change and cancels its call when left early."""

from __future__ import annotations

import asyncio
import inspect
import threading
import uuid
from collections import defaultdict
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from conveyor.client import (
    AsyncClient,
    Batch,
    Client,
    DependencyFailurePolicy,
    Job,
    JobState,
    JobUpdate,
    RetriedJob,
    SubmitRetry,
    SubmittedBatch,
    schedule_request,
    submit_request,
)
from conveyor.client._calls import Service
from conveyor.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
    to_status,
)
from conveyor.telemetry import tracing
from conveyor.v1 import job_pb2
from conveyor.v1 import job_service_pb2 as pb
from conveyor.v1 import schedule_service_pb2 as spb
from conveyor.v1.job_service_pb2_grpc import (
    JobServiceServicer,
    JobServiceStub,
    add_JobServiceServicer_to_server,
)
from conveyor.v1.schedule_service_pb2_grpc import (
    ScheduleServiceServicer,
    add_ScheduleServiceServicer_to_server,
)

FLAKY_TRIES = 2  # a `flaky` job's first tries answered UNAVAILABLE, per idempotency key


def public(cls: type) -> dict[str, Any]:
    """The methods a user calls: every public name, and the context manager's pair."""
    names = [name for name in vars(cls) if not name.startswith("_")] + ["__init__"]
    return {name: getattr(cls, name) for name in names}


def test_the_two_clients_have_the_same_methods_parameters_and_docstrings() -> None:
    """A method added to one client only, or a parameter, default or docstring that
    differs between the twins, fails here; the async twins are coroutine functions (or
    return async iterators), the blocking ones plain functions."""
    asynchronous, blocking = public(AsyncClient), public(Client)
    assert sorted(asynchronous) == sorted(blocking)
    for name, method in blocking.items():
        twin = asynchronous[name]
        ours, theirs = inspect.signature(method), inspect.signature(twin)
        # Only the channel's class differs (grpc.aio's or grpc's).
        assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
            (p.name, p.kind, p.default) for p in theirs.parameters.values()
        ], name
        if name != "__init__":
            assert ours.parameters == theirs.parameters, name
            assert method.__doc__ and method.__doc__ == twin.__doc__, name
            assert not inspect.iscoroutinefunction(method), name
            streams = "Iterator" in str(ours.return_annotation)
            assert inspect.iscoroutinefunction(twin) != streams, name
    assert inspect.iscoroutinefunction(AsyncClient.__aenter__)
    assert inspect.iscoroutinefunction(AsyncClient.__aexit__)
    assert callable(Client.__enter__) and callable(Client.__exit__)


def test_an_rpc_declared_with_the_wrong_messages_fails_on_import() -> None:
    """The stubs are untyped, so `Service.rpc` checks each declaration against the
    service's descriptor: a wrong request or answer type is a TypeError at once."""
    jobs = Service(pb.DESCRIPTOR.services_by_name["JobService"], JobServiceStub)
    assert jobs.rpc("GetJob", pb.GetJobRequest, pb.GetJobResponse).path == (
        "/conveyor.v1.JobService/GetJob"
    )
    with pytest.raises(TypeError, match="GetJobResponse"):
        jobs.rpc("GetJob", pb.GetJobRequest, pb.CancelJobResponse)
    with pytest.raises(TypeError, match="GetJobRequest"):
        jobs.rpc("GetJob", pb.CancelJobRequest, pb.GetJobResponse)


class Scripted(JobServiceServicer, ScheduleServiceServicer):
    """Answers as the tests need: `flaky` submits fail their first tries with UNAVAILABLE
    (always, without a key), a `flaky` GetJob always; unknown schedules are NOT_FOUND and
    a schedule without a cron or interval INVALID_ARGUMENT; a watch yields three updates,
    `endless-…` one and then waits for the client to leave, `gone` is NOT_FOUND."""

    def __init__(self) -> None:
        self.keys: defaultdict[str, list[str]] = defaultdict(list)  # job type: keys sent
        self.left: defaultdict[str, threading.Event] = defaultdict(threading.Event)
        self.traced: defaultdict[str, list[str]] = defaultdict(list)  # job id: RPCs traced
        # job type: the size of every partial_success SubmitJobs its first job had
        self.batches: defaultdict[str, list[int]] = defaultdict(list)
        # job type: every SubmitJob request of it, and SubmitJobs request its first job had
        self.sent: defaultdict[str, list[Any]] = defaultdict(list)

    def _saw(self, job_id: str, method: str, context: grpc.ServicerContext) -> None:
        """Note `method` for `job_id` if the call carried a trace context."""
        if any(key == "traceparent" for key, _ in context.invocation_metadata()):
            self.traced[job_id].append(method)

    def _job(self, request: pb.SubmitJobRequest, context: grpc.ServicerContext) -> job_pb2.Job:
        self.sent[request.type].append(request)
        key = request.idempotency_key
        self.keys[request.type].append(key)
        tried = self.keys[request.type].count(key)
        if request.type.startswith("flaky") and (not key or tried <= FLAKY_TRIES):
            context.abort(grpc.StatusCode.UNAVAILABLE, "stream removed")
        return job_pb2.Job(id=f"job-{key}", type=request.type, idempotency_key=key)

    def SubmitJob(self, request: Any, context: grpc.ServicerContext) -> pb.SubmitJobResponse:
        return pb.SubmitJobResponse(job=self._job(request, context))

    def SubmitJobs(self, request: Any, context: grpc.ServicerContext) -> pb.SubmitJobsResponse:
        """A `flaky` bulk fails its first tries (its first job's keys are recorded). With
        partial_success (the SDK's batched submits) every key is recorded, and a batch
        carrying a `flaky` job fails as a whole while any of its jobs has had fewer tries
        than FLAKY_TRIES."""
        if request.partial_success:
            for item in request.requests:
                self.keys[item.type].append(item.idempotency_key)
            self.batches[request.requests[0].type].append(len(request.requests))
            if any(
                item.type.startswith("flaky")
                and self.keys[item.type].count(item.idempotency_key) <= FLAKY_TRIES
                for item in request.requests
            ):
                context.abort(grpc.StatusCode.UNAVAILABLE, "stream removed")
            jobs = [self._job(item, context) for item in request.requests]
            return pb.SubmitJobsResponse(results=[pb.SubmitJobsResult(job=job) for job in jobs])
        first = request.requests[0]
        self.keys[first.type].append(first.idempotency_key)
        self.sent[first.type].append(request)
        if first.type.startswith("flaky") and len(self.keys[first.type]) <= FLAKY_TRIES:
            context.abort(grpc.StatusCode.UNAVAILABLE, "stream removed")
        answer = pb.SubmitJobsResponse(
            jobs=[job_pb2.Job(idempotency_key=item.idempotency_key) for item in request.requests]
        )
        if request.HasField("on_complete"):  # a batch: its callback is not among the jobs
            callback = request.on_complete.idempotency_key
            batch = job_pb2.Batch(id=f"batch-{callback}", callback_job_id=f"job-{callback}")
            batch.job_count = batch.unfinished = len(request.requests)
            answer.batch.CopyFrom(batch)
        return answer

    def GetBatch(self, request: Any, context: grpc.ServicerContext) -> pb.GetBatchResponse:
        batch = job_pb2.Batch(id=request.id, job_count=3, succeeded=2, dead=1, unfinished=0)
        return pb.GetBatchResponse(batch=batch)

    def RetryJob(self, request: Any, context: grpc.ServicerContext) -> pb.RetryJobResponse:
        """Revives two dependents of `request.id` when asked to."""
        job = job_pb2.Job(id=request.id, state=job_pb2.JOB_STATE_QUEUED)
        revived = (
            [f"{request.id}-child-{i}" for i in range(2)] if request.include_dependents else []
        )
        return pb.RetryJobResponse(job=job, revived_dependents=revived)

    def GetJob(self, request: Any, context: grpc.ServicerContext) -> pb.GetJobResponse:
        self._saw(request.id, "GetJob", context)
        if request.id == "flaky":
            context.abort(grpc.StatusCode.UNAVAILABLE, "stream removed")
        context.abort_with_status(to_status(NotFound(f"no job {request.id}")))

    def WatchJob(
        self, request: Any, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchJobResponse]:
        self._saw(request.id, "WatchJob", context)
        if request.id == "gone":
            context.abort_with_status(to_status(NotFound("no job gone")))
        if request.id.startswith("endless"):
            context.add_callback(self.left[request.id].set)
            yield pb.WatchJobResponse(sequence=1, job=job_pb2.Job(id=request.id))
            self.left[request.id].wait(30)
            return
        for sequence in range(request.after_sequence + 1, 4):
            job = job_pb2.Job(id=request.id, progress=sequence * 25.0)
            yield pb.WatchJobResponse(sequence=sequence, job=job)

    def CreateSchedule(
        self, request: Any, context: grpc.ServicerContext
    ) -> spb.CreateScheduleResponse:
        if not request.schedule.cron and not request.schedule.HasField("interval"):
            violation = FieldViolation("schedule.cron", "give a cron or an interval")
            context.abort_with_status(to_status(InvalidArgument([violation])))
        return spb.CreateScheduleResponse(schedule=request.schedule)

    def GetSchedule(self, request: Any, context: grpc.ServicerContext) -> spb.GetScheduleResponse:
        context.abort_with_status(to_status(NotFound(f"no schedule {request.id}")))


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[Scripted, str]]:
    """The scripted servicer on a real grpc server, and its address."""
    servicer = Scripted()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    add_JobServiceServicer_to_server(servicer, server)
    add_ScheduleServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


class Driver:
    """One of the two clients behind one async face, so that each test runs on both."""

    def __init__(self, client: AsyncClient | Client) -> None:
        self.client = client

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self.client, name)
        if isinstance(self.client, AsyncClient):
            return await method(*args, **kwargs)
        return await asyncio.to_thread(method, *args, **kwargs)

    async def watch(self, job_id: str, take: int = 0) -> list[JobUpdate]:
        """Every update of a watch, or only the first `take` (then the caller leaves)."""
        if isinstance(self.client, AsyncClient):
            updates = []
            stream = self.client.watch(job_id)
            async for update in stream:
                updates.append(update)
                if len(updates) == take:
                    break
            assert isinstance(stream, AsyncGenerator)  # so the caller can close it
            await stream.aclose()
            return updates
        return await asyncio.to_thread(self._blocking_watch, self.client, job_id, take)

    @staticmethod
    def _blocking_watch(client: Client, job_id: str, take: int) -> list[JobUpdate]:
        updates = []
        stream = client.watch(job_id)
        for update in stream:
            updates.append(update)
            if len(updates) == take:
                break
        assert isinstance(stream, Generator)  # so the caller can close it
        stream.close()
        return updates


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """Tracing on for the clients made after this, its spans kept in memory."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    monkeypatch.setattr(tracing, "_provider", provider)
    return spans


@pytest.fixture(params=["AsyncClient", "Client"])
async def driver(
    request: pytest.FixtureRequest, scripted: tuple[Scripted, str]
) -> AsyncIterator[Driver]:
    """Each client in turn, retrying quickly."""
    options: dict[str, Any] = {
        "api_key": "cvk_test",
        "tls": False,
        "submit_retry": SubmitRetry(initial=0.01, maximum=0.02),
    }
    if request.param == "AsyncClient":
        async with AsyncClient(scripted[1], **options) as client:
            yield Driver(client)
    else:
        with Client(scripted[1], **options) as blocking:
            yield Driver(blocking)


def absorbed(driver: Driver) -> dict[str, int]:
    return dict(driver.client.absorbed)


async def test_an_ambiguous_submit_is_sent_again_with_the_same_key(
    driver: Driver, scripted: tuple[Scripted, str]
) -> None:
    """Every try of one submit carries the key the SDK made for it; the retries are
    counted in `absorbed`."""
    kind = f"flaky-{uuid.uuid4().hex}"
    job = await driver.call("submit", kind, {"n": 1})
    keys = scripted[0].keys[kind]
    assert len(keys) == FLAKY_TRIES + 1 and len(set(keys)) == 1
    assert keys[0].startswith("sdk-") and job.idempotency_key == keys[0]
    assert absorbed(driver) == {"UNAVAILABLE": FLAKY_TRIES}


async def test_an_ambiguous_bulk_is_sent_again_with_the_same_keys(
    driver: Driver, scripted: tuple[Scripted, str]
) -> None:
    """A bulk's keys are fixed before the first try: the answer's jobs carry them."""
    kind = f"flaky-{uuid.uuid4().hex}"
    jobs = await driver.call("submit_many", [submit_request(kind), submit_request(kind)])
    first = scripted[0].keys[kind]
    assert len(first) == FLAKY_TRIES + 1 and len(set(first)) == 1
    assert jobs[0].idempotency_key == first[0] != jobs[1].idempotency_key
    assert absorbed(driver) == {"UNAVAILABLE": FLAKY_TRIES}


async def test_a_batch_refused_as_a_whole_is_retried_by_each_caller_with_its_key(
    driver: Driver, scripted: tuple[Scripted, str]
) -> None:
    """Concurrent submits batched into one SubmitJobs that answers UNAVAILABLE: each caller's
    own retry policy sends its own submit again with its own key (alone or in a later
    batch), and each gets the job of that key."""
    kind = f"flaky-{uuid.uuid4().hex}"
    jobs = await asyncio.gather(*(driver.call("submit", kind, {"i": i}) for i in range(8)))
    keys = scripted[0].keys[kind]
    assert len({job.idempotency_key for job in jobs}) == 8
    assert all(keys.count(job.idempotency_key) > FLAKY_TRIES for job in jobs)
    assert max(scripted[0].batches[kind], default=0) > 1
    assert absorbed(driver)["UNAVAILABLE"] >= 8


async def test_calls_that_are_not_retry_safe_raise_the_first_ambiguous_answer(
    driver: Driver, scripted: tuple[Scripted, str]
) -> None:
    """A submit without a key, and every other call, is sent once: the UNAVAILABLE is
    raised as `Unavailable`, nothing absorbed."""
    kind = f"flaky-{uuid.uuid4().hex}"
    with pytest.raises(Unavailable):
        await driver.call("submit", kind, idempotency_key=None)
    assert scripted[0].keys[kind] == [""]
    with pytest.raises(Unavailable):
        await driver.call("get", "flaky")
    assert absorbed(driver) == {}


async def test_failures_are_conveyor_errors_on_job_and_schedule_calls(driver: Driver) -> None:
    """No grpc.RpcError leaves a method: the code and the google.rpc details come back as
    the `conveyor.errors` error (a schedule's field violation included)."""
    with pytest.raises(NotFound, match="no job j-1"):
        await driver.call("get", "j-1")
    with pytest.raises(NotFound, match="no schedule s-1"):
        await driver.call("get_schedule", "s-1")
    with pytest.raises(InvalidArgument) as refused:
        await driver.call("create_schedule", schedule_request("noop"))
    assert [(v.field, v.description) for v in refused.value.violations] == [
        ("schedule.cron", "give a cron or an interval")
    ]
    made = await driver.call("create_schedule", schedule_request("noop", every=60))
    assert made.interval.seconds == 60


async def test_watch_yields_the_snapshot_then_every_change(driver: Driver) -> None:
    updates = await driver.watch("j-2")
    assert [(u.sequence, u.job.id, u.job.progress) for u in updates] == [
        (1, "j-2", 25.0),
        (2, "j-2", 50.0),
        (3, "j-2", 75.0),
    ]


async def test_a_failed_watch_raises_the_conveyor_error(driver: Driver) -> None:
    with pytest.raises(NotFound, match="no job gone"):
        await driver.watch("gone")


async def test_a_watch_left_early_cancels_its_call(
    driver: Driver, scripted: tuple[Scripted, str]
) -> None:
    """A caller that stops iterating ends the stream at the server too (the server's
    handler would otherwise hold a thread until its job ended)."""
    job_id = f"endless-{uuid.uuid4().hex}"
    assert [u.sequence for u in await driver.watch(job_id, take=1)] == [1]
    assert await asyncio.to_thread(scripted[0].left[job_id].wait, 10)


async def test_unary_calls_and_watch_carry_the_trace_context(
    traced: InMemorySpanExporter, driver: Driver, scripted: tuple[Scripted, str]
) -> None:
    """With tracing on, each call is a CLIENT span whose context reaches the server: the
    async client's through its channel's interceptors, the blocking client's unary calls
    through `traced_channel` and its watch through `client_stream_span`."""
    job_id = f"traced-{uuid.uuid4().hex}"
    with pytest.raises(NotFound):
        await driver.call("get", job_id)
    assert len(await driver.watch(job_id)) == 3
    assert scripted[0].traced[job_id] == ["GetJob", "WatchJob"]
    spans = [(span.name, span.kind) for span in traced.get_finished_spans()]
    assert spans == [
        ("/conveyor.v1.JobService/GetJob", SpanKind.CLIENT),
        ("/conveyor.v1.JobService/WatchJob", SpanKind.CLIENT),
    ]


async def test_a_failed_call_marks_its_span_as_an_error(
    traced: InMemorySpanExporter, driver: Driver
) -> None:
    """A failed call's CLIENT span has status ERROR, unary calls and watch alike (the
    blocking watch once raised its conveyor error inside its span, which then ended OK)."""
    with pytest.raises(NotFound):
        await driver.call("get", "gone")
    with pytest.raises(NotFound):
        await driver.watch("gone")
    statuses = [(span.name, span.status.status_code) for span in traced.get_finished_spans()]
    assert statuses == [
        ("/conveyor.v1.JobService/GetJob", StatusCode.ERROR),
        ("/conveyor.v1.JobService/WatchJob", StatusCode.ERROR),
    ]


def test_dependencies_go_as_ids_and_earlier_requests_as_indexes() -> None:
    """Guards issue 25, item 6: `depends_on` takes ids and Jobs (sent as their ids) and
    ints (indexes of earlier requests of the same call, sent as depends_on_requests); one
    id alone is one dependency, not its letters; a bool or anything else is a TypeError."""
    parent = Job(job_pb2.Job(id="j-parent"))
    request = submit_request(
        "email.send",
        depends_on=["j-1", parent, 0, 2],
        dependency_failure_policy=DependencyFailurePolicy.RUN_ANYWAY,
    )
    assert list(request.depends_on) == ["j-1", "j-parent"]
    assert list(request.depends_on_requests) == [0, 2]
    assert request.dependency_failure_policy == job_pb2.DEPENDENCY_FAILURE_POLICY_RUN_ANYWAY
    assert list(submit_request("noop", depends_on="j-abc").depends_on) == ["j-abc"]
    assert list(submit_request("noop", depends_on=parent).depends_on) == ["j-parent"]  # type: ignore[arg-type]
    plain = submit_request("noop")
    assert not plain.depends_on and not plain.depends_on_requests
    assert plain.dependency_failure_policy == job_pb2.DEPENDENCY_FAILURE_POLICY_UNSPECIFIED
    for bad in (True, 1.5, None):
        with pytest.raises(TypeError, match="depends_on takes"):
            submit_request("noop", depends_on=[bad])  # type: ignore[list-item]


async def test_a_submit_sends_its_dependencies_and_refuses_an_index(
    driver: Driver, scripted: tuple[Scripted, str]
) -> None:
    """A submit's Job dependency goes as its id (batched or alone); an int, which only a
    call of several requests can mean, is refused before anything is sent."""
    kind = f"child-{uuid.uuid4().hex}"
    parent = Job(job_pb2.Job(id="j-parent"))
    job = await driver.call("submit", kind, depends_on=[parent, "j-2"])
    (sent,) = scripted[0].sent[kind]
    assert list(sent.depends_on) == ["j-parent", "j-2"] and job.idempotency_key
    with pytest.raises(ValueError, match="an int in depends_on"):
        await driver.call("submit", kind, depends_on=[0])
    assert len(scripted[0].sent[kind]) == 1


async def test_a_batch_is_submitted_with_its_callback_keyed_and_answers_typed(
    driver: Driver, scripted: tuple[Scripted, str]
) -> None:
    """submit_batch sends the callback as `on_complete` with a key of its own (fixed before
    the first try: the ambiguous answers are retried with the same keys), in-call indexes
    as depends_on_requests, and answers the jobs and a typed Batch; get_batch reads one."""
    kind = f"flaky-{uuid.uuid4().hex}"
    requests = [submit_request(kind), submit_request("noop", depends_on=[0])]
    callback = submit_request("email.send", {"to": "ada@example.com"})
    made = await driver.call("submit_batch", requests, on_complete=callback)
    assert isinstance(made, SubmittedBatch) and isinstance(made.batch, Batch)
    sent = scripted[0].sent[kind]
    assert len(sent) == FLAKY_TRIES + 1 and sent[0] == sent[-1], "one request, sent again"
    key = sent[0].on_complete.idempotency_key
    assert key.startswith("sdk-") and not callback.idempotency_key, "the caller's is not changed"
    assert list(sent[0].requests[1].depends_on_requests) == [0]
    assert [job.idempotency_key for job in made.jobs] == [
        r.idempotency_key for r in sent[0].requests
    ]
    assert made.batch.id == f"batch-{key}" and made.batch.callback_job_id == f"job-{key}"
    assert (made.batch.job_count, made.batch.unfinished, made.batch.ended) == (2, 2, False)

    got = await driver.call("get_batch", "b-1")
    assert (got.id, got.succeeded, got.dead, got.cancelled, got.ended) == ("b-1", 2, 1, 0, True)
    assert got.create_time is None and got.raw.job_count == 3


async def test_retry_answers_the_job_and_the_dependents_it_revived(driver: Driver) -> None:
    """`retry` still answers a Job (a RetriedJob), with `revived_dependents` empty unless
    `include_dependents` asked for them."""
    plain = await driver.call("retry", "j-dead")
    assert isinstance(plain, RetriedJob) and isinstance(plain, Job)
    assert plain.state is JobState.QUEUED and plain.revived_dependents == []
    revived = await driver.call("retry", "j-dead", include_dependents=True)
    assert revived.revived_dependents == ["j-dead-child-0", "j-dead-child-1"]


def test_connections_are_checked() -> None:
    """`connections` is 1 to 64, and cannot be combined with a channel of one's own."""
    for bad in (0, 65):
        with pytest.raises(ValueError, match="connections must be 1 to 64"):
            Client("127.0.0.1:1", connections=bad, tls=False)
    channel = grpc.insecure_channel("127.0.0.1:1")
    with pytest.raises(ValueError, match="with a channel of your own"):
        Client(channel=channel, connections=2)
    channel.close()
