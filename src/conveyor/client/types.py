"""What the Python client returns: the API's messages as a Python caller wants to hold them.

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

A `Job` is a view of its message, read field by field when asked (so a bulk submit of
1,000 jobs does not pay to convert what nobody reads); the smaller answers (a result, an
attempt, an update) are frozen dataclasses made at once. Every class is made with
`from_proto`; none is sent back to the API (requests are made with
`conveyor.client.submit_request` and friends).

Why by hand rather than proto-plus (google-cloud-python's wrapper, which marshals
Timestamps and enums the same way): proto-plus wraps messages it defines itself, in Python,
not the ones `protos/` generates, and it reads a Struct's numbers as floats.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
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
    CONCURRENCY_KEY = job_pb2.BLOCKED_KIND_CONCURRENCY_KEY
    RATE_KEY = job_pb2.BLOCKED_KIND_RATE_KEY
    DEPENDENCIES = job_pb2.BLOCKED_KIND_DEPENDENCIES


class DependencyFailurePolicy(enum.IntEnum):
    """What a job does when one of its dependencies ends DEAD or CANCELLED: the proto's
    `DependencyFailurePolicy` numbers (`submit(..., dependency_failure_policy=...)`).
    UNSPECIFIED is CANCEL."""

    UNSPECIFIED = job_pb2.DEPENDENCY_FAILURE_POLICY_UNSPECIFIED
    CANCEL = job_pb2.DEPENDENCY_FAILURE_POLICY_CANCEL
    RUN_ANYWAY = job_pb2.DEPENDENCY_FAILURE_POLICY_RUN_ANYWAY


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
    concurrency_key: str = ""
    rate_key: str = ""
    dependencies_pending: int = 0
    dependencies_total: int = 0
    waiting_for: tuple[str, ...] = ()  # some of the pending dependencies (at most 10)

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
            concurrency_key=msg.concurrency_key,
            rate_key=msg.rate_key,
            dependencies_pending=msg.dependencies_pending,
            dependencies_total=msg.dependencies_total,
            waiting_for=tuple(msg.waiting_for),
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


class Job:
    """A job as the API answered it (see the module for how its fields read).

    A view of the message, not a copy: each field is read from `raw` when asked for, so
    making one costs a single object however big the job (a copy of every field cost 20 µs
    a job, a tenth of a submit's own CPU). The payload is converted once, on first read.
    Two jobs are equal when their messages are."""

    __slots__ = ("_payload", "raw")

    def __init__(self, raw: job_pb2.Job) -> None:
        self.raw = raw
        self._payload: dict[str, Any] | None = None

    @classmethod
    def from_proto(cls, msg: job_pb2.Job) -> Job:
        return cls(msg)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.raw == self.raw

    __hash__ = None  # type: ignore[assignment]  # as its message: it can change under you

    def __repr__(self) -> str:
        return (
            f"Job(id={self.id!r}, type={self.type!r}, queue={self.queue!r},"
            f" state={self.state.name}, attempt={self.attempt}, progress={self.progress})"
        )

    @property
    def id(self) -> str:
        return self.raw.id

    @property
    def owner(self) -> str:
        return self.raw.owner

    @property
    def type(self) -> str:
        return self.raw.type

    @property
    def queue(self) -> str:
        return self.raw.queue

    @property
    def state(self) -> JobState:
        return JobState(self.raw.state)

    @property
    def priority(self) -> int:
        return self.raw.priority

    @property
    def payload(self) -> dict[str, Any]:
        """The payload as the handler sees it: whole numbers are ints. A copy: changing it
        changes nothing on the server."""
        if self._payload is None:
            self._payload = payload_from_struct(self.raw.payload)
        return self._payload

    @property
    def labels(self) -> dict[str, str]:
        """What the job was tagged with at submit (a copy)."""
        return dict(self.raw.labels)

    @property
    def concurrency_key(self) -> str:
        """The key whose jobs share the queue's per-key cap ("" for none)."""
        return self.raw.concurrency_key

    @property
    def rate_key(self) -> str:
        """The key whose jobs share the queue's rate per key ("" for none)."""
        return self.raw.rate_key

    @property
    def depends_on(self) -> list[str]:
        """The jobs this one waits for (a copy; in-call references resolved to ids)."""
        return list(self.raw.depends_on)

    @property
    def dependency_failure_policy(self) -> DependencyFailurePolicy:
        """What a dependency that ends DEAD or CANCELLED does to this job."""
        return DependencyFailurePolicy(self.raw.dependency_failure_policy)

    @property
    def batch_id(self) -> str:
        """The batch the job belongs to, its callback included ("" for none)."""
        return self.raw.batch_id

    @property
    def attempt(self) -> int:
        """The attempt running or last run (0 before the first)."""
        return self.raw.attempt

    @property
    def max_attempts(self) -> int:
        return self.raw.max_attempts

    @property
    def progress(self) -> float:
        """0 to 100, as the handler last reported it."""
        return self.raw.progress

    @property
    def progress_message(self) -> str:
        return self.raw.progress_message

    @property
    def error(self) -> str:
        """The last attempt's error ("" if none failed)."""
        return self.raw.error

    @property
    def idempotency_key(self) -> str:
        return self.raw.idempotency_key

    @property
    def create_time(self) -> datetime:
        return _epoch_if_unset(_time(self.raw, "create_time"))

    @property
    def run_at(self) -> datetime:
        """When the job may first start (its create time unless delayed)."""
        return _epoch_if_unset(_time(self.raw, "run_at"))

    @property
    def start_time(self) -> datetime | None:
        """When its latest attempt started (None: not yet)."""
        return _time(self.raw, "start_time")

    @property
    def finish_time(self) -> datetime | None:
        """When it reached SUCCEEDED, DEAD or CANCELLED (None: it has not)."""
        return _time(self.raw, "finish_time")

    @property
    def timeout(self) -> timedelta | None:
        """How long one attempt may run."""
        return _duration(self.raw, "timeout")

    @property
    def retry(self) -> RetryPolicy | None:
        """The backoff between its attempts."""
        return RetryPolicy.from_proto(self.raw.retry) if self.raw.HasField("retry") else None

    @property
    def retention(self) -> timedelta | None:
        """How long it is kept once it has ended."""
        return _duration(self.raw, "retention")

    @property
    def expire_time(self) -> datetime | None:
        """When an ended job is forgotten (None: not ended)."""
        return _time(self.raw, "expire_time")

    @property
    def blocked_reason(self) -> str:
        """Why a waiting job is not running, in words ("" when it is not waiting)."""
        return self.raw.blocked_reason

    @property
    def blocked(self) -> Blocked | None:
        """`blocked_reason` as data."""
        return Blocked.from_proto(self.raw.blocked) if self.raw.HasField("blocked") else None


class RetriedJob(Job):
    """What `retry` answers: the replayed job (a `Job`), and with `include_dependents` the
    ids of the dependents its end had cancelled that wait for it again."""

    __slots__ = ("revived_dependents",)

    def __init__(self, raw: job_pb2.Job, revived_dependents: Iterable[str] = ()) -> None:
        super().__init__(raw)
        self.revived_dependents = list(revived_dependents)

    @classmethod
    def from_response(cls, msg: pb.RetryJobResponse) -> RetriedJob:
        return cls(msg.job, msg.revived_dependents)


@dataclass(frozen=True, slots=True)
class Batch:
    """The jobs of one `submit_batch` and its callback job, with how many of them ended
    how (`get_batch` reads it again); the callback is not counted."""

    id: str
    owner: str
    job_count: int
    succeeded: int
    dead: int
    cancelled: int
    unfinished: int
    callback_job_id: str
    create_time: datetime | None
    raw: job_pb2.Batch = field(repr=False, compare=False)

    @property
    def ended(self) -> bool:
        """Every job of the batch has ended (its callback then runs, or has run)."""
        return self.unfinished == 0

    @classmethod
    def from_proto(cls, msg: job_pb2.Batch) -> Batch:
        return cls(
            id=msg.id,
            owner=msg.owner,
            job_count=msg.job_count,
            succeeded=msg.succeeded,
            dead=msg.dead,
            cancelled=msg.cancelled,
            unfinished=msg.unfinished,
            callback_job_id=msg.callback_job_id,
            create_time=_time(msg, "create_time"),
            raw=msg,
        )


@dataclass(frozen=True, slots=True)
class SubmittedBatch:
    """What `submit_batch` answers: the jobs in request order and the batch they make
    (its callback job is `batch.callback_job_id`)."""

    jobs: list[Job]
    batch: Batch


@dataclass(frozen=True, slots=True)
class JobUpdate:
    """One WatchJob answer: the job after its change number `sequence` (resume a dropped
    watch with `watch(job_id, after_sequence=` the last sequence seen `)`)."""

    sequence: int
    job: Job
    raw: pb.WatchJobResponse = field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, msg: pb.WatchJobResponse) -> JobUpdate:
        return cls(msg.sequence, Job(msg.job), msg)


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
    raw: job_pb2.Artifact = field(repr=False, compare=False)

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
            raw=msg,
        )


