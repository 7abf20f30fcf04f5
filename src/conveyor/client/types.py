"""The SDK's typed view of the API's messages: what a Python caller wants to hold instead of
raw protobuf (issue 23, item 2).

A protobuf `Job` answers `state` with an int, `payload` and `result` with a `Struct` whose
numbers are all doubles (`{"rows": 2}` reads back as `2.0`), and times with `Timestamp`s
whose unset value is the epoch. These classes say the same things the way Python does:

- **States and kinds are enums** (`JobState.QUEUED`), `IntEnum`s with the proto's numbers,
  so `job.state == job_pb2.JOB_STATE_QUEUED` still holds for code written against the
  messages.
- **Payloads and results are dicts**, whole numbers back to ints (as handlers see them:
  `conveyor.jobs.payload`).
- **Times are timezone-aware datetimes in UTC, durations `timedelta`s**, and a time the
  message leaves unset is None, not 1970.
- **The message stays reachable** as `.raw`, for a field this view does not carry yet or
  for handing on to other gRPC code (as temporalio's client keeps its raw protos).

Every class is built with `from_proto`; none is sent back to the API (requests are made
with `conveyor.client.submit_request` and friends).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from google.protobuf import duration_pb2, timestamp_pb2

from conveyor.jobs.payload import payload_from_struct
from conveyor.v1 import job_pb2
from conveyor.v1 import job_service_pb2 as pb

T = TypeVar("T")


class JobState(enum.IntEnum):
    """A job's state, with the numbers of the proto's `JobState`."""

    UNSPECIFIED = job_pb2.JOB_STATE_UNSPECIFIED
    SCHEDULED = job_pb2.JOB_STATE_SCHEDULED
    QUEUED = job_pb2.JOB_STATE_QUEUED
    RUNNING = job_pb2.JOB_STATE_RUNNING
    SUCCEEDED = job_pb2.JOB_STATE_SUCCEEDED
    RETRYING = job_pb2.JOB_STATE_RETRYING
    DEAD = job_pb2.JOB_STATE_DEAD
    CANCELLED = job_pb2.JOB_STATE_CANCELLED

    @property
    def terminal(self) -> bool:
        """The job has ended: nothing will change it but a RetryJob."""
        return self in (JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED)

    @property
    def waiting(self) -> bool:
        """The job waits to start (and its `blocked_reason` says why)."""
        return self in (JobState.SCHEDULED, JobState.QUEUED, JobState.RETRYING)


class BlockedKind(enum.IntEnum):
    """Why a waiting job is not running, as data: the proto's `BlockedKind` numbers."""

    UNSPECIFIED = job_pb2.BLOCKED_KIND_UNSPECIFIED
    SCHEDULED = job_pb2.BLOCKED_KIND_SCHEDULED
    BACKOFF = job_pb2.BLOCKED_KIND_BACKOFF
    PAUSED = job_pb2.BLOCKED_KIND_PAUSED
    QUEUE_CONCURRENCY_LIMIT = job_pb2.BLOCKED_KIND_QUEUE_CONCURRENCY_LIMIT
    OWNER_CONCURRENCY_LIMIT = job_pb2.BLOCKED_KIND_OWNER_CONCURRENCY_LIMIT
    API_KEY_CONCURRENCY_LIMIT = job_pb2.BLOCKED_KIND_API_KEY_CONCURRENCY_LIMIT
    RATE_LIMITED = job_pb2.BLOCKED_KIND_RATE_LIMITED
    QUEUE_NEVER_SERVED = job_pb2.BLOCKED_KIND_QUEUE_NEVER_SERVED
    NO_WORKER = job_pb2.BLOCKED_KIND_NO_WORKER
    NO_WORKER_FOR_TYPE = job_pb2.BLOCKED_KIND_NO_WORKER_FOR_TYPE
    IN_LINE = job_pb2.BLOCKED_KIND_IN_LINE
    ENQUEUE_PENDING = job_pb2.BLOCKED_KIND_ENQUEUE_PENDING
    QUEUE_UNREACHABLE = job_pb2.BLOCKED_KIND_QUEUE_UNREACHABLE


class AttemptOutcome(enum.IntEnum):
    """How an attempt ended: the proto's `AttemptOutcome` numbers."""

    UNSPECIFIED = job_pb2.ATTEMPT_OUTCOME_UNSPECIFIED
    SUCCEEDED = job_pb2.ATTEMPT_OUTCOME_SUCCEEDED
    FAILED = job_pb2.ATTEMPT_OUTCOME_FAILED
    TIMED_OUT = job_pb2.ATTEMPT_OUTCOME_TIMED_OUT
    LOST = job_pb2.ATTEMPT_OUTCOME_LOST
    CANCELLED = job_pb2.ATTEMPT_OUTCOME_CANCELLED


def _time(message: Any, name: str) -> datetime | None:
    """The message's timestamp `name` in UTC, or None when it is unset."""
    if not message.HasField(name):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, name)
    return stamp.ToDatetime(tzinfo=UTC)


def _duration(message: Any, name: str) -> timedelta | None:
    """The message's duration `name`, or None when it is unset."""
    if not message.HasField(name):
        return None
    span: duration_pb2.Duration = getattr(message, name)
    return span.ToTimedelta()


def _epoch_if_unset(when: datetime | None) -> datetime:
    return when if when is not None else datetime.fromtimestamp(0, UTC)


