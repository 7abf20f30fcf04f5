"""The two Python clients, `AsyncClient` (grpc.aio) and `Client` (blocking), as one core.

Every method is written once, as a static method of `_Calls` that describes the call it
makes (a `Call`, see `_calls.py`): the RPC, the request (from the builders below), what
of the answer it returns, and whether the request may be sent again after an ambiguous
answer. The two clients are drivers that send any `Call`: `AsyncClient._run` awaits it,
`Client._run` blocks on it; both retry the same way (`Attempts`) and raise every failure
as its `conveyor.errors` error (`from_rpc_error`), so no `grpc.RpcError` leaves a method.
`_awaited(op)` and `_blocking(op)` make each method from its description, with the same
name, parameters and docstring in both classes (tests/unit/test_client.py fails if the
two drift); a server stream (`watch`) is a `Stream`, which `_stream` drives.

Why descriptions rather than generating one class from the other (httpcore's `unasync`):
the two differ in more than `await` (tracing rides on the channel's interceptors in one,
on `traced_channel` and a span per stream in the other), generated code is still two
copies to keep, and it would be as untyped as the generated stubs. Described once, each
RPC's message types are declared once (`Service.rpc`, checked against the descriptor on
import) and flow to every method: nothing in this module needs a type error ignored.

Adding an RPC, say `ListApiKeys` (one place, then one line per client):
1. here, declare it beside the others, `LIST_API_KEYS = API_KEYS.rpc("ListApiKeys",
   akpb.ListApiKeysRequest, akpb.ListApiKeysResponse)` (a new service also gets its
   `Service(descriptor, stub class)` line, as `API_KEYS` did), and add its method to
   `_Calls`: build the request, return `LIST_API_KEYS.call(request, lambda answer: ...)`,
   with `retry_safe=True` only if sending the request twice does no harm;
2. `list_api_keys = _awaited(_Calls.list_api_keys)` in `AsyncClient` and
   `list_api_keys = _blocking(_Calls.list_api_keys)` in `Client` (`_async_stream` and
   `_blocking_stream` for a server stream).
Changing a call (say, paging `attempts`) is a change to its `_Calls` method alone. The
methods are static methods of a class, not module functions, so that `list` does not hide
the builtin here.
"""

from __future__ import annotations

import asyncio
import builtins
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from concurrent import futures
from datetime import datetime, timedelta
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

import grpc

from conveyor.client._calls import Batch as CallBatch
from conveyor.client._calls import (
    Call,
    Coalescer,
    Merge,
    Service,
    Stream,
    Stubs,
    Waiting,
    method_of,
)
from conveyor.client._retries import Attempts, SubmitRetry, new_idempotency_key
from conveyor.client.types import (
    Attempt,
    Batch,
    BulkOperation,
    DependencyFailurePolicy,
    Job,
    JobResult,
    JobUpdate,
    Page,
    RetriedJob,
    SubmittedBatch,
)
from conveyor.config import Settings
from conveyor.errors import ConveyorError, from_rpc_error, from_status
from conveyor.jobs.model import MAX_BULK
from conveyor.telemetry import tracing
from conveyor.tls import ClientTls, open_aio_channel, open_channel
from conveyor.v1 import api_key_service_pb2 as akpb
from conveyor.v1 import job_pb2, queue_pb2
from conveyor.v1 import job_service_pb2 as pb
from conveyor.v1 import schedule_service_pb2 as spb
from conveyor.v1.api_key_service_pb2_grpc import ApiKeyServiceStub
from conveyor.v1.job_service_pb2_grpc import JobServiceStub
from conveyor.v1.schedule_service_pb2_grpc import ScheduleServiceStub

P = ParamSpec("P")
T = TypeVar("T")

Metadata = tuple[tuple[str, str], ...]


def submit_request(
    type: str,
    payload: Mapping[str, Any] | None = None,
    *,
    queue: str = "",
    priority: int | None = None,
    idempotency_key: str = "",
    run_at: datetime | None = None,
    delay: timedelta | None = None,
    max_attempts: int = 0,
    timeout: timedelta | None = None,
    retry: job_pb2.RetryPolicy | None = None,
    retention: timedelta | None = None,
    labels: Mapping[str, str] | None = None,
    unique_for: timedelta | None = None,
    debounce: timedelta | None = None,
    concurrency_key: str = "",
    rate_key: str = "",
    depends_on: Sequence[str | Job | int] = (),
    dependency_failure_policy: DependencyFailurePolicy | None = None,
) -> pb.SubmitJobRequest:
    """Build a SubmitJobRequest (also the items of `submit_many` and `submit_batch`). An empty
    `idempotency_key` is left for `submit`/`submit_many` to fill in when they send it.
    `labels` tag the job to find it again (`list(filter='labels.team = "billing"')`).
    `unique_for`: within it a submit with the same key answers the first job, whatever it
    asks; `debounce`: the job runs this long after the last submit with its key, with that
    submit's payload. Both need your `idempotency_key` and only `submit` sends them. Jobs
    with one `concurrency_key` (e.g. a customer id) run at most the queue's
    `max_running_per_key` at a time; jobs with one `rate_key` (e.g. a partner's API) start
    at most the queue's `rate_per_key_jobs` times per `rate_per_key_interval`.

    `depends_on`: the job starts once every one of these has SUCCEEDED (until then it is
    SCHEDULED, `blocked` DEPENDENCIES): job ids or `Job`s, and in `submit_many` or
    `submit_batch` also ints, the index of an earlier request of the same call. When one
    ends DEAD or CANCELLED the job is CANCELLED too, unless `dependency_failure_policy` is
    `DependencyFailurePolicy.RUN_ANYWAY`."""
    request = pb.SubmitJobRequest(
        type=type, queue=queue, idempotency_key=idempotency_key, max_attempts=max_attempts
    )
    if payload:
        request.payload.update(dict(payload))
    if priority is not None:
        request.priority = priority
    if run_at is not None:
        request.run_at.FromDatetime(run_at)
    if delay is not None:
        request.delay.FromTimedelta(delay)
    if timeout is not None:
        request.timeout.FromTimedelta(timeout)
    if retry is not None:
        request.retry.CopyFrom(retry)
    if retention is not None:
        request.retention.FromTimedelta(retention)
    if labels:
        request.labels.update(labels)
    if unique_for is not None:
        request.unique_for.FromTimedelta(unique_for)
    if debounce is not None:
        request.debounce.FromTimedelta(debounce)
    if concurrency_key:
        request.concurrency_key = concurrency_key
    if rate_key:
        request.rate_key = rate_key
    _add_dependencies(request, depends_on)
    if dependency_failure_policy is not None:
        request.dependency_failure_policy = dependency_failure_policy.value
    return request


