import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_SCHEDULED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_RETRYING: _ClassVar[JobState]
    JOB_STATE_DEAD: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class DependencyFailurePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPENDENCY_FAILURE_POLICY_UNSPECIFIED: _ClassVar[DependencyFailurePolicy]
    DEPENDENCY_FAILURE_POLICY_CANCEL: _ClassVar[DependencyFailurePolicy]
    DEPENDENCY_FAILURE_POLICY_RUN_ANYWAY: _ClassVar[DependencyFailurePolicy]

class BlockedKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BLOCKED_KIND_UNSPECIFIED: _ClassVar[BlockedKind]
    BLOCKED_KIND_SCHEDULED: _ClassVar[BlockedKind]
    BLOCKED_KIND_BACKOFF: _ClassVar[BlockedKind]
    BLOCKED_KIND_PAUSED: _ClassVar[BlockedKind]
    BLOCKED_KIND_QUEUE_CONCURRENCY_LIMIT: _ClassVar[BlockedKind]
    BLOCKED_KIND_OWNER_CONCURRENCY_LIMIT: _ClassVar[BlockedKind]
    BLOCKED_KIND_API_KEY_CONCURRENCY_LIMIT: _ClassVar[BlockedKind]
    BLOCKED_KIND_RATE_LIMITED: _ClassVar[BlockedKind]
    BLOCKED_KIND_QUEUE_NEVER_SERVED: _ClassVar[BlockedKind]
    BLOCKED_KIND_NO_WORKER: _ClassVar[BlockedKind]
    BLOCKED_KIND_NO_WORKER_FOR_TYPE: _ClassVar[BlockedKind]
    BLOCKED_KIND_IN_LINE: _ClassVar[BlockedKind]
    BLOCKED_KIND_ENQUEUE_PENDING: _ClassVar[BlockedKind]
    BLOCKED_KIND_QUEUE_UNREACHABLE: _ClassVar[BlockedKind]
    BLOCKED_KIND_CONCURRENCY_KEY: _ClassVar[BlockedKind]
    BLOCKED_KIND_RATE_KEY: _ClassVar[BlockedKind]
    BLOCKED_KIND_DEPENDENCIES: _ClassVar[BlockedKind]

class AttemptOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ATTEMPT_OUTCOME_UNSPECIFIED: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_SUCCEEDED: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_FAILED: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_TIMED_OUT: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_LOST: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_CANCELLED: _ClassVar[AttemptOutcome]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_SCHEDULED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_RETRYING: JobState
JOB_STATE_DEAD: JobState
JOB_STATE_CANCELLED: JobState
DEPENDENCY_FAILURE_POLICY_UNSPECIFIED: DependencyFailurePolicy
DEPENDENCY_FAILURE_POLICY_CANCEL: DependencyFailurePolicy
DEPENDENCY_FAILURE_POLICY_RUN_ANYWAY: DependencyFailurePolicy
BLOCKED_KIND_UNSPECIFIED: BlockedKind
BLOCKED_KIND_SCHEDULED: BlockedKind
BLOCKED_KIND_BACKOFF: BlockedKind
BLOCKED_KIND_PAUSED: BlockedKind
BLOCKED_KIND_QUEUE_CONCURRENCY_LIMIT: BlockedKind
BLOCKED_KIND_OWNER_CONCURRENCY_LIMIT: BlockedKind
BLOCKED_KIND_API_KEY_CONCURRENCY_LIMIT: BlockedKind
BLOCKED_KIND_RATE_LIMITED: BlockedKind
BLOCKED_KIND_QUEUE_NEVER_SERVED: BlockedKind
BLOCKED_KIND_NO_WORKER: BlockedKind
BLOCKED_KIND_NO_WORKER_FOR_TYPE: BlockedKind
BLOCKED_KIND_IN_LINE: BlockedKind
BLOCKED_KIND_ENQUEUE_PENDING: BlockedKind
BLOCKED_KIND_QUEUE_UNREACHABLE: BlockedKind
BLOCKED_KIND_CONCURRENCY_KEY: BlockedKind
BLOCKED_KIND_RATE_KEY: BlockedKind
BLOCKED_KIND_DEPENDENCIES: BlockedKind
ATTEMPT_OUTCOME_UNSPECIFIED: AttemptOutcome
ATTEMPT_OUTCOME_SUCCEEDED: AttemptOutcome
ATTEMPT_OUTCOME_FAILED: AttemptOutcome
ATTEMPT_OUTCOME_TIMED_OUT: AttemptOutcome
ATTEMPT_OUTCOME_LOST: AttemptOutcome
ATTEMPT_OUTCOME_CANCELLED: AttemptOutcome

