import datetime

from conveyor.v1 import job_pb2 as _job_pb2
from conveyor.v1 import queue_pb2 as _queue_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobView(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_VIEW_UNSPECIFIED: _ClassVar[JobView]
    JOB_VIEW_BASIC: _ClassVar[JobView]
    JOB_VIEW_FULL: _ClassVar[JobView]

class BulkAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BULK_ACTION_UNSPECIFIED: _ClassVar[BulkAction]
    BULK_ACTION_RETRY: _ClassVar[BulkAction]
    BULK_ACTION_CANCEL: _ClassVar[BulkAction]
    BULK_ACTION_DELETE: _ClassVar[BulkAction]

class BulkOperationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BULK_OPERATION_STATE_UNSPECIFIED: _ClassVar[BulkOperationState]
    BULK_OPERATION_STATE_RUNNING: _ClassVar[BulkOperationState]
    BULK_OPERATION_STATE_SUCCEEDED: _ClassVar[BulkOperationState]
    BULK_OPERATION_STATE_FAILED: _ClassVar[BulkOperationState]
    BULK_OPERATION_STATE_CANCELLED: _ClassVar[BulkOperationState]
JOB_VIEW_UNSPECIFIED: JobView
JOB_VIEW_BASIC: JobView
JOB_VIEW_FULL: JobView
BULK_ACTION_UNSPECIFIED: BulkAction
BULK_ACTION_RETRY: BulkAction
BULK_ACTION_CANCEL: BulkAction
BULK_ACTION_DELETE: BulkAction
BULK_OPERATION_STATE_UNSPECIFIED: BulkOperationState
BULK_OPERATION_STATE_RUNNING: BulkOperationState
BULK_OPERATION_STATE_SUCCEEDED: BulkOperationState
BULK_OPERATION_STATE_FAILED: BulkOperationState
BULK_OPERATION_STATE_CANCELLED: BulkOperationState

class SubmitJobRequest(_message.Message):
    __slots__ = ("type", "payload", "queue", "priority", "idempotency_key", "run_at", "max_attempts", "timeout", "retry", "delay", "retention", "view", "labels", "unique_for", "debounce", "concurrency_key", "rate_key", "depends_on", "depends_on_requests", "dependency_failure_policy")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    RUN_AT_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    DELAY_FIELD_NUMBER: _ClassVar[int]
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_FOR_FIELD_NUMBER: _ClassVar[int]
    DEBOUNCE_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    RATE_KEY_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCY_FAILURE_POLICY_FIELD_NUMBER: _ClassVar[int]
    type: str
    payload: _struct_pb2.Struct
    queue: str
    priority: int
    idempotency_key: str
    run_at: _timestamp_pb2.Timestamp
    max_attempts: int
    timeout: _duration_pb2.Duration
    retry: _job_pb2.RetryPolicy
    delay: _duration_pb2.Duration
    retention: _duration_pb2.Duration
    view: JobView
    labels: _containers.ScalarMap[str, str]
    unique_for: _duration_pb2.Duration
    debounce: _duration_pb2.Duration
    concurrency_key: str
    rate_key: str
    depends_on: _containers.RepeatedScalarFieldContainer[str]
    depends_on_requests: _containers.RepeatedScalarFieldContainer[int]
    dependency_failure_policy: _job_pb2.DependencyFailurePolicy
    def __init__(self, type: _Optional[str] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., queue: _Optional[str] = ..., priority: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., run_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_attempts: _Optional[int] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retry: _Optional[_Union[_job_pb2.RetryPolicy, _Mapping]] = ..., delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retention: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., view: _Optional[_Union[JobView, str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., unique_for: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., debounce: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., concurrency_key: _Optional[str] = ..., rate_key: _Optional[str] = ..., depends_on: _Optional[_Iterable[str]] = ..., depends_on_requests: _Optional[_Iterable[int]] = ..., dependency_failure_policy: _Optional[_Union[_job_pb2.DependencyFailurePolicy, str]] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class SubmitJobsRequest(_message.Message):
    __slots__ = ("requests", "view", "partial_success", "on_complete")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ON_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[SubmitJobRequest]
    view: JobView
    partial_success: bool
    on_complete: SubmitJobRequest
    def __init__(self, requests: _Optional[_Iterable[_Union[SubmitJobRequest, _Mapping]]] = ..., view: _Optional[_Union[JobView, str]] = ..., partial_success: _Optional[bool] = ..., on_complete: _Optional[_Union[SubmitJobRequest, _Mapping]] = ...) -> None: ...

class SubmitJobsResult(_message.Message):
    __slots__ = ("job", "error")
    JOB_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    error: _status_pb2.Status
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class SubmitJobsResponse(_message.Message):
    __slots__ = ("jobs", "results", "batch")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_job_pb2.Job]
    results: _containers.RepeatedCompositeFieldContainer[SubmitJobsResult]
    batch: _job_pb2.Batch
    def __init__(self, jobs: _Optional[_Iterable[_Union[_job_pb2.Job, _Mapping]]] = ..., results: _Optional[_Iterable[_Union[SubmitJobsResult, _Mapping]]] = ..., batch: _Optional[_Union[_job_pb2.Batch, _Mapping]] = ...) -> None: ...

class GetBatchRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetBatchResponse(_message.Message):
    __slots__ = ("batch",)
    BATCH_FIELD_NUMBER: _ClassVar[int]
    batch: _job_pb2.Batch
    def __init__(self, batch: _Optional[_Union[_job_pb2.Batch, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("id", "view")
    ID_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    id: str
    view: JobView
    def __init__(self, id: _Optional[str] = ..., view: _Optional[_Union[JobView, str]] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("state", "queue", "type", "page_size", "page_token", "owner", "create_time_start", "create_time_end", "view", "filter")
    STATE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_START_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_END_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    state: _job_pb2.JobState
    queue: str
    type: str
    page_size: int
    page_token: str
    owner: str
    create_time_start: _timestamp_pb2.Timestamp
    create_time_end: _timestamp_pb2.Timestamp
    view: JobView
    filter: str
    def __init__(self, state: _Optional[_Union[_job_pb2.JobState, str]] = ..., queue: _Optional[str] = ..., type: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., owner: _Optional[str] = ..., create_time_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., create_time_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., view: _Optional[_Union[JobView, str]] = ..., filter: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_job_pb2.Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[_job_pb2.Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("id", "after_sequence")
    ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    after_sequence: int
    def __init__(self, id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("sequence", "job")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    job: _job_pb2.Job
    def __init__(self, sequence: _Optional[int] = ..., job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class RetryJobRequest(_message.Message):
    __slots__ = ("id", "max_attempts", "include_dependents")
    ID_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DEPENDENTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    max_attempts: int
    include_dependents: bool
    def __init__(self, id: _Optional[str] = ..., max_attempts: _Optional[int] = ..., include_dependents: _Optional[bool] = ...) -> None: ...

class RetryJobResponse(_message.Message):
    __slots__ = ("job", "revived_dependents")
    JOB_FIELD_NUMBER: _ClassVar[int]
    REVIVED_DEPENDENTS_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    revived_dependents: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ..., revived_dependents: _Optional[_Iterable[str]] = ...) -> None: ...

class ListJobAttemptsRequest(_message.Message):
    __slots__ = ("id", "page_size", "page_token")
    ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    id: str
    page_size: int
    page_token: str
    def __init__(self, id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobAttemptsResponse(_message.Message):
    __slots__ = ("attempts", "next_page_token")
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    attempts: _containers.RepeatedCompositeFieldContainer[_job_pb2.JobAttempt]
    next_page_token: str
    def __init__(self, attempts: _Optional[_Iterable[_Union[_job_pb2.JobAttempt, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetQueueStatsRequest(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    def __init__(self, queue: _Optional[str] = ...) -> None: ...

class GetQueueStatsResponse(_message.Message):
    __slots__ = ("queues",)
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedCompositeFieldContainer[_queue_pb2.QueueStats]
    def __init__(self, queues: _Optional[_Iterable[_Union[_queue_pb2.QueueStats, _Mapping]]] = ...) -> None: ...

class PauseQueueRequest(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    def __init__(self, queue: _Optional[str] = ...) -> None: ...

class PauseQueueResponse(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: _queue_pb2.QueueStats
    def __init__(self, queue: _Optional[_Union[_queue_pb2.QueueStats, _Mapping]] = ...) -> None: ...

class ResumeQueueRequest(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    def __init__(self, queue: _Optional[str] = ...) -> None: ...

class ResumeQueueResponse(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: _queue_pb2.QueueStats
    def __init__(self, queue: _Optional[_Union[_queue_pb2.QueueStats, _Mapping]] = ...) -> None: ...

class UpdateQueueLimitsRequest(_message.Message):
    __slots__ = ("queue", "limits", "update_mask")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    queue: str
    limits: _queue_pb2.QueueLimits
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, queue: _Optional[str] = ..., limits: _Optional[_Union[_queue_pb2.QueueLimits, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateQueueLimitsResponse(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: _queue_pb2.QueueStats
    def __init__(self, queue: _Optional[_Union[_queue_pb2.QueueStats, _Mapping]] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    def __init__(self, queue: _Optional[str] = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[_queue_pb2.Worker]
    def __init__(self, workers: _Optional[_Iterable[_Union[_queue_pb2.Worker, _Mapping]]] = ...) -> None: ...

class GetJobResultRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetJobResultResponse(_message.Message):
    __slots__ = ("job", "result", "artifacts")
    JOB_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    result: _struct_pb2.Struct
    artifacts: _containers.RepeatedCompositeFieldContainer[_job_pb2.Artifact]
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ..., result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., artifacts: _Optional[_Iterable[_Union[_job_pb2.Artifact, _Mapping]]] = ...) -> None: ...

class BulkOperation(_message.Message):
    __slots__ = ("id", "owner", "action", "filter", "state", "per_second", "max_attempts", "matched", "done", "skipped", "failed", "create_time", "finish_time", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISH_TIME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    owner: str
    action: BulkAction
    filter: str
    state: BulkOperationState
    per_second: int
    max_attempts: int
    matched: int
    done: int
    skipped: int
    failed: int
    create_time: _timestamp_pb2.Timestamp
    finish_time: _timestamp_pb2.Timestamp
    error: str
    def __init__(self, id: _Optional[str] = ..., owner: _Optional[str] = ..., action: _Optional[_Union[BulkAction, str]] = ..., filter: _Optional[str] = ..., state: _Optional[_Union[BulkOperationState, str]] = ..., per_second: _Optional[int] = ..., max_attempts: _Optional[int] = ..., matched: _Optional[int] = ..., done: _Optional[int] = ..., skipped: _Optional[int] = ..., failed: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class RetryJobsRequest(_message.Message):
    __slots__ = ("filter", "force", "per_second", "max_attempts")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    filter: str
    force: bool
    per_second: int
    max_attempts: int
    def __init__(self, filter: _Optional[str] = ..., force: _Optional[bool] = ..., per_second: _Optional[int] = ..., max_attempts: _Optional[int] = ...) -> None: ...

class RetryJobsResponse(_message.Message):
    __slots__ = ("count", "operation")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    count: int
    operation: BulkOperation
    def __init__(self, count: _Optional[int] = ..., operation: _Optional[_Union[BulkOperation, _Mapping]] = ...) -> None: ...

class CancelJobsRequest(_message.Message):
    __slots__ = ("filter", "force", "per_second")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    filter: str
    force: bool
    per_second: int
    def __init__(self, filter: _Optional[str] = ..., force: _Optional[bool] = ..., per_second: _Optional[int] = ...) -> None: ...

class CancelJobsResponse(_message.Message):
    __slots__ = ("count", "operation")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    count: int
    operation: BulkOperation
    def __init__(self, count: _Optional[int] = ..., operation: _Optional[_Union[BulkOperation, _Mapping]] = ...) -> None: ...

class DeleteJobsRequest(_message.Message):
    __slots__ = ("filter", "force", "per_second")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    filter: str
    force: bool
    per_second: int
    def __init__(self, filter: _Optional[str] = ..., force: _Optional[bool] = ..., per_second: _Optional[int] = ...) -> None: ...

class DeleteJobsResponse(_message.Message):
    __slots__ = ("count", "operation")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    count: int
    operation: BulkOperation
    def __init__(self, count: _Optional[int] = ..., operation: _Optional[_Union[BulkOperation, _Mapping]] = ...) -> None: ...

class GetBulkOperationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetBulkOperationResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: BulkOperation
    def __init__(self, operation: _Optional[_Union[BulkOperation, _Mapping]] = ...) -> None: ...

class CancelBulkOperationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CancelBulkOperationResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: BulkOperation
    def __init__(self, operation: _Optional[_Union[BulkOperation, _Mapping]] = ...) -> None: ...