def _add_dependencies(request: pb.SubmitJobRequest, depends_on: Sequence[str | Job | int]) -> None:
    """`depends_on`'s jobs into the request: ids and Jobs as ids, ints as indexes of
    earlier requests of the same call (`depends_on_requests`)."""
    if isinstance(depends_on, str | Job):  # one id is a Sequence too: take it, not its letters
        depends_on = [depends_on]
    for dependency in depends_on:
        if isinstance(dependency, Job):
            request.depends_on.append(dependency.id)
        elif isinstance(dependency, str):
            request.depends_on.append(dependency)
        elif isinstance(dependency, int) and not isinstance(dependency, bool):
            request.depends_on_requests.append(dependency)
        else:
            raise TypeError(
                f"depends_on takes job ids, Jobs and request indexes, not {dependency!r}"
            )


def retry_policy(
    *,
    initial: float | None = None,
    maximum: float | None = None,
    multiplier: float = 0.0,
    jitter: float | None = None,
) -> job_pb2.RetryPolicy:
    """A RetryPolicy for `submit(..., retry=...)`; times in seconds, unset fields default."""
    policy = job_pb2.RetryPolicy(multiplier=multiplier)
    if initial is not None:
        policy.initial_backoff.FromTimedelta(timedelta(seconds=initial))
    if maximum is not None:
        policy.max_backoff.FromTimedelta(timedelta(seconds=maximum))
    if jitter is not None:
        policy.jitter = jitter
    return policy


def limits_request(
    queue: str,
    *,
    max_running: int | None = None,
    rate_jobs: int | None = None,
    rate_interval: float | None = None,
    max_running_per_owner: int | None = None,
    shards: int | None = None,
    max_running_per_key: int | None = None,
    rate_per_key_jobs: int | None = None,
    rate_per_key_interval: float | None = None,
) -> pb.UpdateQueueLimitsRequest:
    """An UpdateQueueLimitsRequest that changes only the limits given (`rate_interval` in
    seconds) and keeps the queue's others; 0 removes a limit. `rate_jobs` alone keeps the
    queue's rate window (and is refused if it has none); give both to set a new rate limit.
    `shards` spreads the queue over that many Redis hash tags (it can only grow; see
    conveyor.jobs.shards). `max_running_per_key` caps the running jobs of each concurrency
    key (SubmitJobRequest.concurrency_key); `rate_per_key_jobs` per `rate_per_key_interval`
    (seconds) the starts of each rate key (SubmitJobRequest.rate_key). Its update_mask
    names exactly the limits given (none given: the server refuses it)."""
    request = pb.UpdateQueueLimitsRequest(queue=queue)
    request.update_mask.SetInParent()
    given = {
        "max_running": max_running,
        "rate_jobs": rate_jobs,
        "rate_interval": rate_interval,
        "max_running_per_owner": max_running_per_owner,
        "shards": shards,
        "max_running_per_key": max_running_per_key,
        "rate_per_key_jobs": rate_per_key_jobs,
        "rate_per_key_interval": rate_per_key_interval,
    }
    for name, value in given.items():
        if value is None:
            continue
        request.update_mask.paths.append(name)
        if name in ("rate_interval", "rate_per_key_interval"):
            getattr(request.limits, name).FromTimedelta(timedelta(seconds=value))
        else:
            setattr(request.limits, name, value)
    return request


# A key's rate limit in `key_limits_request`: (per second, burst), or the server's default.
KeyRate = tuple[float, float] | Literal["default"]
ROLES = {"user": akpb.API_KEY_ROLE_USER, "admin": akpb.API_KEY_ROLE_ADMIN}


def key_limits_request(
    key_id: str,
    *,
    submit_limit: KeyRate | None = None,
    read_limit: KeyRate | None = None,
    max_running_jobs: int | None = None,
) -> akpb.UpdateApiKeyLimitsRequest:
    """An UpdateApiKeyLimitsRequest that changes only the limits given and keeps the key's
    others (None: not given). A rate limit is `(per_second, burst)` (a rate of 0 is
    unlimited, a burst of 0 a second's worth) or "default" for the server's default;
    `max_running_jobs` 0 removes the key's cap. Its update_mask names exactly the limits
    given (none given: the server refuses it)."""
    request = akpb.UpdateApiKeyLimitsRequest(id=key_id)
    request.update_mask.SetInParent()
    for name, rate in (("submit_limit", submit_limit), ("read_limit", read_limit)):
        if rate is None:
            continue
        request.update_mask.paths.append(name)
        if rate != "default":
            getattr(request, name).CopyFrom(akpb.RateLimit(per_second=rate[0], burst=rate[1]))
    if max_running_jobs is not None:
        request.update_mask.paths.append("max_running_jobs")
        request.max_running_jobs = max_running_jobs
    return request


CATCH_UP = {
    "skip": spb.CATCH_UP_POLICY_SKIP,
    "once": spb.CATCH_UP_POLICY_RUN_ONCE,
    "all": spb.CATCH_UP_POLICY_RUN_ALL,
}


def schedule_request(
    type: str,
    payload: Mapping[str, Any] | None = None,
    *,
    cron: str = "",
    every: float = 0.0,
    time_zone: str = "",
    catch_up: str = "skip",
    catch_up_limit: int = 0,
    start: datetime | None = None,
    end: datetime | None = None,
    description: str = "",
    queue: str = "",
    priority: int | None = None,
    max_attempts: int = 0,
    timeout: timedelta | None = None,
    retry: job_pb2.RetryPolicy | None = None,
    retention: timedelta | None = None,
    labels: Mapping[str, str] | None = None,
    concurrency_key: str = "",
    rate_key: str = "",
) -> spb.Schedule:
    """A Schedule for `create_schedule`: `cron` (in `time_zone`) or `every` seconds; the
    job as `submit` takes it, less what each bucket sets (idempotency key, run time);
    `catch_up` one of skip, once, all."""
    schedule = spb.Schedule(
        description=description,
        time_zone=time_zone,
        catch_up=CATCH_UP[catch_up],
        catch_up_limit=catch_up_limit,
    )
    if cron:
        schedule.cron = cron
    if every:
        schedule.interval.FromTimedelta(timedelta(seconds=every))
    if start is not None:
        schedule.start_time.FromDatetime(start)
    if end is not None:
        schedule.end_time.FromDatetime(end)
    job = submit_request(
        type,
        payload,
        queue=queue,
        priority=priority,
        max_attempts=max_attempts,
        timeout=timeout,
        retry=retry,
        retention=retention,
        labels=labels,
        concurrency_key=concurrency_key,
        rate_key=rate_key,
    )
    schedule.job_template.MergeFromString(job.SerializeToString())  # the same field numbers
    return schedule


def _keyed(options: dict[str, Any]) -> dict[str, Any]:
    """`submit`'s options with the idempotency key it sends: the caller's, else a fresh one;
    an explicit None sends none."""
    key = options.get("idempotency_key", "")
    if key is None:
        return {**options, "idempotency_key": ""}
    return options if key else {**options, "idempotency_key": new_idempotency_key()}