@dataclass(frozen=True, slots=True)
class JobResult:
    """A SUCCEEDED job, what its handler returned (None: nothing) and its files."""

    job: Job
    result: dict[str, Any] | None
    artifacts: list[Artifact]
    raw: pb.GetJobResultResponse = field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, msg: pb.GetJobResultResponse) -> JobResult:
        return cls(
            job=Job(msg.job),
            result=payload_from_struct(msg.result) if msg.HasField("result") else None,
            artifacts=[Artifact.from_proto(a) for a in msg.artifacts],
            raw=msg,
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
    raw: job_pb2.JobAttempt = field(repr=False, compare=False)

    @property
    def duration(self) -> timedelta | None:
        """How long it ran (None if it has no start or end recorded)."""
        if self.start_time is None or self.finish_time is None:
            return None
        return self.finish_time - self.start_time

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
            raw=msg,
        )


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing (iterate it, or read `items`) and the token that asks for the
    next ("" on the last page)."""

    items: list[T]
    next_page_token: str

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class BulkAction(enum.IntEnum):
    """What a bulk operation does to each job: the proto's `BulkAction` numbers."""

    UNSPECIFIED = pb.BULK_ACTION_UNSPECIFIED
    RETRY = pb.BULK_ACTION_RETRY
    CANCEL = pb.BULK_ACTION_CANCEL
    DELETE = pb.BULK_ACTION_DELETE


