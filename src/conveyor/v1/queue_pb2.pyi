import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QueueLimits(_message.Message):
    __slots__ = ("max_running", "rate_jobs", "rate_interval", "max_running_per_owner", "shards", "max_running_per_key", "rate_per_key_jobs", "rate_per_key_interval")
    MAX_RUNNING_FIELD_NUMBER: _ClassVar[int]
    RATE_JOBS_FIELD_NUMBER: _ClassVar[int]
    RATE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNNING_PER_OWNER_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNNING_PER_KEY_FIELD_NUMBER: _ClassVar[int]
    RATE_PER_KEY_JOBS_FIELD_NUMBER: _ClassVar[int]
    RATE_PER_KEY_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    max_running: int
    rate_jobs: int
    rate_interval: _duration_pb2.Duration
    max_running_per_owner: int
    shards: int
    max_running_per_key: int
    rate_per_key_jobs: int
    rate_per_key_interval: _duration_pb2.Duration
    def __init__(self, max_running: _Optional[int] = ..., rate_jobs: _Optional[int] = ..., rate_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_running_per_owner: _Optional[int] = ..., shards: _Optional[int] = ..., max_running_per_key: _Optional[int] = ..., rate_per_key_jobs: _Optional[int] = ..., rate_per_key_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class QueueMinute(_message.Message):
    __slots__ = ("start_time", "succeeded", "retried", "dead", "cancelled")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    RETRIED_FIELD_NUMBER: _ClassVar[int]
    DEAD_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    succeeded: int
    retried: int
    dead: int
    cancelled: int
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., succeeded: _Optional[int] = ..., retried: _Optional[int] = ..., dead: _Optional[int] = ..., cancelled: _Optional[int] = ...) -> None: ...

class QueueStats(_message.Message):
    __slots__ = ("queue", "paused", "limits", "scheduled", "queued", "running", "retrying", "queued_by_priority", "oldest_wait", "succeeded_last_minute", "retried_last_minute", "dead_last_minute", "cancelled_last_minute", "throughput_per_second", "failure_rate", "recent_minutes")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    RETRYING_FIELD_NUMBER: _ClassVar[int]
    QUEUED_BY_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    OLDEST_WAIT_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_LAST_MINUTE_FIELD_NUMBER: _ClassVar[int]
    RETRIED_LAST_MINUTE_FIELD_NUMBER: _ClassVar[int]
    DEAD_LAST_MINUTE_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_LAST_MINUTE_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    FAILURE_RATE_FIELD_NUMBER: _ClassVar[int]
    RECENT_MINUTES_FIELD_NUMBER: _ClassVar[int]
    queue: str
    paused: bool
    limits: QueueLimits
    scheduled: int
    queued: int
    running: int
    retrying: int
    queued_by_priority: _containers.RepeatedScalarFieldContainer[int]
    oldest_wait: _duration_pb2.Duration
    succeeded_last_minute: int
    retried_last_minute: int
    dead_last_minute: int
    cancelled_last_minute: int
    throughput_per_second: float
    failure_rate: float
    recent_minutes: _containers.RepeatedCompositeFieldContainer[QueueMinute]
    def __init__(self, queue: _Optional[str] = ..., paused: _Optional[bool] = ..., limits: _Optional[_Union[QueueLimits, _Mapping]] = ..., scheduled: _Optional[int] = ..., queued: _Optional[int] = ..., running: _Optional[int] = ..., retrying: _Optional[int] = ..., queued_by_priority: _Optional[_Iterable[int]] = ..., oldest_wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., succeeded_last_minute: _Optional[int] = ..., retried_last_minute: _Optional[int] = ..., dead_last_minute: _Optional[int] = ..., cancelled_last_minute: _Optional[int] = ..., throughput_per_second: _Optional[float] = ..., failure_rate: _Optional[float] = ..., recent_minutes: _Optional[_Iterable[_Union[QueueMinute, _Mapping]]] = ...) -> None: ...

class Worker(_message.Message):
    __slots__ = ("worker_id", "host", "queues", "types", "concurrency", "running", "start_time", "last_heartbeat", "control_address")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    CONTROL_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    host: str
    queues: _containers.RepeatedScalarFieldContainer[str]
    types: _containers.RepeatedScalarFieldContainer[str]
    concurrency: int
    running: int
    start_time: _timestamp_pb2.Timestamp
    last_heartbeat: _timestamp_pb2.Timestamp
    control_address: str
    def __init__(self, worker_id: _Optional[str] = ..., host: _Optional[str] = ..., queues: _Optional[_Iterable[str]] = ..., types: _Optional[_Iterable[str]] = ..., concurrency: _Optional[int] = ..., running: _Optional[int] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_heartbeat: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., control_address: _Optional[str] = ...) -> None: ...