def bulk_request(
    requests: Sequence[pb.SubmitJobRequest],
    view: pb.JobView,
    idempotency_keys: bool,
    on_complete: pb.SubmitJobRequest | None = None,
) -> pb.SubmitJobsRequest:
    """`submit_many`'s (and `submit_batch`'s) request: copies of `requests` and
    `on_complete` (the caller's are left as they are), each without a key given one of its
    own when `idempotency_keys`."""
    request = pb.SubmitJobsRequest(requests=requests, view=view)
    if on_complete is not None:
        request.on_complete.CopyFrom(on_complete)
    if idempotency_keys:
        for item in _submitted_items(request):
            if not item.idempotency_key:
                item.idempotency_key = new_idempotency_key()
    return request


def _submitted_items(request: pb.SubmitJobsRequest) -> builtins.list[pb.SubmitJobRequest]:
    """The jobs a SubmitJobs makes: its requests, and its batch's callback if it has one."""
    items = builtins.list(request.requests)
    if request.HasField("on_complete"):
        items.append(request.on_complete)
    return items


def _retry_safe(request: pb.SubmitJobsRequest) -> bool:
    """A bulk may be sent again only if every job in it (a callback too) carries a key."""
    return all(item.idempotency_key for item in _submitted_items(request))


def _metadata(api_key: str | None) -> Metadata:
    key = api_key if api_key is not None else Settings.from_env().api_key
    return (("authorization", f"Bearer {key}"),) if key else ()


def _target(target: str | None) -> str:
    return target or Settings.from_env().api_addr


def _coalescer(batch_submits: bool, connections: int) -> Coalescer | None:
    """What batches a client's submits: up to one call in flight per connection. None when
    batching is off, or tracing is on (a batch's jobs would all carry the trace context of
    the call that carried them, not their own callers')."""
    if not batch_submits or tracing.enabled():
        return None
    return Coalescer(connections, MAX_BATCH_BYTES)


# A channel of its own TCP connection: grpc otherwise shares one connection between the
# channels of a process that dial the same target.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


def _connection_options(connections: int, channel: object) -> Sequence[tuple[str, Any]]:
    """The channel options for `connections` connections (checked: 1 to 64, and 1 with a
    channel of the caller's own)."""
    if not 1 <= connections <= 64:
        raise ValueError(f"connections must be 1 to 64, not {connections}")
    if channel is not None and connections != 1:
        raise ValueError("connections cannot be given with a channel of your own")
    return OWN_CONNECTION if connections > 1 else ()


# -- the calls: what each method sends and returns, once for both clients ----------------

JOBS = Service(pb.DESCRIPTOR.services_by_name["JobService"], JobServiceStub)
SCHEDULES = Service(spb.DESCRIPTOR.services_by_name["ScheduleService"], ScheduleServiceStub)
API_KEYS = Service(akpb.DESCRIPTOR.services_by_name["ApiKeyService"], ApiKeyServiceStub)

SUBMIT_JOB = JOBS.rpc("SubmitJob", pb.SubmitJobRequest, pb.SubmitJobResponse)
SUBMIT_JOBS = JOBS.rpc("SubmitJobs", pb.SubmitJobsRequest, pb.SubmitJobsResponse)
GET_JOB = JOBS.rpc("GetJob", pb.GetJobRequest, pb.GetJobResponse)
LIST_JOBS = JOBS.rpc("ListJobs", pb.ListJobsRequest, pb.ListJobsResponse)
WATCH_JOB = JOBS.rpc("WatchJob", pb.WatchJobRequest, pb.WatchJobResponse)
CANCEL_JOB = JOBS.rpc("CancelJob", pb.CancelJobRequest, pb.CancelJobResponse)
RETRY_JOB = JOBS.rpc("RetryJob", pb.RetryJobRequest, pb.RetryJobResponse)
LIST_JOB_ATTEMPTS = JOBS.rpc(
    "ListJobAttempts", pb.ListJobAttemptsRequest, pb.ListJobAttemptsResponse
)
GET_JOB_RESULT = JOBS.rpc("GetJobResult", pb.GetJobResultRequest, pb.GetJobResultResponse)
GET_BATCH = JOBS.rpc("GetBatch", pb.GetBatchRequest, pb.GetBatchResponse)
GET_QUEUE_STATS = JOBS.rpc("GetQueueStats", pb.GetQueueStatsRequest, pb.GetQueueStatsResponse)
PAUSE_QUEUE = JOBS.rpc("PauseQueue", pb.PauseQueueRequest, pb.PauseQueueResponse)
RESUME_QUEUE = JOBS.rpc("ResumeQueue", pb.ResumeQueueRequest, pb.ResumeQueueResponse)
UPDATE_QUEUE_LIMITS = JOBS.rpc(
    "UpdateQueueLimits", pb.UpdateQueueLimitsRequest, pb.UpdateQueueLimitsResponse
)
LIST_WORKERS = JOBS.rpc("ListWorkers", pb.ListWorkersRequest, pb.ListWorkersResponse)
RETRY_JOBS = JOBS.rpc("RetryJobs", pb.RetryJobsRequest, pb.RetryJobsResponse)
CANCEL_JOBS = JOBS.rpc("CancelJobs", pb.CancelJobsRequest, pb.CancelJobsResponse)
DELETE_JOBS = JOBS.rpc("DeleteJobs", pb.DeleteJobsRequest, pb.DeleteJobsResponse)
GET_BULK_OPERATION = JOBS.rpc(
    "GetBulkOperation", pb.GetBulkOperationRequest, pb.GetBulkOperationResponse
)
CANCEL_BULK_OPERATION = JOBS.rpc(
    "CancelBulkOperation", pb.CancelBulkOperationRequest, pb.CancelBulkOperationResponse
)
CREATE_SCHEDULE = SCHEDULES.rpc(
    "CreateSchedule", spb.CreateScheduleRequest, spb.CreateScheduleResponse
)
GET_SCHEDULE = SCHEDULES.rpc("GetSchedule", spb.GetScheduleRequest, spb.GetScheduleResponse)
LIST_SCHEDULES = SCHEDULES.rpc("ListSchedules", spb.ListSchedulesRequest, spb.ListSchedulesResponse)
DELETE_SCHEDULE = SCHEDULES.rpc(
    "DeleteSchedule", spb.DeleteScheduleRequest, spb.DeleteScheduleResponse
)
PAUSE_SCHEDULE = SCHEDULES.rpc("PauseSchedule", spb.PauseScheduleRequest, spb.PauseScheduleResponse)
RESUME_SCHEDULE = SCHEDULES.rpc(
    "ResumeSchedule", spb.ResumeScheduleRequest, spb.ResumeScheduleResponse
)
TRIGGER_SCHEDULE = SCHEDULES.rpc(
    "TriggerSchedule", spb.TriggerScheduleRequest, spb.TriggerScheduleResponse
)
CREATE_API_KEY = API_KEYS.rpc("CreateApiKey", akpb.CreateApiKeyRequest, akpb.CreateApiKeyResponse)
LIST_API_KEYS = API_KEYS.rpc("ListApiKeys", akpb.ListApiKeysRequest, akpb.ListApiKeysResponse)
REVOKE_API_KEY = API_KEYS.rpc("RevokeApiKey", akpb.RevokeApiKeyRequest, akpb.RevokeApiKeyResponse)
UPDATE_API_KEY_LIMITS = API_KEYS.rpc(
    "UpdateApiKeyLimits", akpb.UpdateApiKeyLimitsRequest, akpb.UpdateApiKeyLimitsResponse
)

