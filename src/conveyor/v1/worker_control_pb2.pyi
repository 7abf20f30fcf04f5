import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKER_STATE_UNSPECIFIED: _ClassVar[WorkerState]
    WORKER_STATE_RUNNING: _ClassVar[WorkerState]
    WORKER_STATE_PAUSED: _ClassVar[WorkerState]
    WORKER_STATE_DRAINING: _ClassVar[WorkerState]
    WORKER_STATE_STOPPED: _ClassVar[WorkerState]
WORKER_STATE_UNSPECIFIED: WorkerState
WORKER_STATE_RUNNING: WorkerState
WORKER_STATE_PAUSED: WorkerState
WORKER_STATE_DRAINING: WorkerState
WORKER_STATE_STOPPED: WorkerState

class RunningJob(_message.Message):
    __slots__ = ("job_id", "type", "progress")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    type: str
    progress: float
    def __init__(self, job_id: _Optional[str] = ..., type: _Optional[str] = ..., progress: _Optional[float] = ...) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("worker_id", "state", "concurrency", "running_jobs", "processed", "failed", "queues", "host", "stale_writes", "overrunning_handlers")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    PROCESSED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    STALE_WRITES_FIELD_NUMBER: _ClassVar[int]
    OVERRUNNING_HANDLERS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    state: WorkerState
    concurrency: int
    running_jobs: _containers.RepeatedCompositeFieldContainer[RunningJob]
    processed: int
    failed: int
    queues: _containers.RepeatedScalarFieldContainer[str]
    host: str
    stale_writes: int
    overrunning_handlers: int
    def __init__(self, worker_id: _Optional[str] = ..., state: _Optional[_Union[WorkerState, str]] = ..., concurrency: _Optional[int] = ..., running_jobs: _Optional[_Iterable[_Union[RunningJob, _Mapping]]] = ..., processed: _Optional[int] = ..., failed: _Optional[int] = ..., queues: _Optional[_Iterable[str]] = ..., host: _Optional[str] = ..., stale_writes: _Optional[int] = ..., overrunning_handlers: _Optional[int] = ...) -> None: ...

class GetWorkerStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetWorkerStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: WorkerStatus
    def __init__(self, status: _Optional[_Union[WorkerStatus, _Mapping]] = ...) -> None: ...

class WatchWorkerStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchWorkerStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: WorkerStatus
    def __init__(self, status: _Optional[_Union[WorkerStatus, _Mapping]] = ...) -> None: ...

class PauseWorkerRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PauseWorkerResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: WorkerStatus
    def __init__(self, status: _Optional[_Union[WorkerStatus, _Mapping]] = ...) -> None: ...

class ResumeWorkerRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResumeWorkerResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: WorkerStatus
    def __init__(self, status: _Optional[_Union[WorkerStatus, _Mapping]] = ...) -> None: ...

class DrainWorkerRequest(_message.Message):
    __slots__ = ("grace",)
    GRACE_FIELD_NUMBER: _ClassVar[int]
    grace: _duration_pb2.Duration
    def __init__(self, grace: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DrainWorkerResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: WorkerStatus
    def __init__(self, status: _Optional[_Union[WorkerStatus, _Mapping]] = ...) -> None: ...