class Job(_message.Message):
    __slots__ = ("id", "owner", "type", "queue", "state", "priority", "payload", "attempt", "max_attempts", "progress", "progress_message", "error", "idempotency_key", "run_at", "create_time", "start_time", "finish_time", "timeout", "retry", "blocked_reason", "retention", "expire_time", "blocked", "labels", "concurrency_key", "rate_key", "depends_on", "dependency_failure_policy", "batch_id")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    RUN_AT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISH_TIME_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_REASON_FIELD_NUMBER: _ClassVar[int]
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    RATE_KEY_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCY_FAILURE_POLICY_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    owner: str
    type: str
    queue: str
    state: JobState
    priority: int
    payload: _struct_pb2.Struct
    attempt: int
    max_attempts: int
    progress: float
    progress_message: str
    error: str
    idempotency_key: str
    run_at: _timestamp_pb2.Timestamp
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    finish_time: _timestamp_pb2.Timestamp
    timeout: _duration_pb2.Duration
    retry: RetryPolicy
    blocked_reason: str
    retention: _duration_pb2.Duration
    expire_time: _timestamp_pb2.Timestamp
    blocked: BlockedReason
    labels: _containers.ScalarMap[str, str]
    concurrency_key: str
    rate_key: str
    depends_on: _containers.RepeatedScalarFieldContainer[str]
    dependency_failure_policy: DependencyFailurePolicy
    batch_id: str
    def __init__(self, id: _Optional[str] = ..., owner: _Optional[str] = ..., type: _Optional[str] = ..., queue: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., priority: _Optional[int] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., attempt: _Optional[int] = ..., max_attempts: _Optional[int] = ..., progress: _Optional[float] = ..., progress_message: _Optional[str] = ..., error: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., run_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retry: _Optional[_Union[RetryPolicy, _Mapping]] = ..., blocked_reason: _Optional[str] = ..., retention: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., blocked: _Optional[_Union[BlockedReason, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., concurrency_key: _Optional[str] = ..., rate_key: _Optional[str] = ..., depends_on: _Optional[_Iterable[str]] = ..., dependency_failure_policy: _Optional[_Union[DependencyFailurePolicy, str]] = ..., batch_id: _Optional[str] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("id", "owner", "job_count", "succeeded", "dead", "cancelled", "unfinished", "callback_job_id", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    JOB_COUNT_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    DEAD_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_FIELD_NUMBER: _ClassVar[int]
    CALLBACK_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    owner: str
    job_count: int
    succeeded: int
    dead: int
    cancelled: int
    unfinished: int
    callback_job_id: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., owner: _Optional[str] = ..., job_count: _Optional[int] = ..., succeeded: _Optional[int] = ..., dead: _Optional[int] = ..., cancelled: _Optional[int] = ..., unfinished: _Optional[int] = ..., callback_job_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class BlockedReason(_message.Message):
    __slots__ = ("kind", "queue", "until", "running", "limit", "owner", "api_key_id", "jobs_ahead", "rate_jobs", "rate_interval", "attempt", "max_attempts", "job_type", "type_unverified", "cause", "concurrency_key", "rate_key", "dependencies_pending", "dependencies_total", "waiting_for")
    KIND_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    JOBS_AHEAD_FIELD_NUMBER: _ClassVar[int]
    RATE_JOBS_FIELD_NUMBER: _ClassVar[int]
    RATE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    JOB_TYPE_FIELD_NUMBER: _ClassVar[int]
    TYPE_UNVERIFIED_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    RATE_KEY_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCIES_PENDING_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCIES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_FIELD_NUMBER: _ClassVar[int]
    kind: BlockedKind
    queue: str
    until: _timestamp_pb2.Timestamp
    running: int
    limit: int
    owner: str
    api_key_id: str
    jobs_ahead: int
    rate_jobs: int
    rate_interval: _duration_pb2.Duration
    attempt: int
    max_attempts: int
    job_type: str
    type_unverified: bool
    cause: str
    concurrency_key: str
    rate_key: str
    dependencies_pending: int
    dependencies_total: int
    waiting_for: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[_Union[BlockedKind, str]] = ..., queue: _Optional[str] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., running: _Optional[int] = ..., limit: _Optional[int] = ..., owner: _Optional[str] = ..., api_key_id: _Optional[str] = ..., jobs_ahead: _Optional[int] = ..., rate_jobs: _Optional[int] = ..., rate_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., attempt: _Optional[int] = ..., max_attempts: _Optional[int] = ..., job_type: _Optional[str] = ..., type_unverified: _Optional[bool] = ..., cause: _Optional[str] = ..., concurrency_key: _Optional[str] = ..., rate_key: _Optional[str] = ..., dependencies_pending: _Optional[int] = ..., dependencies_total: _Optional[int] = ..., waiting_for: _Optional[_Iterable[str]] = ...) -> None: ...

class RetryPolicy(_message.Message):
    __slots__ = ("initial_backoff", "max_backoff", "multiplier", "jitter")
    INITIAL_BACKOFF_FIELD_NUMBER: _ClassVar[int]
    MAX_BACKOFF_FIELD_NUMBER: _ClassVar[int]
    MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    JITTER_FIELD_NUMBER: _ClassVar[int]
    initial_backoff: _duration_pb2.Duration
    max_backoff: _duration_pb2.Duration
    multiplier: float
    jitter: float
    def __init__(self, initial_backoff: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_backoff: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., multiplier: _Optional[float] = ..., jitter: _Optional[float] = ...) -> None: ...

class JobAttempt(_message.Message):
    __slots__ = ("job_id", "attempt", "outcome", "worker_id", "start_time", "finish_time", "error", "traceback")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISH_TIME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    outcome: AttemptOutcome
    worker_id: str
    start_time: _timestamp_pb2.Timestamp
    finish_time: _timestamp_pb2.Timestamp
    error: str
    traceback: str
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., outcome: _Optional[_Union[AttemptOutcome, str]] = ..., worker_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[str] = ..., traceback: _Optional[str] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("name", "size", "content_type", "sha256", "create_time", "url", "url_expire_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    URL_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    content_type: str
    sha256: str
    create_time: _timestamp_pb2.Timestamp
    url: str
    url_expire_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., content_type: _Optional[str] = ..., sha256: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., url: _Optional[str] = ..., url_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