# Requests of coalesced submits, in bytes, that one SubmitJobs carries at most (a submit
# larger than this alone still goes, alone): well within a stock gRPC message (4 MiB).
MAX_BATCH_BYTES = 1 << 20


def _each_submitted(
    answer: pb.SubmitJobsResponse, requests: builtins.list[pb.SubmitJobRequest]
) -> builtins.list[pb.SubmitJobResponse | ConveyorError]:
    """A per-item SubmitJobs' answer as each request's own SubmitJob would have had it:
    the job (in the basic view, as `submit` asks for it: the caller's `extract` puts its
    payload back), or the error that SubmitJob would have raised."""
    results: Sequence[pb.SubmitJobsResult] = answer.results
    if not results and answer.jobs:  # an API from before partial_success stored them all
        results = [pb.SubmitJobsResult(job=job) for job in answer.jobs]
    shares: builtins.list[pb.SubmitJobResponse | ConveyorError] = []
    for result in results:
        if result.HasField("error"):
            shares.append(from_status(result.error))
        else:
            shares.append(pb.SubmitJobResponse(job=result.job))
    return shares


def _submitted(answer: pb.SubmitJobsResponse, request: pb.SubmitJobsRequest) -> builtins.list[Job]:
    """A bulk's jobs, each with its request's payload put back (as `submit` does) unless
    the answer echoed them. (A batch's callback is not among them: it is the batch's.)"""
    jobs = answer.jobs[: len(request.requests)]
    if request.view == pb.JOB_VIEW_FULL:
        return [Job(job) for job in jobs]
    return [Job(_with_payload(job, sent)) for job, sent in zip(jobs, request.requests, strict=True)]


def _batch_submitted(
    answer: pb.SubmitJobsResponse, request: pb.SubmitJobsRequest
) -> SubmittedBatch:
    return SubmittedBatch(_submitted(answer, request), Batch.from_proto(answer.batch))


def _attempts(answer: pb.ListJobAttemptsResponse) -> builtins.list[Attempt]:
    return [Attempt.from_proto(attempt) for attempt in answer.attempts]


def _with_payload(job: job_pb2.Job, request: pb.SubmitJobRequest) -> job_pb2.Job:
    """A submitted job answered in the basic view, with the payload its request sent (the
    job was made from it, or is the earlier job of the same key and the same request)."""
    if request.payload.fields:
        job.payload.CopyFrom(request.payload)
    return job


SUBMIT_EACH: Merge[pb.SubmitJobRequest, pb.SubmitJobResponse] = Merge(
    SUBMIT_JOBS,
    lambda requests: pb.SubmitJobsRequest(
        requests=requests, view=pb.JOB_VIEW_BASIC, partial_success=True
    ),
    _each_submitted,
    MAX_BULK,
)


