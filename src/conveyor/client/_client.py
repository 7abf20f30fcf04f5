from __future__ import annotations

import asyncio
import builtins
import functools
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import grpc

from conveyor.client._retries import Attempts, SubmitRetry, new_idempotency_key
from conveyor.config import Settings
from conveyor.errors import from_rpc_error
from conveyor.telemetry import tracing
from conveyor.tls import ClientTls, open_aio_channel, open_channel
from conveyor.v1 import job_pb2, queue_pb2
from conveyor.v1 import job_service_pb2 as pb
from conveyor.v1 import schedule_service_pb2 as spb
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
) -> pb.SubmitJobRequest:
    """Build a SubmitJobRequest (also the items of `submit_many`). An empty
    `idempotency_key` is left for `submit`/`submit_many` to fill in when they send it."""
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
    return request


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
) -> pb.UpdateQueueLimitsRequest:
    """An UpdateQueueLimitsRequest that changes only the limits given (`rate_interval` in
    seconds) and keeps the queue's others; 0 removes a limit. `rate_jobs` alone keeps the
    queue's rate window (and is refused if it has none); give both to set a new rate limit.
    Its update_mask names exactly the limits given (none given: the server refuses it)."""
    request = pb.UpdateQueueLimitsRequest(queue=queue)
    request.update_mask.SetInParent()
    given = {
        "max_running": max_running,
        "rate_jobs": rate_jobs,
        "rate_interval": rate_interval,
        "max_running_per_owner": max_running_per_owner,
    }
    for name, value in given.items():
        if value is None:
            continue
        request.update_mask.paths.append(name)
        if name == "rate_interval":
            request.limits.rate_interval.FromTimedelta(timedelta(seconds=value))
        else:
            setattr(request.limits, name, value)
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
    **job: Any,
) -> spb.Schedule:
    """A Schedule for `create_schedule`: `cron` (in `time_zone`) or `every` seconds; the
    job as `submit` takes it (queue, priority, max_attempts, timeout, retry); `catch_up`
    one of skip, once, all."""
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
    schedule.job.CopyFrom(submit_request(type, payload, **job))
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
) -> pb.SubmitJobsRequest:
    """`submit_many`'s request: copies of `requests` (the caller's are left as they are),
    each without a key given one of its own when `idempotency_keys`."""
    request = pb.SubmitJobsRequest(requests=requests, view=view)
    if idempotency_keys:
        for item in request.requests:
            if not item.idempotency_key:
                item.idempotency_key = new_idempotency_key()
    return request


def _retry_safe(request: pb.SubmitJobsRequest) -> bool:
    """A bulk may be sent again only if every job in it carries a key."""
    return all(item.idempotency_key for item in request.requests)


def _metadata(api_key: str | None) -> Metadata:
    key = api_key if api_key is not None else Settings.from_env().api_key
    return (("authorization", f"Bearer {key}"),) if key else ()


def _target(target: str | None) -> str:
    return target or Settings.from_env().api_addr


