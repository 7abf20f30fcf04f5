"""The Python client for Conveyor's JobService: `AsyncClient` (asyncio) and `Client` (blocking).

    from conveyor.client import Client
    with Client("127.0.0.1:50051", api_key="cvk_...") as client:
        job = client.submit("sleep", {"seconds": 2})
        for update in client.watch(job.id):
            print(update.job.state.name, update.job.progress)

Jobs come back as `Job`s (`conveyor.client.types`): states are `JobState` enums, payloads
and results dicts with their ints, times UTC datetimes; `.raw` is the message itself.

Jobs may wait for others: `submit(..., depends_on=[job])` starts a job once `job`
SUCCEEDED; `submit_batch(requests, on_complete=...)` runs a callback job once a whole
batch has ended (docs/workflows.md).

Submits are safe to retry: every job gets an idempotency key unless the caller gave one,
and an UNAVAILABLE or DEADLINE_EXCEEDED answer is retried with the same keys (`SubmitRetry`).
Failed calls raise `conveyor.errors.ConveyorError` subclasses, never `grpc.RpcError`.

`AsyncWorkerControl` pauses, resumes, drains and watches one worker process, at the
`control_address` that ListWorkers (`client.workers()`) gives for it.
"""

from conveyor.client._client import (
    AsyncClient,
    Client,
    limits_request,
    retry_policy,
    schedule_request,
    submit_request,
)
from conveyor.client._retries import SubmitRetry
from conveyor.client._workers import AsyncWorkerControl
from conveyor.client.types import (
    Artifact,
    Attempt,
    AttemptOutcome,
    Batch,
    Blocked,
    BlockedKind,
    BulkAction,
    BulkOperation,
    BulkOperationState,
    DependencyFailurePolicy,
    Job,
    JobResult,
    JobState,
    JobUpdate,
    Page,
    RetriedJob,
    RetryPolicy,
    SubmittedBatch,
)

__all__ = [
    "Artifact",
    "AsyncClient",
    "AsyncWorkerControl",
    "Attempt",
    "AttemptOutcome",
    "Batch",
    "Blocked",
    "BlockedKind",
    "BulkAction",
    "BulkOperation",
    "BulkOperationState",
    "Client",
    "DependencyFailurePolicy",
    "Job",
    "JobResult",
    "JobState",
    "JobUpdate",
    "Page",
    "RetriedJob",
    "RetryPolicy",
    "SubmitRetry",
    "SubmittedBatch",
    "limits_request",
    "retry_policy",
    "schedule_request",
    "submit_request",
]