class _Calls:
    """Every method of both clients, as the call (or stream) it makes; `_awaited` and
    `_blocking` (`_async_stream` and `_blocking_stream`) make each the method of its name."""

    @staticmethod
    def submit(type: str, payload: Mapping[str, Any] | None = None, **options: Any) -> Call[Job]:
        """Submit one job (`options` as `submit_request` takes them); the job as stored.

        `idempotency_key`: yours wins; unset (or "") the SDK makes one for this call
        (`sdk-…`, on `job.idempotency_key`) and sends it on every retry, so a retried submit
        makes one job; None sends no key, and then an ambiguous answer is raised, not
        retried.

        Submits made while the client's other submits are in flight go together as one
        SubmitJobs of per-item results (see `batch_submits`): each caller still gets its
        own job, or the error its submit alone would have raised.

        With `unique_for` or `debounce` (conveyor.jobs.unique) the key must be yours (none
        is made up: a key of this call alone would make neither mean anything), the call
        goes alone as a SubmitJob (SubmitJobs refuses them), and the job comes back as the
        server has it: the key's earlier job, or the debounced one with this payload."""
        if options.get("unique_for") is not None or options.get("debounce") is not None:
            request = submit_request(type, payload, **options)
            return SUBMIT_JOB.call(
                request, lambda answer: Job(answer.job), retry_safe=bool(request.idempotency_key)
            )
        request = submit_request(type, payload, **_keyed(options))
        if request.depends_on_requests:
            raise ValueError(
                "an int in depends_on names a request of the same submit_many or submit_batch;"
                " submit one job on another by its id or Job"
            )
        request.view = pb.JOB_VIEW_BASIC  # the payload is ours: not sent back, put back here
        retry_safe = bool(request.idempotency_key)
        return SUBMIT_JOB.call(
            request,
            lambda answer: Job(_with_payload(answer.job, request)),
            retry_safe=retry_safe,
            merge=SUBMIT_EACH,
        )

    @staticmethod
    def submit_many(
        requests: Sequence[pb.SubmitJobRequest],
        *,
        view: pb.JobView = pb.JOB_VIEW_BASIC,
        idempotency_keys: bool = True,
    ) -> Call[builtins.list[Job]]:
        """Submit up to 1,000 jobs at once, all or none; the jobs in request order.

        Each job without an idempotency key gets one of its own (`requests` themselves are
        not changed), fixed before the first try: a bulk retried after an ambiguous answer
        returns the jobs the first try made. `idempotency_keys=False` sends none (and does
        not retry, unless every request carries your key).

        By default (`JOB_VIEW_BASIC`) the answer carries every field but `payload` (the
        payloads were sent with the requests, and each job gets its own back from them
        here), so it stays about 200 bytes a job however large the payloads: 1,000 payloads
        of 5 KB would otherwise come back as 5 MB, past what a stock gRPC client accepts.
        `view=JOB_VIEW_FULL` has the server echo the payloads too."""
        request = bulk_request(requests, view, idempotency_keys)
        retry_safe = _retry_safe(request)
        return SUBMIT_JOBS.call(
            request, lambda answer: _submitted(answer, request), retry_safe=retry_safe
        )

    @staticmethod
    def submit_batch(
        requests: Sequence[pb.SubmitJobRequest],
        on_complete: pb.SubmitJobRequest,
        *,
        view: pb.JobView = pb.JOB_VIEW_BASIC,
        idempotency_keys: bool = True,
    ) -> Call[SubmittedBatch]:
        """Submit up to 1,000 jobs as a batch (all or none, as `submit_many`) with a
        callback job, `on_complete` (a `submit_request`), that runs once after every job of
        the batch has ended, whatever the outcomes. Its payload gains `batch`: the batch's
        `id`, `counts` by final state (`succeeded`, `dead`, `cancelled`) and `job_ids`. The
        callback may not have dependencies of its own (it depends on the whole batch).

        The answer: the jobs in request order and the `Batch` (`get_batch` follows it; its
        `callback_job_id` is the callback's). Keys and views as in `submit_many`."""
        request = bulk_request(requests, view, idempotency_keys, on_complete)
        return SUBMIT_JOBS.call(
            request,
            lambda answer: _batch_submitted(answer, request),
            retry_safe=_retry_safe(request),
        )

    @staticmethod
    def get_batch(batch_id: str) -> Call[Batch]:
        """A batch as it stands: how many of its jobs ended how, and its callback's id."""
        request = pb.GetBatchRequest(id=batch_id)
        return GET_BATCH.call(
            request, lambda answer: Batch.from_proto(answer.batch), retry_safe=True
        )

    @staticmethod
    def get(job_id: str) -> Call[Job]:
        """The job as it stands."""
        return GET_JOB.call(pb.GetJobRequest(id=job_id), lambda answer: Job(answer.job))

    @staticmethod
    def list(**filters: Any) -> Call[Page[Job]]:
        """One page of jobs, newest first; filters are ListJobsRequest fields (state, queue,
        type, page_size, page_token, …), `filter` an AIP-160 filter such as
        `'state = DEAD AND labels.team = "billing" AND error:"timeout"'`. Ask again with
        the page's `next_page_token` (and the same filters) until it is empty."""
        return LIST_JOBS.call(
            pb.ListJobsRequest(**filters),
            lambda answer: Page([Job(job) for job in answer.jobs], answer.next_page_token),
        )

    @staticmethod
    def cancel(job_id: str) -> Call[Job]:
        """Cancel a job that has not finished (a running one's handler is cancelled too)."""
        return CANCEL_JOB.call(pb.CancelJobRequest(id=job_id), lambda answer: Job(answer.job))

    @staticmethod
    def retry(
        job_id: str, max_attempts: int = 0, *, include_dependents: bool = False
    ) -> Call[RetriedJob]:
        """Replay a DEAD or CANCELLED job with `max_attempts` more attempts (0: default).
        `include_dependents`: also revive the dependents its end cancelled (transitively),
        which wait for it again; their ids are the answer's `revived_dependents`."""
        request = pb.RetryJobRequest(
            id=job_id, max_attempts=max_attempts, include_dependents=include_dependents
        )
        return RETRY_JOB.call(request, RetriedJob.from_response)

    @staticmethod
    def retry_jobs(
        filter: str, *, force: bool = False, per_second: int = 0, max_attempts: int = 0
    ) -> Call[BulkOperation]:
        """Replay every DEAD or CANCELLED job `filter` matches (AIP-160, as `list`), each
        as `retry` does, in the background at `per_second` (0: 500). Without `force`, a dry
        run: nothing starts, and the answer's `matched` says how many jobs it would replay.
        Poll the operation with `get_bulk_operation`."""
        request = pb.RetryJobsRequest(
            filter=filter, force=force, per_second=per_second, max_attempts=max_attempts
        )
        return RETRY_JOBS.call(
            request, lambda answer: _bulk_answer(answer, pb.BULK_ACTION_RETRY, filter)
        )

    @staticmethod
    def cancel_jobs(
        filter: str, *, force: bool = False, per_second: int = 0
    ) -> Call[BulkOperation]:
        """Cancel every unfinished job `filter` matches, as `retry_jobs` replays (dry run
        without `force`)."""
        request = pb.CancelJobsRequest(filter=filter, force=force, per_second=per_second)
        return CANCEL_JOBS.call(
            request, lambda answer: _bulk_answer(answer, pb.BULK_ACTION_CANCEL, filter)
        )

    @staticmethod
    def delete_jobs(
        filter: str, *, force: bool = False, per_second: int = 0
    ) -> Call[BulkOperation]:
        """Delete every finished job `filter` matches, with its attempts, artifacts and
        result, as `retry_jobs` replays (dry run without `force`)."""
        request = pb.DeleteJobsRequest(filter=filter, force=force, per_second=per_second)
        return DELETE_JOBS.call(
            request, lambda answer: _bulk_answer(answer, pb.BULK_ACTION_DELETE, filter)
        )

    @staticmethod
    def get_bulk_operation(operation_id: str) -> Call[BulkOperation]:
        """A bulk operation as it stands (poll until `.ended`)."""
        request = pb.GetBulkOperationRequest(id=operation_id)
        return GET_BULK_OPERATION.call(
            request, lambda answer: BulkOperation(answer.operation), retry_safe=True
        )

    @staticmethod
    def cancel_bulk_operation(operation_id: str) -> Call[BulkOperation]:
        """Stop a running bulk operation; what it did stays done."""
        request = pb.CancelBulkOperationRequest(id=operation_id)
        return CANCEL_BULK_OPERATION.call(request, lambda answer: BulkOperation(answer.operation))

    @staticmethod
    def result(job_id: str) -> Call[JobResult]:
        """A SUCCEEDED job, its result (a dict; None if the handler returned none) and its
        artifacts with download links."""
        request = pb.GetJobResultRequest(id=job_id)
        return GET_JOB_RESULT.call(request, JobResult.from_proto)

    @staticmethod
    def attempts(job_id: str) -> Call[builtins.list[Attempt]]:
        """The job's recorded attempts, oldest first: the first 1,000 (a job makes at most
        100 a run; `attempts_page` pages past them)."""
        request = pb.ListJobAttemptsRequest(id=job_id)
        return LIST_JOB_ATTEMPTS.call(request, _attempts)

    @staticmethod
    def attempts_page(
        job_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> Call[Page[Attempt]]:
        """One page of the job's attempts, oldest first (`page_size` 0: 1,000); call again
        with `next_page_token` until it is empty."""
        request = pb.ListJobAttemptsRequest(id=job_id, page_size=page_size, page_token=page_token)
        return LIST_JOB_ATTEMPTS.call(
            request, lambda answer: Page(_attempts(answer), answer.next_page_token)
        )

    @staticmethod
    def watch(job_id: str, after_sequence: int = 0) -> Stream[JobUpdate]:
        """The job's snapshot, then every change, until it ends (no deadline). After a
        dropped stream, watch again with the last update's `sequence` as `after_sequence`:
        no change is missed or repeated."""
        request = pb.WatchJobRequest(id=job_id, after_sequence=after_sequence)
        return WATCH_JOB.stream(request, JobUpdate.from_proto)

    # -- queues and workers (admin keys) ---------------------------------------------------
    @staticmethod
    def queue_stats(queue: str = "") -> Call[builtins.list[queue_pb2.QueueStats]]:
        """One queue's stats, or every known queue's."""
        request = pb.GetQueueStatsRequest(queue=queue)
        return GET_QUEUE_STATS.call(request, lambda answer: list(answer.queues))

    @staticmethod
    def pause_queue(queue: str) -> Call[queue_pb2.QueueStats]:
        """Stop every worker starting the queue's jobs (running ones go on); its stats."""
        return PAUSE_QUEUE.call(pb.PauseQueueRequest(queue=queue), lambda answer: answer.queue)

    @staticmethod
    def resume_queue(queue: str) -> Call[queue_pb2.QueueStats]:
        """Let workers start the queue's jobs again; its stats."""
        return RESUME_QUEUE.call(pb.ResumeQueueRequest(queue=queue), lambda answer: answer.queue)

    @staticmethod
    def update_queue_limits(queue: str, **limits: Any) -> Call[queue_pb2.QueueStats]:
        """Change the queue's limits named here and keep its others (see `limits_request`:
        `max_running=5` changes only that one; 0 removes a limit)."""
        request = limits_request(queue, **limits)
        return UPDATE_QUEUE_LIMITS.call(request, lambda answer: answer.queue)

    @staticmethod
    def workers(queue: str = "") -> Call[builtins.list[queue_pb2.Worker]]:
        """The live worker processes, or those that claim from `queue`."""
        request = pb.ListWorkersRequest(queue=queue)
        return LIST_WORKERS.call(request, lambda answer: list(answer.workers))

    # -- schedules -------------------------------------------------------------------------
    @staticmethod
    def create_schedule(schedule: spb.Schedule) -> Call[spb.Schedule]:
        """Create a schedule (see `schedule_request`)."""
        request = spb.CreateScheduleRequest(schedule=schedule)
        return CREATE_SCHEDULE.call(request, lambda answer: answer.schedule)

    @staticmethod
    def get_schedule(schedule_id: str) -> Call[spb.Schedule]:
        """The schedule, with its next runs."""
        request = spb.GetScheduleRequest(id=schedule_id)
        return GET_SCHEDULE.call(request, lambda answer: answer.schedule)

    @staticmethod
    def list_schedules(**fields: Any) -> Call[spb.ListSchedulesResponse]:
        """One page; fields are ListSchedulesRequest's (page_size, page_token, owner)."""
        return LIST_SCHEDULES.call(spb.ListSchedulesRequest(**fields), lambda answer: answer)

    @staticmethod
    def delete_schedule(schedule_id: str) -> Call[None]:
        """Delete the schedule; the jobs it made stay."""
        request = spb.DeleteScheduleRequest(id=schedule_id)
        return DELETE_SCHEDULE.call(request, lambda answer: None)

    @staticmethod
    def pause_schedule(schedule_id: str) -> Call[spb.Schedule]:
        """Stop the schedule emitting jobs until resumed."""
        request = spb.PauseScheduleRequest(id=schedule_id)
        return PAUSE_SCHEDULE.call(request, lambda answer: answer.schedule)

    @staticmethod
    def resume_schedule(schedule_id: str) -> Call[spb.Schedule]:
        """Let a paused schedule emit jobs again."""
        request = spb.ResumeScheduleRequest(id=schedule_id)
        return RESUME_SCHEDULE.call(request, lambda answer: answer.schedule)

    @staticmethod
    def trigger_schedule(schedule_id: str) -> Call[Job]:
        """Make the schedule's job now, outside its timetable; that job."""
        request = spb.TriggerScheduleRequest(id=schedule_id)
        return TRIGGER_SCHEDULE.call(request, lambda answer: Job(answer.job))

    # -- API keys (admin keys) -------------------------------------------------------------
    @staticmethod
    def create_api_key(
        owner: str, *, role: Literal["user", "admin"] = "user", description: str = ""
    ) -> Call[akpb.CreateApiKeyResponse]:
        """Make a key for `owner`; the answer's `secret` is the whole key, returned this
        once (only its digest is stored). Not sent twice: a retry would make a second key."""
        request = akpb.CreateApiKeyRequest(owner=owner, role=ROLES[role], description=description)
        return CREATE_API_KEY.call(request, lambda answer: answer)

    @staticmethod
    def list_api_keys(**fields: Any) -> Call[akpb.ListApiKeysResponse]:
        """One page of keys, newest first, never their secrets; fields are
        ListApiKeysRequest's (owner, include_revoked, page_size, page_token)."""
        request = akpb.ListApiKeysRequest(**fields)
        return LIST_API_KEYS.call(request, lambda answer: answer, retry_safe=True)

    @staticmethod
    def revoke_api_key(key_id: str) -> Call[akpb.ApiKey]:
        """Revoke the key: its calls and open streams end within a second; the key."""
        request = akpb.RevokeApiKeyRequest(id=key_id)
        return REVOKE_API_KEY.call(request, lambda answer: answer.key, retry_safe=True)

    @staticmethod
    def update_api_key_limits(
        key_id: str,
        *,
        submit_limit: KeyRate | None = None,
        read_limit: KeyRate | None = None,
        max_running_jobs: int | None = None,
    ) -> Call[akpb.ApiKey]:
        """Change the key's limits given and keep its others (see `key_limits_request`:
        `max_running_jobs=5` changes only that one); the key."""
        request = key_limits_request(
            key_id,
            submit_limit=submit_limit,
            read_limit=read_limit,
            max_running_jobs=max_running_jobs,
        )
        return UPDATE_API_KEY_LIMITS.call(request, lambda answer: answer.key, retry_safe=True)


# -- the drivers: one awaits, one blocks -------------------------------------------------


def _bulk_answer(
    answer: pb.RetryJobsResponse | pb.CancelJobsResponse | pb.DeleteJobsResponse,
    action: pb.BulkAction,
    filter: str,
) -> BulkOperation:
    """The operation started, or for a dry run a stand-in without an id whose `matched`
    is the count."""
    if answer.HasField("operation"):
        return BulkOperation(answer.operation)
    return BulkOperation(pb.BulkOperation(action=action, filter=filter, matched=answer.count))


def _awaited(
    op: Callable[P, Call[T]],
) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]:
    """`AsyncClient`'s method for `op`: build the call, await it."""

    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(op(*args, **kwargs))

    return method_of("AsyncClient", op, method)