def _mapped_async(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    @functools.wraps(fn)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    return call


def _mapped(fn: Callable[P, T]) -> Callable[P, T]:
    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    return call


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
    ) -> None:
        self._channel = channel or open_aio_channel(
            _target(target), tls, interceptors=tracing.aio_client_interceptors()
        )
        self._stub = JobServiceStub(self._channel)
        self._schedules = ScheduleServiceStub(self._channel)
        self._metadata = _metadata(api_key)
        self._timeout = timeout
        self._submit_retry = submit_retry
        self.absorbed: Counter[str] = Counter()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)

    async def _send(self, method: str, request: Any, *, retry_safe: bool) -> Any:
        """One logical call: the same request again after an ambiguous answer, while the
        retry policy allows (never unless `retry_safe`)."""
        call = getattr(self._stub, method)
        tries = Attempts(self._submit_retry if retry_safe else None, self._timeout, self.absorbed)
        while True:
            try:
                return await call(request, metadata=self._metadata, timeout=tries.next_timeout())
            except grpc.RpcError as error:
                wait = tries.after(error, method)
                if wait is None:
                    raise
            await asyncio.sleep(wait)

    @_mapped_async
    async def submit(
        self, type: str, payload: Mapping[str, Any] | None = None, **options: Any
    ) -> job_pb2.Job:
        """Submit one job (`options` as `submit_request` takes them).

        `idempotency_key`: yours wins; unset (or "") the SDK makes one for this call
        (`sdk-…`, on `job.idempotency_key`) and sends it on every retry, so a retried submit
        makes one job; None sends no key, and then an ambiguous answer is raised, not
        retried."""
        request = submit_request(type, payload, **_keyed(options))
        response = await self._send("SubmitJob", request, retry_safe=bool(request.idempotency_key))
        return response.job  # type: ignore[no-any-return]

    @_mapped_async
    async def submit_many(
        self,
        requests: Sequence[pb.SubmitJobRequest],
        *,
        view: pb.JobView = pb.JOB_VIEW_BASIC,
        idempotency_keys: bool = True,
    ) -> list[job_pb2.Job]:
        """Submit up to 1,000 jobs at once, all or none; the jobs in request order.

        Each job without an idempotency key gets one of its own (`requests` themselves are
        not changed), fixed before the first try: a bulk retried after an ambiguous answer
        returns the jobs the first try made. `idempotency_keys=False` sends none (and does
        not retry, unless every request carries your key).

        By default (`JOB_VIEW_BASIC`) each job has every field but `payload` (the payloads
        were sent with the requests), so the answer stays about 200 bytes a job however
        large the payloads: 1,000 payloads of 5 KB would otherwise come back as 5 MB, past
        what a stock gRPC client accepts. `view=JOB_VIEW_FULL` echoes the payloads too."""
        request = bulk_request(requests, view, idempotency_keys)
        response = await self._send("SubmitJobs", request, retry_safe=_retry_safe(request))
        return list(response.jobs)

    @_mapped_async
    async def get(self, job_id: str) -> job_pb2.Job:
        response = await self._stub.GetJob(
            pb.GetJobRequest(id=job_id), metadata=self._metadata, timeout=self._timeout
        )
        return response.job  # type: ignore[no-any-return]

    @_mapped_async
    async def list(self, **filters: Any) -> pb.ListJobsResponse:
        """One page; filters are ListJobsRequest fields (state, queue, type, page_size, …)."""
        response = await self._stub.ListJobs(
            pb.ListJobsRequest(**filters), metadata=self._metadata, timeout=self._timeout
        )
        return response  # type: ignore[no-any-return]

    @_mapped_async
    async def cancel(self, job_id: str) -> job_pb2.Job:
        response = await self._stub.CancelJob(
            pb.CancelJobRequest(id=job_id), metadata=self._metadata, timeout=self._timeout
        )
        return response.job  # type: ignore[no-any-return]

    @_mapped_async
    async def retry(self, job_id: str, max_attempts: int = 0) -> job_pb2.Job:
        """Replay a DEAD or CANCELLED job with `max_attempts` more attempts (0: default)."""
        response = await self._stub.RetryJob(
            pb.RetryJobRequest(id=job_id, max_attempts=max_attempts),
            metadata=self._metadata,
            timeout=self._timeout,
        )
        return response.job  # type: ignore[no-any-return]

    @_mapped_async
    async def result(self, job_id: str) -> pb.GetJobResultResponse:
        """A SUCCEEDED job and its result (`.result`, a Struct; unset if none)."""
        response = await self._stub.GetJobResult(
            pb.GetJobResultRequest(id=job_id), metadata=self._metadata, timeout=self._timeout
        )
        return response  # type: ignore[no-any-return]

    @_mapped_async
    async def attempts(self, job_id: str) -> builtins.list[job_pb2.JobAttempt]:
        response = await self._stub.ListJobAttempts(
            pb.ListJobAttemptsRequest(id=job_id), metadata=self._metadata, timeout=self._timeout
        )
        return list(response.attempts)

    # -- queues and workers (admin keys) ------------------------------------------------
    @_mapped_async
    async def queue_stats(self, queue: str = "") -> builtins.list[queue_pb2.QueueStats]:
        """One queue's stats, or every known queue's."""
        response = await self._stub.GetQueueStats(
            pb.GetQueueStatsRequest(queue=queue), metadata=self._metadata, timeout=self._timeout
        )
        return list(response.queues)

    @_mapped_async
    async def pause_queue(self, queue: str) -> queue_pb2.QueueStats:
        response = await self._stub.PauseQueue(
            pb.PauseQueueRequest(queue=queue), metadata=self._metadata, timeout=self._timeout
        )
        return response.queue  # type: ignore[no-any-return]

    @_mapped_async
    async def resume_queue(self, queue: str) -> queue_pb2.QueueStats:
        response = await self._stub.ResumeQueue(
            pb.ResumeQueueRequest(queue=queue), metadata=self._metadata, timeout=self._timeout
        )
        return response.queue  # type: ignore[no-any-return]

    @_mapped_async
    async def update_queue_limits(self, queue: str, **limits: Any) -> queue_pb2.QueueStats:
        """Set the queue's limits (see `limits_request`)."""
        response = await self._stub.UpdateQueueLimits(
            limits_request(queue, **limits), metadata=self._metadata, timeout=self._timeout
        )
        return response.queue  # type: ignore[no-any-return]

    @_mapped_async
    async def workers(self, queue: str = "") -> builtins.list[queue_pb2.Worker]:
        response = await self._stub.ListWorkers(
            pb.ListWorkersRequest(queue=queue), metadata=self._metadata, timeout=self._timeout
        )
        return list(response.workers)

    # -- schedules ----------------------------------------------------------------------
    async def _schedule_call(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self._schedules, method)(
                request, metadata=self._metadata, timeout=self._timeout
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def create_schedule(self, schedule: spb.Schedule) -> spb.Schedule:
        """Create a schedule (see `schedule_request`)."""
        request = spb.CreateScheduleRequest(schedule=schedule)
        return (await self._schedule_call("CreateSchedule", request)).schedule  # type: ignore[no-any-return]

    async def get_schedule(self, schedule_id: str) -> spb.Schedule:
        request = spb.GetScheduleRequest(id=schedule_id)
        return (await self._schedule_call("GetSchedule", request)).schedule  # type: ignore[no-any-return]

    async def list_schedules(self, **fields: Any) -> spb.ListSchedulesResponse:
        """One page; fields are ListSchedulesRequest's (page_size, page_token, owner)."""
        request = spb.ListSchedulesRequest(**fields)
        return await self._schedule_call("ListSchedules", request)  # type: ignore[no-any-return]

    async def delete_schedule(self, schedule_id: str) -> None:
        await self._schedule_call("DeleteSchedule", spb.DeleteScheduleRequest(id=schedule_id))

    async def pause_schedule(self, schedule_id: str) -> spb.Schedule:
        request = spb.PauseScheduleRequest(id=schedule_id)
        return (await self._schedule_call("PauseSchedule", request)).schedule  # type: ignore[no-any-return]

    async def resume_schedule(self, schedule_id: str) -> spb.Schedule:
        request = spb.ResumeScheduleRequest(id=schedule_id)
        return (await self._schedule_call("ResumeSchedule", request)).schedule  # type: ignore[no-any-return]

    async def trigger_schedule(self, schedule_id: str) -> job_pb2.Job:
        request = spb.TriggerScheduleRequest(id=schedule_id)
        return (await self._schedule_call("TriggerSchedule", request)).job  # type: ignore[no-any-return]

    async def watch(
        self, job_id: str, after_sequence: int = 0
    ) -> AsyncIterator[pb.WatchJobResponse]:
        """The job's snapshot, then every change, until it ends (no deadline)."""
        call = self._stub.WatchJob(
            pb.WatchJobRequest(id=job_id, after_sequence=after_sequence), metadata=self._metadata
        )
        try:
            async for update in call:
                yield update
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()


class Client:
    """JobService over a blocking channel, for scripts and the CLI (`tls`, `channel`,
    `submit_retry` and `absorbed` as for `AsyncClient`)."""

    def __init__(
        self,
        target: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        tls: ClientTls = None,
        channel: grpc.Channel | None = None,
        submit_retry: SubmitRetry | None = SubmitRetry(),
    ) -> None:
        self._channel = channel or open_channel(_target(target), tls)
        traced = tracing.traced_channel(self._channel)  # the same channel when not tracing
        self._stub = JobServiceStub(traced)
        self._streams = JobServiceStub(self._channel)  # see tracing.client_stream_span
        self._schedules = ScheduleServiceStub(traced)
        self._metadata = _metadata(api_key)
        self._timeout = timeout
        self._submit_retry = submit_retry
        self.absorbed: Counter[str] = Counter()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request: Any) -> Any:
        return getattr(self._stub, method)(request, metadata=self._metadata, timeout=self._timeout)

    def _send(self, method: str, request: Any, *, retry_safe: bool) -> Any:
        """`AsyncClient._send`, blocking."""
        call = getattr(self._stub, method)
        tries = Attempts(self._submit_retry if retry_safe else None, self._timeout, self.absorbed)
        while True:
            try:
                return call(request, metadata=self._metadata, timeout=tries.next_timeout())
            except grpc.RpcError as error:
                wait = tries.after(error, method)
                if wait is None:
                    raise
            time.sleep(wait)

    @_mapped
    def submit(
        self, type: str, payload: Mapping[str, Any] | None = None, **options: Any
    ) -> job_pb2.Job:
        """`AsyncClient.submit`: a key of its own unless given (None: none), retried."""
        request = submit_request(type, payload, **_keyed(options))
        return self._send("SubmitJob", request, retry_safe=bool(request.idempotency_key)).job  # type: ignore[no-any-return]

    @_mapped
    def submit_many(
        self,
        requests: Sequence[pb.SubmitJobRequest],
        *,
        view: pb.JobView = pb.JOB_VIEW_BASIC,
        idempotency_keys: bool = True,
    ) -> builtins.list[job_pb2.Job]:
        """`AsyncClient.submit_many`: a key per job unless given, retried; jobs without
        their payloads unless `view` is `JOB_VIEW_FULL`."""
        request = bulk_request(requests, view, idempotency_keys)
        return list(self._send("SubmitJobs", request, retry_safe=_retry_safe(request)).jobs)

    @_mapped
    def get(self, job_id: str) -> job_pb2.Job:
        return self._call("GetJob", pb.GetJobRequest(id=job_id)).job  # type: ignore[no-any-return]

    @_mapped
    def list(self, **filters: Any) -> pb.ListJobsResponse:
        return self._call("ListJobs", pb.ListJobsRequest(**filters))  # type: ignore[no-any-return]

    @_mapped
    def cancel(self, job_id: str) -> job_pb2.Job:
        return self._call("CancelJob", pb.CancelJobRequest(id=job_id)).job  # type: ignore[no-any-return]

    @_mapped
    def retry(self, job_id: str, max_attempts: int = 0) -> job_pb2.Job:
        request = pb.RetryJobRequest(id=job_id, max_attempts=max_attempts)
        return self._call("RetryJob", request).job  # type: ignore[no-any-return]

    @_mapped
    def result(self, job_id: str) -> pb.GetJobResultResponse:
        return self._call("GetJobResult", pb.GetJobResultRequest(id=job_id))  # type: ignore[no-any-return]

    @_mapped
    def attempts(self, job_id: str) -> builtins.list[job_pb2.JobAttempt]:
        return list(self._call("ListJobAttempts", pb.ListJobAttemptsRequest(id=job_id)).attempts)

    # -- queues and workers (admin keys) ------------------------------------------------
    @_mapped
    def queue_stats(self, queue: str = "") -> builtins.list[queue_pb2.QueueStats]:
        return list(self._call("GetQueueStats", pb.GetQueueStatsRequest(queue=queue)).queues)

    @_mapped
    def pause_queue(self, queue: str) -> queue_pb2.QueueStats:
        return self._call("PauseQueue", pb.PauseQueueRequest(queue=queue)).queue  # type: ignore[no-any-return]

    @_mapped
    def resume_queue(self, queue: str) -> queue_pb2.QueueStats:
        return self._call("ResumeQueue", pb.ResumeQueueRequest(queue=queue)).queue  # type: ignore[no-any-return]

    @_mapped
    def update_queue_limits(self, queue: str, **limits: Any) -> queue_pb2.QueueStats:
        return self._call("UpdateQueueLimits", limits_request(queue, **limits)).queue  # type: ignore[no-any-return]

    @_mapped
    def workers(self, queue: str = "") -> builtins.list[queue_pb2.Worker]:
        return list(self._call("ListWorkers", pb.ListWorkersRequest(queue=queue)).workers)

    # -- schedules ----------------------------------------------------------------------
    def _schedule_call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._schedules, method)(
                request, metadata=self._metadata, timeout=self._timeout
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def create_schedule(self, schedule: spb.Schedule) -> spb.Schedule:
        request = spb.CreateScheduleRequest(schedule=schedule)
        return self._schedule_call("CreateSchedule", request).schedule  # type: ignore[no-any-return]

    def get_schedule(self, schedule_id: str) -> spb.Schedule:
        request = spb.GetScheduleRequest(id=schedule_id)
        return self._schedule_call("GetSchedule", request).schedule  # type: ignore[no-any-return]

    def list_schedules(self, **fields: Any) -> spb.ListSchedulesResponse:
        request = spb.ListSchedulesRequest(**fields)
        return self._schedule_call("ListSchedules", request)  # type: ignore[no-any-return]

    def delete_schedule(self, schedule_id: str) -> None:
        self._schedule_call("DeleteSchedule", spb.DeleteScheduleRequest(id=schedule_id))

    def pause_schedule(self, schedule_id: str) -> spb.Schedule:
        request = spb.PauseScheduleRequest(id=schedule_id)
        return self._schedule_call("PauseSchedule", request).schedule  # type: ignore[no-any-return]

    def resume_schedule(self, schedule_id: str) -> spb.Schedule:
        request = spb.ResumeScheduleRequest(id=schedule_id)
        return self._schedule_call("ResumeSchedule", request).schedule  # type: ignore[no-any-return]

    def trigger_schedule(self, schedule_id: str) -> job_pb2.Job:
        request = spb.TriggerScheduleRequest(id=schedule_id)
        return self._schedule_call("TriggerSchedule", request).job  # type: ignore[no-any-return]

    def watch(self, job_id: str, after_sequence: int = 0) -> Iterator[pb.WatchJobResponse]:
        request = pb.WatchJobRequest(id=job_id, after_sequence=after_sequence)
        with tracing.client_stream_span("/conveyor.v1.JobService/WatchJob") as traced:
            call = self._streams.WatchJob(request, metadata=[*self._metadata, *traced])
            try:
                yield from call
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None
            finally:
                call.cancel()