class BulkOperationState(enum.IntEnum):
    """A bulk operation's state: the proto's `BulkOperationState` numbers (UNSPECIFIED: a
    dry run's answer, which started nothing)."""

    UNSPECIFIED = pb.BULK_OPERATION_STATE_UNSPECIFIED
    RUNNING = pb.BULK_OPERATION_STATE_RUNNING
    SUCCEEDED = pb.BULK_OPERATION_STATE_SUCCEEDED
    FAILED = pb.BULK_OPERATION_STATE_FAILED
    CANCELLED = pb.BULK_OPERATION_STATE_CANCELLED


class BulkOperation:
    """A RetryJobs, CancelJobs or DeleteJobs operation (`retry_jobs`, `cancel_jobs`,
    `delete_jobs`, `get_bulk_operation`), a view of the message as `Job` is.

    A dry run (no `force`) starts nothing: its answer has no `id` (`dry_run` is true), and
    `matched` is the number of jobs the action would touch now."""

    __slots__ = ("raw",)

    def __init__(self, raw: pb.BulkOperation) -> None:
        self.raw = raw

    def __repr__(self) -> str:
        return (
            f"BulkOperation(id={self.id!r}, action={self.action.name}, state={self.state.name}, "
            f"matched={self.matched}, done={self.done}, skipped={self.skipped}, "
            f"failed={self.failed})"
        )

    @property
    def id(self) -> str:
        return self.raw.id

    @property
    def dry_run(self) -> bool:
        return not self.raw.id

    @property
    def owner(self) -> str:
        return self.raw.owner

    @property
    def action(self) -> BulkAction:
        return BulkAction(self.raw.action)

    @property
    def filter(self) -> str:
        return self.raw.filter

    @property
    def state(self) -> BulkOperationState:
        return BulkOperationState(self.raw.state)

    @property
    def ended(self) -> bool:
        """It will change no more (or, a dry run, never ran)."""
        return self.state is not BulkOperationState.RUNNING

    @property
    def per_second(self) -> int:
        return self.raw.per_second

    @property
    def max_attempts(self) -> int:
        return self.raw.max_attempts

    @property
    def matched(self) -> int:
        """Jobs the filter matched when it started (a dry run: matches now)."""
        return self.raw.matched

    @property
    def done(self) -> int:
        return self.raw.done

    @property
    def skipped(self) -> int:
        """Jobs that no longer qualified when their turn came (left alone)."""
        return self.raw.skipped

    @property
    def failed(self) -> int:
        return self.raw.failed

    @property
    def error(self) -> str:
        return self.raw.error

    @property
    def create_time(self) -> datetime | None:
        return _time(self.raw, "create_time")

    @property
    def finish_time(self) -> datetime | None:
        return _time(self.raw, "finish_time")