def _async_stream(
    op: Callable[P, Stream[T]],
) -> Callable[Concatenate[AsyncClient, P], AsyncIterator[T]]:
    """`AsyncClient`'s method for the stream `op`: build it, iterate it."""

    def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[T]:
        return self._stream(op(*args, **kwargs))

    return method_of("AsyncClient", op, method, AsyncIterator)


def _blocking(op: Callable[P, Call[T]]) -> Callable[Concatenate[Client, P], T]:
    """`Client`'s method for `op`: build the call, block on it."""

    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(op(*args, **kwargs))

    return method_of("Client", op, method)


def _blocking_stream(op: Callable[P, Stream[T]]) -> Callable[Concatenate[Client, P], Iterator[T]]:
    """`Client`'s method for the stream `op`: build it, iterate it."""

    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        return self._stream(op(*args, **kwargs))

    return method_of("Client", op, method, Iterator)


class AsyncClient:
    """JobService over a grpc.aio channel. Use as `async with AsyncClient(...) as client`.

    `tls`: None follows `CONVEYOR_TLS*` (plaintext unless TLS is configured), False is
    plaintext, True is TLS, a `conveyor.tls.TlsOptions` says whom to trust and which client
    certificate to present (mutual TLS). A refused handshake raises `Unavailable`.
    `channel` replaces all of that with a channel of your own.

    `submit` and `submit_many` are safe to retry: each job gets an idempotency key unless
    the caller gave one, and an UNAVAILABLE or DEADLINE_EXCEEDED answer (which may come
    after the server committed the jobs) is retried with the same keys as `submit_retry`
    says (`SubmitRetry()`; None: never). `timeout` is per try. `absorbed` counts the
    answers retried, by status code name.

    `connections`: how many TCP connections the client spreads its calls over, in turn
    (default 1). One connection is served by one API process, so raise it to reach every
    process of `conveyor api --processes N` (or a load balancer's backends) from one
    client process.

    `batch_submits` (default on): concurrent `submit` calls share calls. No timer: a submit
    made while fewer than `connections` calls of submits are in flight is sent at once, as
    its own SubmitJob (a lone caller waits no longer than with batching off); those made
    while they are all in flight queue, and go together as one SubmitJobs with per-item
    results when one ends. Each caller gets its own job, or the error its submit alone
    would have raised; its `timeout` and retries stay its own (the wait in the queue counts
    toward its timeout), and a caller cancelled while it waits leaves the others' call
    alone. With tracing on, submits are not batched: each job carries its own caller's
    trace context.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        tls: ClientTls = None,
        channel: grpc.aio.Channel | None = None,
        submit_retry: SubmitRetry | None = SubmitRetry(),
        connections: int = 1,
        batch_submits: bool = True,
    ) -> None:
        options = _connection_options(connections, channel)
        self._channels = [channel] if channel is not None else [
            open_aio_channel(
                _target(target), tls, options=options,
                interceptors=tracing.aio_client_interceptors(),
            )
            for _ in range(connections)
        ]  # fmt: skip
        self._stubs = itertools.cycle([Stubs(c) for c in self._channels])
        self._metadata = _metadata(api_key)
        self._timeout = timeout
        self._submit_retry = submit_retry
        self.absorbed: Counter[str] = Counter()
        self._coalescer = _coalescer(batch_submits, connections)
        self._sending: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channels (and so every call still open on them)."""
        for channel in self._channels:
            await channel.close(None)

    async def _run(self, call: Call[T]) -> T:
        """One logical call: the same request again after an ambiguous answer, while the
        retry policy allows (never unless `call.retry_safe`); a failure raised as its
        `conveyor.errors` error. Each call takes the next connection in turn."""
        coalescer = self._coalescer if call.merge is not None else None
        send = next(self._stubs).sender(call.rpc)
        tries = Attempts(
            self._submit_retry if call.retry_safe else None, self._timeout, self.absorbed
        )
        while True:
            timeout = tries.next_timeout()
            try:
                if coalescer is not None:
                    answer = await self._coalesced(coalescer, send, call, timeout)
                else:
                    answer = await send(call.request, metadata=self._metadata, timeout=timeout)
                return call.extract(answer)
            except grpc.RpcError as error:
                wait = tries.after(error, call.rpc.name)
                if wait is None:
                    raise from_rpc_error(error) from None
            await asyncio.sleep(wait)

    async def _coalesced(
        self, coalescer: Coalescer, send: Any, call: Call[T], seconds: float
    ) -> Any:
        """One try of `call` (timing out after `seconds`) through the coalescer: sent at once
        by `send` in this task if a slot is free, else queued for the next batch; its
        answer, or its error raised."""
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not coalescer.enter(Waiting(call, time.monotonic() + seconds, waiter)):
            return await waiter  # cancelling this cancels the waiter alone
        try:
            return await send(call.request, metadata=self._metadata, timeout=seconds)
        finally:
            self._start(coalescer.leave())

    def _start(self, batch: CallBatch | None) -> None:
        """Send `batch` in a task of its own (kept, so that it is not collected)."""
        if batch is not None:
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: CallBatch) -> None:
        """Send `batch`, settle its callers, then free its slot one turn of the loop later:
        after the callers just answered have run, so that those that submit again at once
        join the next batch rather than one of them going alone and the rest waiting for it
        (no timer: the turn waits for nothing but work already due)."""
        try:
            send = next(self._stubs).sender(batch.rpc)
            answer = await send(batch.request(), metadata=self._metadata, timeout=batch.timeout())
            batch.settle(answer)
        except BaseException as error:  # handed to every caller of the batch
            batch.fail(error)
        finally:
            asyncio.get_running_loop().call_soon(self._release)

    def _release(self) -> None:
        if self._coalescer is not None:
            self._start(self._coalescer.leave())

    async def _stream(self, stream: Stream[T]) -> AsyncIterator[T]:
        """`stream`'s answers as they come (no deadline); a failure raised as its
        `conveyor.errors` error, the call cancelled when the caller stops early."""
        call = next(self._stubs).sender(stream.rpc)(stream.request, metadata=self._metadata)
        try:
            async for answer in call:
                yield stream.extract(answer)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()

    submit = _awaited(_Calls.submit)
    submit_many = _awaited(_Calls.submit_many)
    submit_batch = _awaited(_Calls.submit_batch)
    get_batch = _awaited(_Calls.get_batch)
    get = _awaited(_Calls.get)
    list = _awaited(_Calls.list)
    cancel = _awaited(_Calls.cancel)
    retry = _awaited(_Calls.retry)
    retry_jobs = _awaited(_Calls.retry_jobs)
    cancel_jobs = _awaited(_Calls.cancel_jobs)
    delete_jobs = _awaited(_Calls.delete_jobs)
    get_bulk_operation = _awaited(_Calls.get_bulk_operation)
    cancel_bulk_operation = _awaited(_Calls.cancel_bulk_operation)
    result = _awaited(_Calls.result)
    attempts = _awaited(_Calls.attempts)
    attempts_page = _awaited(_Calls.attempts_page)
    watch = _async_stream(_Calls.watch)
    queue_stats = _awaited(_Calls.queue_stats)
    pause_queue = _awaited(_Calls.pause_queue)
    resume_queue = _awaited(_Calls.resume_queue)
    update_queue_limits = _awaited(_Calls.update_queue_limits)
    workers = _awaited(_Calls.workers)
    create_schedule = _awaited(_Calls.create_schedule)
    get_schedule = _awaited(_Calls.get_schedule)
    list_schedules = _awaited(_Calls.list_schedules)
    delete_schedule = _awaited(_Calls.delete_schedule)
    pause_schedule = _awaited(_Calls.pause_schedule)
    resume_schedule = _awaited(_Calls.resume_schedule)
    trigger_schedule = _awaited(_Calls.trigger_schedule)
    create_api_key = _awaited(_Calls.create_api_key)
    list_api_keys = _awaited(_Calls.list_api_keys)
    revoke_api_key = _awaited(_Calls.revoke_api_key)
    update_api_key_limits = _awaited(_Calls.update_api_key_limits)


