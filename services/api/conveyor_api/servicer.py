"""JobService: decode the request, call JobOperations, encode the answer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from google.protobuf.message import Message

from conveyor.api.bulk import BulkOperations
from conveyor.api.jobs import JobOperations, ListFilter, create_time_range
from conveyor.api.queues import QueueAdmin
from conveyor.api.results import Results
from conveyor.api.update_mask import named_fields
from conveyor.config import Settings
from conveyor.errors import ConveyorError, FieldViolation, InvalidArgument, status_of
from conveyor.jobs.bulk import BulkAction, BulkRequest
from conveyor.jobs.model import MAX_BULK, Job, JobSpec, JobState, spec_from_proto
from conveyor.jobs.queues import LIMIT_FIELDS, LimitChange
from conveyor.server.auth import Authenticator, Principal
from conveyor.server.grpcserver import streaming, unary
from conveyor.telemetry.metrics import ApiMetrics
from conveyor.v1 import job_pb2, job_service_pb2_grpc
from conveyor.v1 import job_service_pb2 as pb


def _answer(job: Job, request: pb.SubmitJobRequest) -> job_pb2.Job:
    """A submitted job as the answer carries it, its payload copied from the request rather
    than rebuilt from the job's dict (the same payload: the job was made from it, or is the
    earlier job of the same key, whose request fingerprint matched). Not for a unique or
    debounced submit: the key's job may hold another request's payload (conveyor.jobs.unique)."""
    if request.HasField("unique_for") or request.HasField("debounce"):
        return job.to_proto()
    answer = job.to_proto(payload=False)
    if job.payload:
        answer.payload.CopyFrom(request.payload)
    return answer


def _answer_in_view(
    job: Job, request: pb.SubmitJobRequest, bulk_view: int = pb.JOB_VIEW_UNSPECIFIED
) -> job_pb2.Job:
    """A submitted job as its request's view says (set), else as its bulk's says."""
    if (request.view or bulk_view) == pb.JOB_VIEW_BASIC:
        return job.to_proto(payload=False)
    return _answer(job, request)


def _with_payload(view: int, field: str = "view") -> bool:
    """Whether a response carries payloads (AIP-157: unset is JOB_VIEW_FULL); an unknown
    view is INVALID_ARGUMENT, refused before any work."""
    if view not in pb.JobView.values():
        raise InvalidArgument([FieldViolation(field, "must be a JobView")])
    return view != pb.JOB_VIEW_BASIC


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    def __init__(
        self,
        ops: JobOperations,
        queues: QueueAdmin,
        auth: Authenticator,
        settings: Settings,
        results: Results,
        bulk: BulkOperations,
        *,
        metrics: ApiMetrics | None = None,
    ) -> None:
        self.ops = ops
        self.bulk = bulk
        self.metrics = metrics or ApiMetrics()
        self.results = results
        self.queues = queues
        self.auth = auth
        self.max_payload = settings.max_payload_bytes
        self.max_page_bytes = settings.max_page_bytes

    @unary
    async def SubmitJob(
        self, request: pb.SubmitJobRequest, principal: Principal
    ) -> pb.SubmitJobResponse:
        _with_payload(request.view)  # refused before any work
        spec = spec_from_proto(request, max_payload_bytes=self.max_payload)
        job = await self.ops.submit(principal, spec)
        return pb.SubmitJobResponse(job=_answer_in_view(job, request))

    @unary
    async def SubmitJobs(
        self, request: pb.SubmitJobsRequest, principal: Principal
    ) -> pb.SubmitJobsResponse:
        count = len(request.requests)
        if not 1 <= count <= MAX_BULK:
            raise InvalidArgument(
                [FieldViolation("requests", f"must hold 1 to {MAX_BULK} requests, not {count}")]
            )
        violations: list[FieldViolation] = []
        if request.view not in pb.JobView.values():
            violations.append(FieldViolation("view", "must be a JobView"))
        has_callback = request.HasField("on_complete")
        if request.partial_success:  # the call's own fields only: each request stands alone
            if has_callback:
                violations.append(FieldViolation("on_complete", "not with partial_success"))
            if violations:
                raise InvalidArgument(violations)
            return await self._submit_each(request, principal)
        on_complete = None
        if has_callback:
            try:
                on_complete = spec_from_proto(
                    request.on_complete, max_payload_bytes=self.max_payload, prefix="on_complete."
                )
            except InvalidArgument as bad:
                violations += bad.violations
        specs: list[JobSpec] = []
        for i, item in enumerate(request.requests):
            if item.view not in pb.JobView.values():
                violations.append(FieldViolation(f"requests[{i}].view", "must be a JobView"))
            try:
                specs.append(
                    spec_from_proto(
                        item, max_payload_bytes=self.max_payload, prefix=f"requests[{i}]."
                    )
                )
            except InvalidArgument as bad:
                violations += bad.violations
        if violations:
            raise InvalidArgument(violations)
        jobs, batch_id = await self.ops.submit_batch(principal, specs, on_complete)
        answers = [
            _answer_in_view(job, item, request.view)
            for job, item in zip(jobs, request.requests, strict=True)
        ]
        response = pb.SubmitJobsResponse(jobs=answers)
        if batch_id:
            response.batch.CopyFrom((await self.ops.batch(principal, batch_id)).to_proto())
        return response

    async def _submit_each(
        self, request: pb.SubmitJobsRequest, principal: Principal
    ) -> pb.SubmitJobsResponse:
        """SubmitJobs with `partial_success`: one result per request, each the job or the
        status a SubmitJob of that request alone would answer."""
        specs: list[JobSpec | ConveyorError] = []
        for item in request.requests:
            try:
                _with_payload(item.view)
                specs.append(spec_from_proto(item, max_payload_bytes=self.max_payload))
            except InvalidArgument as bad:
                specs.append(bad)
        outcomes = await self.ops.submit_each(principal, specs)
        results = [
            pb.SubmitJobsResult(error=status_of(outcome))
            if isinstance(outcome, ConveyorError)
            else pb.SubmitJobsResult(job=_answer_in_view(outcome, item, request.view))
            for outcome, item in zip(outcomes, request.requests, strict=True)
        ]
        return pb.SubmitJobsResponse(results=results)

    @unary
    async def GetJob(self, request: pb.GetJobRequest, principal: Principal) -> pb.GetJobResponse:
        with_payload = _with_payload(request.view)
        job = await self.ops.get(principal, request.id)
        return pb.GetJobResponse(job=job.to_proto(payload=with_payload))

    @unary
    async def ListJobs(
        self, request: pb.ListJobsRequest, principal: Principal
    ) -> pb.ListJobsResponse:
        with_payload = _with_payload(request.view)
        try:
            state = JobState(request.state) if request.state else None
        except ValueError:
            raise InvalidArgument([FieldViolation("state", "is not a JobState")]) from None
        start, end = create_time_range(
            request.create_time_start if request.HasField("create_time_start") else None,
            request.create_time_end if request.HasField("create_time_end") else None,
        )
        filt = ListFilter(
            state=state,
            queue=request.queue or None,
            type=request.type or None,
            owner=request.owner or None,
            create_time_start=start,
            create_time_end=end,
            filter=request.filter,
        )
        jobs, token = await self.ops.list_jobs(
            principal, filt, request.page_size, request.page_token
        )
        protos = [job.to_proto(payload=with_payload) for job in jobs]
        fit = _fitting(protos, self.max_page_bytes)
        if fit < len(protos):  # cut short by size: the next page starts after the last kept
            token = await self.ops.page_token_after(principal, filt, jobs[fit - 1])
        return pb.ListJobsResponse(jobs=protos[:fit], next_page_token=token)

    @streaming
    async def WatchJob(
        self, request: pb.WatchJobRequest, principal: Principal
    ) -> AsyncIterator[pb.WatchJobResponse]:
        """Each answer is shared by every stream of the job in this process
        (`conveyor.api.feeds`): sent as it is, never changed."""
        with self.metrics.watch_streams.track_inprogress():
            async for answer in self.ops.watch(principal, request.id, request.after_sequence):
                yield answer

    @unary
    async def CancelJob(
        self, request: pb.CancelJobRequest, principal: Principal
    ) -> pb.CancelJobResponse:
        job = await self.ops.cancel(principal, request.id)
        return pb.CancelJobResponse(job=job.to_proto())

    @unary
    async def RetryJob(
        self, request: pb.RetryJobRequest, principal: Principal
    ) -> pb.RetryJobResponse:
        job, revived = await self.ops.retry(
            principal,
            request.id,
            request.max_attempts,
            include_dependents=request.include_dependents,
        )
        return pb.RetryJobResponse(job=job.to_proto(), revived_dependents=[j.id for j in revived])

    @unary
    async def GetBatch(
        self, request: pb.GetBatchRequest, principal: Principal
    ) -> pb.GetBatchResponse:
        batch = await self.ops.batch(principal, request.id)
        return pb.GetBatchResponse(batch=batch.to_proto())

    @unary
    async def ListJobAttempts(
        self, request: pb.ListJobAttemptsRequest, principal: Principal
    ) -> pb.ListJobAttemptsResponse:
        attempts, token = await self.ops.attempts(
            principal, request.id, request.page_size, request.page_token
        )
        protos = [a.to_proto() for a in attempts]
        fit = _fitting(protos, self.max_page_bytes)
        if fit < len(protos):  # cut short by size, as ListJobs (tracebacks run to 8000 chars)
            token = await self.ops.attempts_token_after(principal, request.id, attempts[fit - 1])
        return pb.ListJobAttemptsResponse(attempts=protos[:fit], next_page_token=token)

    @unary
    async def GetJobResult(
        self, request: pb.GetJobResultRequest, principal: Principal
    ) -> pb.GetJobResultResponse:
        found = await self.results.get(principal, request.id)
        response = pb.GetJobResultResponse(
            job=found.job.to_proto(), artifacts=[link.to_proto() for link in found.artifacts]
        )
        if found.document is not None:
            response.result.update(found.document)
        return response

    # -- bulk actions (conveyor.api.bulk) --------------------------------------------------
    @unary
    async def RetryJobs(
        self, request: pb.RetryJobsRequest, principal: Principal
    ) -> pb.RetryJobsResponse:
        checked = BulkRequest.checked(
            BulkAction.RETRY,
            request.filter,
            request.force,
            request.per_second,
            request.max_attempts,
        )
        count, op = await self.bulk.start(principal, checked)
        return pb.RetryJobsResponse(count=count, operation=op.to_proto() if op else None)

    @unary
    async def CancelJobs(
        self, request: pb.CancelJobsRequest, principal: Principal
    ) -> pb.CancelJobsResponse:
        checked = BulkRequest.checked(
            BulkAction.CANCEL, request.filter, request.force, request.per_second
        )
        count, op = await self.bulk.start(principal, checked)
        return pb.CancelJobsResponse(count=count, operation=op.to_proto() if op else None)

    @unary
    async def DeleteJobs(
        self, request: pb.DeleteJobsRequest, principal: Principal
    ) -> pb.DeleteJobsResponse:
        checked = BulkRequest.checked(
            BulkAction.DELETE, request.filter, request.force, request.per_second
        )
        count, op = await self.bulk.start(principal, checked)
        return pb.DeleteJobsResponse(count=count, operation=op.to_proto() if op else None)

    @unary
    async def GetBulkOperation(
        self, request: pb.GetBulkOperationRequest, principal: Principal
    ) -> pb.GetBulkOperationResponse:
        op = await self.bulk.get(principal, request.id)
        return pb.GetBulkOperationResponse(operation=op.to_proto())

    @unary
    async def CancelBulkOperation(
        self, request: pb.CancelBulkOperationRequest, principal: Principal
    ) -> pb.CancelBulkOperationResponse:
        op = await self.bulk.cancel(principal, request.id)
        return pb.CancelBulkOperationResponse(operation=op.to_proto())

    # -- queues and workers (admin) --------------------------------------------------------
    @unary
    async def GetQueueStats(
        self, request: pb.GetQueueStatsRequest, principal: Principal
    ) -> pb.GetQueueStatsResponse:
        found = await self.queues.stats(principal, request.queue)
        return pb.GetQueueStatsResponse(queues=[stats.to_proto() for stats in found])

    @unary
    async def PauseQueue(
        self, request: pb.PauseQueueRequest, principal: Principal
    ) -> pb.PauseQueueResponse:
        stats = await self.queues.pause(principal, request.queue)
        return pb.PauseQueueResponse(queue=stats.to_proto())

    @unary
    async def ResumeQueue(
        self, request: pb.ResumeQueueRequest, principal: Principal
    ) -> pb.ResumeQueueResponse:
        stats = await self.queues.resume(principal, request.queue)
        return pb.ResumeQueueResponse(queue=stats.to_proto())

    @unary
    async def UpdateQueueLimits(
        self, request: pb.UpdateQueueLimitsRequest, principal: Principal
    ) -> pb.UpdateQueueLimitsResponse:
        principal.require_admin()  # first: a user's call is refused before it is read
        change = LimitChange.from_proto(request.limits, named_fields(request, LIMIT_FIELDS))
        stats = await self.queues.set_limits(principal, request.queue, change)
        return pb.UpdateQueueLimitsResponse(queue=stats.to_proto())

    @unary
    async def ListWorkers(
        self, request: pb.ListWorkersRequest, principal: Principal
    ) -> pb.ListWorkersResponse:
        workers = await self.queues.list_workers(principal, request.queue)
        return pb.ListWorkersResponse(workers=[w.to_proto() for w in workers])


# A page's share of a response that is not its jobs: the page token and framing.
PAGE_OVERHEAD_BYTES = 4096


def _fitting(items: Sequence[Message], max_bytes: int) -> int:
    """How many of `items` (jobs, attempts) fit in a list response of `max_bytes` (at
    least one, so that a listing always moves on; an item is never larger than the message
    limit)."""
    used = PAGE_OVERHEAD_BYTES
    for count, item in enumerate(items):
        size = item.ByteSize()
        used += size + 1 + _varint_size(size)  # field tag and length prefix
        if used > max_bytes:
            return max(count, 1)
    return len(items)


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)