@dataclass(frozen=True, slots=True)
class Blocked:
    """What holds a waiting job back (`Job.blocked_reason` says it in words). Only the
    fields its `kind` uses are set; the others keep their empty values."""

    kind: BlockedKind
    queue: str = ""
    until: datetime | None = None
    running: int = 0
    limit: int = 0
    owner: str = ""
    api_key_id: str = ""
    jobs_ahead: int | None = None
    rate_jobs: int = 0
    rate_interval: timedelta | None = None
    attempt: int = 0
    max_attempts: int = 0
    job_type: str = ""
    type_unverified: bool = False
    cause: str = ""

    @classmethod
    def from_proto(cls, msg: job_pb2.BlockedReason) -> Blocked:
        return cls(
            kind=BlockedKind(msg.kind),
            queue=msg.queue,
            until=_time(msg, "until"),
            running=msg.running,
            limit=msg.limit,
            owner=msg.owner,
            api_key_id=msg.api_key_id,
            jobs_ahead=msg.jobs_ahead if msg.HasField("jobs_ahead") else None,
            rate_jobs=msg.rate_jobs,
            rate_interval=_duration(msg, "rate_interval"),
            attempt=msg.attempt,
            max_attempts=msg.max_attempts,
            job_type=msg.job_type,
            type_unverified=msg.type_unverified,
            cause=msg.cause,
        )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The backoff a job's failed attempts wait out (resolved at submit)."""

    initial_backoff: timedelta
    max_backoff: timedelta
    multiplier: float
    jitter: float | None

    @classmethod
    def from_proto(cls, msg: job_pb2.RetryPolicy) -> RetryPolicy:
        return cls(
            initial_backoff=msg.initial_backoff.ToTimedelta(),
            max_backoff=msg.max_backoff.ToTimedelta(),
            multiplier=msg.multiplier,
            jitter=msg.jitter if msg.HasField("jitter") else None,
        )


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the API answered it (see the module for how fields read)."""

    id: str
    owner: str
    type: str
    queue: str
    state: JobState
    priority: int
    payload: dict[str, Any]
    attempt: int
    max_attempts: int
    progress: float
    progress_message: str
    error: str
    idempotency_key: str
    create_time: datetime
    run_at: datetime
    start_time: datetime | None
    finish_time: datetime | None
    timeout: timedelta | None
    retry: RetryPolicy | None
    retention: timedelta | None
    expire_time: datetime | None
    blocked_reason: str
    blocked: Blocked | None
    raw: job_pb2.Job = field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, msg: job_pb2.Job) -> Job:
        return cls(
            id=msg.id,
            owner=msg.owner,
            type=msg.type,
            queue=msg.queue,
            state=JobState(msg.state),
            priority=msg.priority,
            payload=payload_from_struct(msg.payload),
            attempt=msg.attempt,
            max_attempts=msg.max_attempts,
            progress=msg.progress,
            progress_message=msg.progress_message,
            error=msg.error,
            idempotency_key=msg.idempotency_key,
            create_time=_epoch_if_unset(_time(msg, "create_time")),
            run_at=_epoch_if_unset(_time(msg, "run_at")),
            start_time=_time(msg, "start_time"),
            finish_time=_time(msg, "finish_time"),
            timeout=_duration(msg, "timeout"),
            retry=RetryPolicy.from_proto(msg.retry) if msg.HasField("retry") else None,
            retention=_duration(msg, "retention"),
            expire_time=_time(msg, "expire_time"),
            blocked_reason=msg.blocked_reason,
            blocked=Blocked.from_proto(msg.blocked) if msg.HasField("blocked") else None,
            raw=msg,
        )


@dataclass(frozen=True, slots=True)
class JobUpdate:
    """One WatchJob answer: the job after its change number `sequence` (resume a dropped
    watch after the last sequence seen)."""

    sequence: int
    job: Job

    @classmethod
    def from_proto(cls, msg: pb.WatchJobResponse) -> JobUpdate:
        return cls(msg.sequence, Job.from_proto(msg.job))


@dataclass(frozen=True, slots=True)
class Artifact:
    """A file a job stored, with a link for its owner that expires."""

    name: str
    size: int
    content_type: str
    sha256: str
    create_time: datetime | None
    url: str
    url_expire_time: datetime | None

    @classmethod
    def from_proto(cls, msg: job_pb2.Artifact) -> Artifact:
        return cls(
            name=msg.name,
            size=msg.size,
            content_type=msg.content_type,
            sha256=msg.sha256,
            create_time=_time(msg, "create_time"),
            url=msg.url,
            url_expire_time=_time(msg, "url_expire_time"),
        )


@dataclass(frozen=True, slots=True)
class JobResult:
    """A SUCCEEDED job, what its handler returned (None: nothing) and its files."""

    job: Job
    result: dict[str, Any] | None
    artifacts: list[Artifact]

    @classmethod
    def from_proto(cls, msg: pb.GetJobResultResponse) -> JobResult:
        return cls(
            job=Job.from_proto(msg.job),
            result=payload_from_struct(msg.result) if msg.HasField("result") else None,
            artifacts=[Artifact.from_proto(a) for a in msg.artifacts],
        )


@dataclass(frozen=True, slots=True)
class Attempt:
    """One recorded attempt of a job."""

    job_id: str
    attempt: int
    outcome: AttemptOutcome
    worker_id: str
    start_time: datetime | None
    finish_time: datetime | None
    error: str
    traceback: str

    @classmethod
    def from_proto(cls, msg: job_pb2.JobAttempt) -> Attempt:
        return cls(
            job_id=msg.job_id,
            attempt=msg.attempt,
            outcome=AttemptOutcome(msg.outcome),
            worker_id=msg.worker_id,
            start_time=_time(msg, "start_time"),
            finish_time=_time(msg, "finish_time"),
            error=msg.error,
            traceback=msg.traceback,
        )


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing and the token of the next ("" on the last page)."""

    items: list[T]
    next_page_token: str