class Client:
    """JobService over a blocking channel, for scripts and the CLI (`tls`, `channel`,
    `submit_retry`, `absorbed`, `connections` and `batch_submits` as for `AsyncClient`;
    `submit` from many threads batches as concurrent tasks do there)."""

    def __init__(
        self,
        target: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        tls: ClientTls = None,
        channel: grpc.Channel | None = None,
        submit_retry: SubmitRetry | None = SubmitRetry(),
        connections: int = 1,
        batch_submits: bool = True,
    ) -> None:
        options = _connection_options(connections, channel)
        self._channels = [channel] if channel is not None else [
            open_channel(_target(target), tls, options=options) for _ in range(connections)
        ]  # fmt: skip
        # Unary calls are spans of the traced channel (the same channel when not tracing);
        # streams make theirs in `_stream` (see tracing.client_stream_span).
        self._stubs = itertools.cycle([Stubs(tracing.traced_channel(c)) for c in self._channels])
        self._streams = itertools.cycle([Stubs(c) for c in self._channels])
        self._metadata = _metadata(api_key)
        self._timeout = timeout
        self._submit_retry = submit_retry
        self.absorbed: Counter[str] = Counter()
        self._coalescer = _coalescer(batch_submits, connections)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channels (and so every call still open on them)."""
        for channel in self._channels:
            channel.close()

    def _run(self, call: Call[T]) -> T:
        """`AsyncClient._run`, blocking."""
        coalescer = self._coalescer if call.merge is not None else None
        send = next(self._stubs).sender(call.rpc)
        tries = Attempts(
            self._submit_retry if call.retry_safe else None, self._timeout, self.absorbed
        )
        while True:
            timeout = tries.next_timeout()
            try:
                if coalescer is not None:
                    answer = self._coalesced(coalescer, send, call, timeout)
                else:
                    answer = send(call.request, metadata=self._metadata, timeout=timeout)
                return call.extract(answer)
            except grpc.RpcError as error:
                wait = tries.after(error, call.rpc.name)
                if wait is None:
                    raise from_rpc_error(error) from None
            time.sleep(wait)

    def _coalesced(self, coalescer: Coalescer, send: Any, call: Call[T], timeout: float) -> Any:
        """`AsyncClient._coalesced`, blocking: a queued try waits for a batch that gRPC's
        callbacks send, not this thread."""
        waiter: futures.Future[Any] = futures.Future()
        if not coalescer.enter(Waiting(call, time.monotonic() + timeout, waiter)):
            return waiter.result()
        try:
            return send(call.request, metadata=self._metadata, timeout=timeout)
        finally:
            self._start(coalescer.leave())

    def _start(self, batch: CallBatch | None) -> None:
        """Start `batch` without blocking; `_sent` settles it when gRPC answers."""
        if batch is None:
            return
        try:
            send = next(self._stubs).sender(batch.rpc)
            flying = send.future(batch.request(), metadata=self._metadata, timeout=batch.timeout())
        except BaseException as error:  # handed to every caller of the batch
            batch.fail(error)
            if self._coalescer is not None:
                self._start(self._coalescer.leave())
            return
        flying.add_done_callback(lambda done: self._sent(batch, done))

    def _sent(self, batch: CallBatch, done: Any) -> None:
        try:
            batch.settle(done.result())
        except BaseException as error:  # the RpcError: every caller's
            batch.fail(error)
        finally:
            if self._coalescer is not None:
                self._start(self._coalescer.leave())

    def _stream(self, stream: Stream[T]) -> Iterator[T]:
        """`AsyncClient._stream`, blocking, in a client span of its own."""
        try:  # outside the span, so that the span sees the failure and marks itself
            with tracing.client_stream_span(stream.rpc.path) as traced:
                call = next(self._streams).sender(stream.rpc)(
                    stream.request, metadata=[*self._metadata, *traced]
                )
                try:
                    for answer in call:
                        yield stream.extract(answer)
                finally:
                    call.cancel()
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    submit = _blocking(_Calls.submit)
    submit_many = _blocking(_Calls.submit_many)
    submit_batch = _blocking(_Calls.submit_batch)
    get_batch = _blocking(_Calls.get_batch)
    get = _blocking(_Calls.get)
    list = _blocking(_Calls.list)
    cancel = _blocking(_Calls.cancel)
    retry = _blocking(_Calls.retry)
    retry_jobs = _blocking(_Calls.retry_jobs)
    cancel_jobs = _blocking(_Calls.cancel_jobs)
    delete_jobs = _blocking(_Calls.delete_jobs)
    get_bulk_operation = _blocking(_Calls.get_bulk_operation)
    cancel_bulk_operation = _blocking(_Calls.cancel_bulk_operation)
    result = _blocking(_Calls.result)
    attempts = _blocking(_Calls.attempts)
    attempts_page = _blocking(_Calls.attempts_page)
    watch = _blocking_stream(_Calls.watch)
    queue_stats = _blocking(_Calls.queue_stats)
    pause_queue = _blocking(_Calls.pause_queue)
    resume_queue = _blocking(_Calls.resume_queue)
    update_queue_limits = _blocking(_Calls.update_queue_limits)
    workers = _blocking(_Calls.workers)
    create_schedule = _blocking(_Calls.create_schedule)
    get_schedule = _blocking(_Calls.get_schedule)
    list_schedules = _blocking(_Calls.list_schedules)
    delete_schedule = _blocking(_Calls.delete_schedule)
    pause_schedule = _blocking(_Calls.pause_schedule)
    resume_schedule = _blocking(_Calls.resume_schedule)
    trigger_schedule = _blocking(_Calls.trigger_schedule)
    create_api_key = _blocking(_Calls.create_api_key)
    list_api_keys = _blocking(_Calls.list_api_keys)
    revoke_api_key = _blocking(_Calls.revoke_api_key)
    update_api_key_limits = _blocking(_Calls.update_api_key_limits)
