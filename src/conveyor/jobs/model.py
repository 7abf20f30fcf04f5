"""The job model: states, the validated submit spec, and conversion to and from the wire.

One `Job` travels through three representations and this module owns all of them:
the protobuf message (`to_proto`), the Redis hot-state hash and event JSON (`to_hot`,
`from_hot`), and the database row (in `conveyor.db`, which calls `Job(**row)`).
Times are integer epoch milliseconds (UTC) everywhere, so no representation has to guess a
time zone and Lua scripts can compare them with the Redis clock.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import uuid_utils
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from conveyor import compact_json
from conveyor.errors import FieldViolation, InvalidArgument
from conveyor.jobs.dependencies import dependency_violations
from conveyor.jobs.labels import check_labels
from conveyor.jobs.payload import HasNul, NotFinite, payload_from_struct
from conveyor.jobs.retry import RetryOverrides, RetryPolicy
from conveyor.jobs.shards import placement
from conveyor.jobs.unique import key_windows
from conveyor.v1 import job_pb2, job_service_pb2

if TYPE_CHECKING:  # conveyor.jobs.blocked imports this module
    from conveyor.jobs.blocked import Blocked

_T = TypeVar("_T")

DEFAULT_QUEUE = "default"
DEFAULT_PRIORITY = 5
MAX_PRIORITY = 9
MAX_ATTEMPTS_LIMIT = 100
MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000
MAX_DELAY_MS = 366 * 24 * 3600 * 1000
MAX_RETENTION_MS = 10 * 366 * 24 * 3600 * 1000
MAX_IDEMPOTENCY_KEY = 256
MAX_CONCURRENCY_KEY = 256
MAX_BULK = 1000

_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")
# Queue names go inside Redis hash tags, so braces and other punctuation are refused.
_QUEUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


class JobState(enum.IntEnum):
    """Mirror of the proto enum `conveyor.v1.JobState`, with the same numbers."""

    UNSPECIFIED = 0
    SCHEDULED = 1
    QUEUED = 2
    RUNNING = 3
    SUCCEEDED = 4
    RETRYING = 5
    DEAD = 6
    CANCELLED = 7

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def label(self) -> str:
        return job_pb2.JobState.Name(self.value)


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED})
# Each state's number as the hot state's text.
# (A tuple indexed by the state: an enum member hashes in Python, an index does not.)
_STATE_TEXT = tuple(str(number) for number in range(max(JobState) + 1))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def format_time(ms: int) -> str:
    """An epoch-millisecond time as RFC 3339 UTC, for messages people read."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000))
    return f"{stamp}.{ms % 1000:03d}Z"


def new_job_id() -> str:
    """A UUIDv7: time-ordered (index friendly) with 74 random bits (unguessable)."""
    return str(uuid_utils.uuid7())


_NAME_CACHED = 256


def valid_queue(name: str) -> bool:
    return len(name) <= _NAME_CACHED and _matches_queue(name)


def valid_type(name: str) -> bool:
    return len(name) <= _NAME_CACHED and _matches_type(name)


# Names are few and each is checked once per request (a bulk of one type and queue checks
# the same two a thousand times): the answers are remembered. Only names no longer than
# `_NAME_CACHED` reach these (longer ones never match: the patterns allow 128 characters),
# so the caches hold at most 1024 short strings each, whatever callers send.
@functools.lru_cache(maxsize=1024)
def _matches_queue(name: str) -> bool:
    return bool(_QUEUE_RE.match(name))


@functools.lru_cache(maxsize=1024)
def _matches_type(name: str) -> bool:
    return bool(_TYPE_RE.match(name))


def valid_job_id(value: str) -> bool:
    try:
        uuid_utils.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


@dataclass(frozen=True, slots=True)
class JobDefaults:
    """What a job gets for each field its request leaves unset: the job type's
    registration laid over the server's settings (see `conveyor.api.jobs`)."""

    max_attempts: int
    timeout_ms: int
    retry: RetryPolicy
    # None: kept forever (see conveyor.jobs.retention).
    retention_ms: int | None = None


FALLBACK_RETRY = RetryPolicy(initial_ms=1000, max_ms=300_000)
NO_OVERRIDES = RetryOverrides()


# The fields of a job's hot state that change while it waits and runs: the database learns
# them only when an attempt ends (see `Job.take_live`).
LIVE_FIELDS = ("state", "attempt", "progress", "progress_message", "start_time", "error")


@dataclass(slots=True)
class Job:
    """A job as it stands. Field names match the proto and the database columns."""

    id: str
    owner: str
    type: str
    queue: str
    state: JobState
    priority: int
    payload: dict[str, Any]
    max_attempts: int
    timeout_ms: int
    create_time: int
    run_at: int
    attempt: int = 0
    progress: float = 0.0
    progress_message: str = ""
    error: str = ""
    idempotency_key: str | None = None
    start_time: int | None = None
    finish_time: int | None = None
    request_hash: str = ""
    retry: RetryPolicy = FALLBACK_RETRY
    # Bumped whenever the job is handed out again while an older attempt may still run
    # (a reclaimed lease, a replay): the database refuses writes that carry an older fence.
    fence: int = 0
    # The API key that submitted it, and that key's cap on running jobs per queue then.
    key_id: str = ""
    key_cap: int = 0
    # How long the job is kept once finished (None: forever); resolved at submit.
    retention_ms: int | None = None
    # The W3C traceparent of the call that submitted it ("" when not tracing): its
    # attempts' spans join that trace (see conveyor.telemetry.tracing).
    trace_parent: str = ""
    # Which of its queue's shards holds it in Redis (0: the queue itself); chosen at
    # submit and never changed (see conveyor.jobs.shards).
    shard: int = 0
    # What the client tagged it with to find it again (conveyor.jobs.labels); never changed.
    labels: dict[str, str] = field(default_factory=dict)
    # Unique and debounced jobs (conveyor.jobs.unique): until when a unique job holds its
    # idempotency key (None: as long as it lives), and a debounced job's debounce (None:
    # not one). Kept in the database only; Redis never needs them.
    key_until: int | None = None
    debounce_ms: int | None = None
    # The client's key for jobs that share a concurrency cap in their queue
    # (QueueLimits.max_running_per_key; "" for none); never changed. It also picks the
    # job's shard, so that one key's jobs are all in one (see conveyor.jobs.shards).
    concurrency_key: str = ""
    # The client's key for jobs that share a start rate in their queue
    # (QueueLimits.rate_per_key_jobs per rate_per_key_interval; "" for none); never changed.
    # It picks the job's shard when the job has no concurrency key.
    rate_key: str = ""
    # Dependencies (conveyor.jobs.dependencies): the jobs it waits for, what one that
    # fails does to it (Policy), and, in the database only, how many have not ended yet
    # (while any has not, the job is SCHEDULED and kept out of Redis). Never changed but
    # the count.
    depends_on: list[str] = field(default_factory=list)
    dependency_policy: int = 0
    dependencies_pending: int = 0
    # The batch it belongs to (SubmitJobsRequest.on_complete), "" for none.
    batch_id: str = ""
    # Why a waiting job is not running (computed on read, never stored): the proto's
    # `blocked` and `blocked_reason` both (see conveyor.jobs.blocked).
    blocked: Blocked | None = None

    @property
    def placement(self) -> str:
        """The physical queue whose Redis keys hold the job: its queue, or one of the
        queue's shards (see conveyor.jobs.shards)."""
        return placement(self.queue, self.shard)

    # -- wire ---------------------------------------------------------------------------
    def to_proto(self, *, payload: bool = True) -> job_pb2.Job:
        """The job as the API shows it; without its payload for `payload=False` (the
        basic view of a bulk submit, whose caller sent the payloads).

        A job as submitted (no attempt yet, nothing to say why it waits, no payload to
        show) is copied from a template of its kind (`_fresh_proto`); any other is built
        field by field (`_built_proto`)."""
        fresh = (
            self.attempt == 0
            and self.blocked is None
            and self.start_time is None
            and self.finish_time is None
            and not self.progress
            and not self.progress_message
            and not self.error
            and not (payload and self.payload)
            and not self.depends_on
            and not self.batch_id
        )
        return _fresh_proto(self) if fresh else self._built_proto(payload)

    def _built_proto(self, payload: bool) -> job_pb2.Job:
        """Times are set field by field rather than with `FromMilliseconds` (a Python call
        each, a third of the cost in a bulk submit's answer), and the retry policy's
        message is built once per distinct policy (`_retry_proto`)."""
        msg = job_pb2.Job(
            id=self.id,
            owner=self.owner,
            type=self.type,
            queue=self.queue,
            state=self.state,  # type: ignore[arg-type]
            priority=self.priority,
            max_attempts=self.max_attempts,
            retry=_retry_proto(self.retry),
        )
        # Fields a new job leaves at their defaults are set only when they hold something.
        if self.attempt:
            msg.attempt = self.attempt
        if self.progress:
            msg.progress = self.progress
        if self.progress_message:
            msg.progress_message = self.progress_message
        if self.error:
            msg.error = self.error
        if self.idempotency_key:
            msg.idempotency_key = self.idempotency_key
        if self.blocked is not None:
            msg.blocked_reason = self.blocked.text
            msg.blocked.CopyFrom(self.blocked.to_proto())
        if payload and self.payload:
            msg.payload.update(self.payload)
        if self.labels:
            msg.labels.update(self.labels)
        if self.concurrency_key:
            msg.concurrency_key = self.concurrency_key
        if self.rate_key:
            msg.rate_key = self.rate_key
        if self.depends_on:
            msg.depends_on.extend(self.depends_on)
        if self.dependency_policy:
            msg.dependency_failure_policy = self.dependency_policy  # type: ignore[assignment]
        if self.batch_id:
            msg.batch_id = self.batch_id
        _set_time(msg.run_at, self.run_at)
        _set_time(msg.create_time, self.create_time)
        if self.start_time is not None:
            _set_time(msg.start_time, self.start_time)
        if self.finish_time is not None:
            _set_time(msg.finish_time, self.finish_time)
        _set_duration(msg.timeout, self.timeout_ms)
        if self.retention_ms is not None:
            _set_duration(msg.retention, self.retention_ms)
            if self.finish_time is not None and self.state.terminal:
                _set_time(msg.expire_time, self.finish_time + self.retention_ms)
        return msg

    # -- Redis hot state ------------------------------------------------------------------
    def to_hot(self) -> dict[str, str]:
        """The Redis hash of a job (see queue/scripts/*.lua for who changes which field),
        every value a string, as Lua scripts and HGETALL see them."""
        hot = {
            "id": self.id,
            "owner": self.owner,
            "type": self.type,
            "queue": self.queue,
            "state": _STATE_TEXT[self.state],
            "priority": str(self.priority),
            "payload": compact_json.dumps(self.payload) if self.payload else "{}",
            "max_attempts": str(self.max_attempts),
            "timeout_ms": str(self.timeout_ms),
            "create_time": str(self.create_time),
            "run_at": str(self.run_at),
            "attempt": str(self.attempt),
            "progress": str(self.progress),
            "progress_message": self.progress_message,
            "error": self.error,
            "retry": retry_text(self.retry),
            "fence": str(self.fence),
            "key_id": self.key_id,
            "key_cap": str(self.key_cap),
        }
        if self.idempotency_key is not None:
            hot["idempotency_key"] = self.idempotency_key
        if self.start_time is not None:
            hot["start_time"] = str(self.start_time)
        if self.finish_time is not None:
            hot["finish_time"] = str(self.finish_time)
        if self.retention_ms is not None:
            hot["retention_ms"] = str(self.retention_ms)
        if self.trace_parent:
            hot["trace_parent"] = self.trace_parent
        if self.shard:
            hot["shard"] = str(self.shard)
        if self.labels:
            hot["labels"] = compact_json.dumps(self.labels)
        if self.concurrency_key:
            hot["concurrency_key"] = self.concurrency_key
        if self.rate_key:
            hot["rate_key"] = self.rate_key
        if self.depends_on:
            hot["depends_on"] = compact_json.dumps(self.depends_on)
        if self.dependency_policy:
            hot["dependency_policy"] = str(self.dependency_policy)
        if self.batch_id:
            hot["batch_id"] = self.batch_id
        return hot

    def take_live(self, live: Mapping[str, str]) -> None:
        """Take over the live fields of the job's hot state (`LIVE_FIELDS`, as
        `RedisQueue.live_fields` reads them; absent ones left as they are): the row says
        QUEUED and 0 % of a job that runs, until its attempt ends."""
        if "state" in live:
            self.state = JobState(int(live["state"]))
        if "attempt" in live:
            self.attempt = int(live["attempt"])
        if "progress" in live:
            self.progress = float(live["progress"])
        if "progress_message" in live:
            self.progress_message = live["progress_message"]
        if "start_time" in live:
            self.start_time = int(live["start_time"])
        if "error" in live:
            self.error = live["error"]

    @classmethod
    def from_hot(cls, hot: dict[str, str]) -> Job:
        """Decode a Redis hash (or an event's JSON object) back into a Job."""
        payload = hot.get("payload")
        retry = hot.get("retry")
        return cls(
            id=hot["id"],
            owner=hot["owner"],
            type=hot["type"],
            queue=hot["queue"],
            state=JobState(int(hot["state"])),
            priority=int(hot["priority"]),
            payload=compact_json.loads(payload) if payload else {},
            max_attempts=int(hot["max_attempts"]),
            timeout_ms=int(hot["timeout_ms"]),
            create_time=int(hot["create_time"]),
            run_at=int(hot["run_at"]),
            attempt=int(hot.get("attempt", 0)),
            progress=float(hot.get("progress", 0.0)),
            progress_message=str(hot.get("progress_message", "")),
            error=str(hot.get("error", "")),
            idempotency_key=hot.get("idempotency_key") or None,
            start_time=_opt_int(hot.get("start_time")),
            finish_time=_opt_int(hot.get("finish_time")),
            retry=_policy(retry) if retry else FALLBACK_RETRY,
            fence=int(hot.get("fence", 0)),
            key_id=str(hot.get("key_id", "")),
            key_cap=int(hot.get("key_cap", 0)),
            retention_ms=_opt_int(hot.get("retention_ms")),
            trace_parent=str(hot.get("trace_parent", "")),
            shard=int(hot.get("shard", 0)),
            labels=_labels(hot.get("labels")),
            concurrency_key=str(hot.get("concurrency_key", "")),
            rate_key=str(hot.get("rate_key", "")),
            depends_on=_id_list(hot.get("depends_on")),
            dependency_policy=int(hot.get("dependency_policy", 0)),
            batch_id=str(hot.get("batch_id", "")),
        )


# Templates of jobs as submitted, by everything their message holds but the id, the
# idempotency key and the two times (see `_fresh_proto`).
_FRESH: dict[tuple[Any, ...], job_pb2.Job] = {}
_FRESH_SIZE = 1024


def _fresh_proto(job: Job) -> job_pb2.Job:
    """The message of a job as submitted, copied from a template of its kind and given its
    id, key and times: a third of the cost of building it (the jobs of a bulk, and of one
    owner and type, differ only there). Templates are never changed once made."""
    kind = (
        job.owner, job.type, job.queue, job.state, job.priority, job.max_attempts,
        retry_text(job.retry), job.timeout_ms, job.retention_ms,
    )  # fmt: skip
    template = _FRESH.get(kind)
    if template is None:
        template = job._built_proto(False)
        for name in (
            "id",
            "idempotency_key",
            "run_at",
            "create_time",
            "labels",
            "concurrency_key",
            "rate_key",
        ):
            template.ClearField(name)
        if len(_FRESH) >= _FRESH_SIZE:  # kinds are few; never grow without bound
            _FRESH.clear()
        _FRESH[kind] = template
    msg = job_pb2.Job()
    msg.CopyFrom(template)
    msg.id = job.id
    if job.idempotency_key:
        msg.idempotency_key = job.idempotency_key
    if job.labels:
        msg.labels.update(job.labels)
    if job.concurrency_key:
        msg.concurrency_key = job.concurrency_key
    if job.rate_key:
        msg.rate_key = job.rate_key
    _set_time(msg.run_at, job.run_at)
    _set_time(msg.create_time, job.create_time)
    return msg


def _set_time(stamp: timestamp_pb2.Timestamp, ms: int) -> None:
    """`stamp.FromMilliseconds(ms)`, without its Python call overhead (the same fields)."""
    stamp.seconds, rest = divmod(ms, 1000)
    stamp.nanos = rest * 1_000_000


def _set_duration(duration: duration_pb2.Duration, ms: int) -> None:
    """`duration.FromMilliseconds(ms)`: the same fields (nanos take the sign of seconds)."""
    seconds, rest = divmod(ms, 1000)
    if seconds < 0 and rest:
        seconds, rest = seconds + 1, rest - 1000
    duration.seconds, duration.nanos = seconds, rest * 1_000_000


class _PerPolicy(Generic[_T]):
    """What `make` gives for a retry policy, remembered per policy object.

    `functools.lru_cache` hashes its argument on every call, and a frozen dataclass hashes
    in Python (a tuple of its fields): a microsecond, four times per job of a bulk submit.
    The jobs of a bulk share one policy object (`_resolved_retry` hands out one per
    distinct policy), so looking it up by identity costs a dict lookup by int. An entry
    keeps its policy alive, so its id cannot be reused while it is remembered; a policy
    equal to a remembered one but another object is simply made again."""

    def __init__(self, make: Callable[[RetryPolicy], _T], size: int = 256) -> None:
        self._make = make
        self._size = size
        self._seen: dict[int, tuple[RetryPolicy, _T]] = {}

    def __call__(self, policy: RetryPolicy) -> _T:
        found = self._seen.get(id(policy))
        if found is not None and found[0] is policy:
            return found[1]
        value = self._make(policy)
        if len(self._seen) >= self._size:  # policies are few; never grow without bound
            self._seen.clear()
        self._seen[id(policy)] = (policy, value)
        return value


def _encode_policy(policy: RetryPolicy) -> str:
    return compact_json.dumps(policy.to_doc())


# A policy's JSON as the hot state and the database keep it (`RetryPolicy.to_doc`).
retry_text = _PerPolicy(_encode_policy)
# A policy's message; callers only copy it (`job_pb2.Job(retry=…)` copies), never change it.
_retry_proto = _PerPolicy(RetryPolicy.to_proto)
# A policy under no overrides (the usual request): itself, normalised (see `_resolved_retry`).
_unchanged = _PerPolicy(NO_OVERRIDES.over)


def _resolved_retry(overrides: RetryOverrides, base: RetryPolicy) -> RetryPolicy:
    """`overrides.over(base)`, one policy object per distinct result: requests rarely set
    a policy, so nearly every job of a type resolves its type's; equal inputs give the
    same object, which `_PerPolicy` then finds by identity."""
    if overrides is NO_OVERRIDES:
        return _unchanged(base)
    return _resolved_by_value(overrides, base)


@functools.lru_cache(maxsize=256)
def _resolved_by_value(overrides: RetryOverrides, base: RetryPolicy) -> RetryPolicy:
    return overrides.over(base)


@functools.lru_cache(maxsize=256)
def _policy(doc: str) -> RetryPolicy:
    """Jobs of a type share a policy: decode each distinct one once."""
    return RetryPolicy.from_doc(compact_json.loads(doc))


def _id_list(text: str | None) -> list[str]:
    """A job's dependencies as its hash keeps them (JSON; absent when it has none)."""
    return list(compact_json.loads(text)) if text else []


def _labels(text: str | None) -> dict[str, str]:
    """A job's labels as its hash keeps them (JSON; absent when it has none)."""
    return compact_json.loads(text) if text else {}


def _opt_int(value: str | int | None) -> int | None:
    return None if value is None or value == "" else int(value)


# The request fingerprint's text is `json.dumps(doc, sort_keys=True, separators=(",", ":"))`,
# as it always was, so that a key reused across versions compares equal with the hash an
# older version stored. `json.dumps` builds an encoder, and the encoder a C encoder, on every
# call (half the cost of a fingerprint): both are made once here. The C encoder is the one
# `JSONEncoder.iterencode` itself makes for a one-shot encoding, with these options and no
# circular-reference check (a request's document cannot refer to itself).
_HASH_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
_C_HASH_ENCODER = (
    c_make_encoder(
        None,  # no markers: no circular check
        _HASH_ENCODER.default,
        encode_basestring_ascii,
        None,  # indent
        ":",
        ",",
        True,  # sort_keys
        False,  # skipkeys
        True,  # allow_nan
    )
    if c_make_encoder is not None
    else None
)


def fingerprint_text(doc: Any) -> str:
    """`json.dumps(doc, sort_keys=True, separators=(",", ":"))`, made faster (see above)."""
    if _C_HASH_ENCODER is None:  # an interpreter without json's C accelerator
        return _HASH_ENCODER.encode(doc)
    return "".join(_C_HASH_ENCODER(doc, 0))


@dataclass(slots=True)
class JobSpec:
    """A validated submit request: everything the client chose, nothing the server assigns.

    Not frozen, though nothing changes a spec once made: a frozen dataclass's `__init__`
    sets each field through `object.__setattr__`, three times the cost, paid by each job
    of a bulk submit (issue 21)."""

    type: str
    payload: dict[str, Any] = field(default_factory=dict)
    queue: str = DEFAULT_QUEUE
    priority: int = DEFAULT_PRIORITY
    idempotency_key: str | None = None
    run_at: int | None = None
    delay_ms: int = 0  # run_at = acceptance + delay (exclusive with run_at)
    max_attempts: int = 0
    timeout_ms: int = 0
    retry: RetryOverrides = NO_OVERRIDES
    retention_ms: int = 0  # 0: the type's or the server's
    labels: dict[str, str] = field(default_factory=dict)
    unique_for_ms: int = 0  # see conveyor.jobs.unique (exclusive with debounce_ms)
    debounce_ms: int = 0  # run_at = the last submit + debounce (exclusive with run_at, delay)
    concurrency_key: str = ""
    rate_key: str = ""
    # conveyor.jobs.dependencies: ids, indexes of earlier requests of the same SubmitJobs
    # call (resolved to ids by the API), and the DependencyFailurePolicy.
    depends_on: tuple[str, ...] = ()
    depends_on_requests: tuple[int, ...] = ()
    dependency_policy: int = 0

    def request_hash(self) -> str:
        """Fingerprint of the request, compared when an idempotency key is reused."""
        doc = [
            self.type,
            self.payload,
            self.queue,
            self.priority,
            self.run_at,
            self.max_attempts,
            *([self.delay_ms] if self.delay_ms else []),  # hashes of undelayed jobs unchanged
            *([["retention", self.retention_ms]] if self.retention_ms else []),
            *([["labels", self.labels]] if self.labels else []),  # unlabelled: unchanged
            *([["unique", self.unique_for_ms, self.debounce_ms]] if self.keyed else []),
            *([["concurrency_key", self.concurrency_key]] if self.concurrency_key else []),
            *([["rate_key", self.rate_key]] if self.rate_key else []),
            *([["depends_on", self.depends_on_doc()]] if self.has_dependencies else []),
            self.timeout_ms,
            [self.retry.initial_ms, self.retry.max_ms, self.retry.multiplier, self.retry.jitter],
        ]
        return hashlib.sha256(fingerprint_text(doc).encode()).hexdigest()

    @property
    def has_dependencies(self) -> bool:
        """Whether the job waits for others: such a submit takes its own path
        (conveyor.db.dependencies), not the group-committed one."""
        return bool(self.depends_on or self.depends_on_requests)

    def depends_on_doc(self) -> list[Any]:
        """The dependencies as the request fingerprint holds them."""
        return [list(self.depends_on), list(self.depends_on_requests), self.dependency_policy]

    @property
    def keyed(self) -> bool:
        """Whether the key is unique for a while or debounced (conveyor.jobs.unique): such
        a submit takes its own path, not the group-committed one."""
        return bool(self.unique_for_ms or self.debounce_ms)

    def new_job(self, owner: str, *, defaults: JobDefaults, now: int) -> Job:
        """The job this spec makes for `owner`, QUEUED or SCHEDULED by its run_at."""
        run_at = max(self.run_at or now + self.delay_ms + self.debounce_ms, now)
        return Job(
            id=new_job_id(),
            owner=owner,
            type=self.type,
            queue=self.queue,
            state=JobState.SCHEDULED if run_at > now else JobState.QUEUED,
            priority=self.priority,
            payload=self.payload,
            max_attempts=self.max_attempts or defaults.max_attempts,
            timeout_ms=self.timeout_ms or defaults.timeout_ms,
            create_time=now,
            run_at=run_at,
            idempotency_key=self.idempotency_key,
            # Only compared when a key is reused, so only computed when there is a key.
            request_hash=self.request_hash() if self.idempotency_key else "",
            retry=_resolved_retry(self.retry, defaults.retry),
            retention_ms=self.retention_ms or defaults.retention_ms,
            labels=self.labels,
            key_until=now + self.unique_for_ms if self.unique_for_ms else None,
            debounce_ms=self.debounce_ms or None,
            concurrency_key=self.concurrency_key,
            rate_key=self.rate_key,
            depends_on=list(self.depends_on),
            dependency_policy=self.dependency_policy,
        )


def spec_from_proto(
    req: job_service_pb2.SubmitJobRequest, *, max_payload_bytes: int, prefix: str = ""
) -> JobSpec:
    """Validate a SubmitJobRequest; every problem is reported at once as a field violation.

    Each field is read once, and the fields a request seldom sets are looked at only when
    set (a bulk submit validates a thousand requests per call)."""
    bad: list[FieldViolation] = []

    def violation(name: str, why: str) -> None:
        bad.append(FieldViolation(prefix + name, why))

    has = req.HasField
    job_type = req.type
    if not job_type:
        violation("type", "required")
    elif not valid_type(job_type):
        violation("type", "must match [A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
    queue = req.queue or DEFAULT_QUEUE
    if not valid_queue(queue):
        violation("queue", "must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
    priority = req.priority if has("priority") else DEFAULT_PRIORITY
    if not 0 <= priority <= MAX_PRIORITY:
        violation("priority", f"must be between 0 and {MAX_PRIORITY}")
    key = req.idempotency_key or None
    if key is not None and (len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable()):
        violation("idempotency_key", f"must be printable, at most {MAX_IDEMPOTENCY_KEY} characters")
    max_attempts = req.max_attempts
    if not 0 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
        violation("max_attempts", f"must be between 0 (default) and {MAX_ATTEMPTS_LIMIT}")
    timeout_ms: int | None = 0
    if has("timeout"):
        timeout_ms = duration_ms(req.timeout)
        if timeout_ms is None or not 0 < timeout_ms <= MAX_TIMEOUT_MS:
            violation("timeout", "must be a valid duration, positive and at most 7 days")
    run_at = None
    has_run_at = has("run_at")
    if has_run_at:
        run_at = timestamp_ms(req.run_at)
        if run_at is None or run_at > now_ms() + MAX_DELAY_MS:
            violation("run_at", "must be a valid time within a year")
    delay_ms: int | None = 0
    if has("delay"):
        delay_ms = duration_ms(req.delay)
        if delay_ms is None or not 0 <= delay_ms <= MAX_DELAY_MS:
            violation("delay", "must be a valid duration, not negative and at most a year")
        elif delay_ms and has_run_at:
            violation("delay", "set run_at or delay, not both")
    retention_ms: int | None = 0
    if has("retention"):
        retention_ms = duration_ms(req.retention)
        if retention_ms is None or not 0 <= retention_ms <= MAX_RETENTION_MS:
            violation("retention", "must be a valid duration, not negative and at most 10 years")
    payload = _payload(req.payload, max_payload_bytes, violation) if has("payload") else {}
    retry = NO_OVERRIDES
    if has("retry"):
        try:
            retry = RetryOverrides.from_proto(req.retry)
        except ValueError:  # a Duration with nanos out of range
            violation("retry", "holds an invalid duration")
        bad += retry.violations(prefix + "retry.")
    labels = dict(req.labels) if req.labels else {}
    if labels:
        bad += check_labels(labels, prefix + "labels")
    unique_for_ms = debounce_ms = 0
    if has("unique_for") or has("debounce"):
        unique_for_ms, debounce_ms, keyed_bad = key_windows(
            (has("unique_for"), duration_ms(req.unique_for)),
            (has("debounce"), duration_ms(req.debounce)),
            has_key=key is not None,
            fixed_time=has_run_at or bool(delay_ms),
        )
        bad += [FieldViolation(prefix + v.field, v.description) for v in keyed_bad]
    concurrency_key = req.concurrency_key
    if concurrency_key and not valid_concurrency_key(concurrency_key):
        violation("concurrency_key", f"must be printable, at most {MAX_CONCURRENCY_KEY} characters")
    rate_key = req.rate_key
    if rate_key and not valid_concurrency_key(rate_key):
        violation("rate_key", f"must be printable, at most {MAX_CONCURRENCY_KEY} characters")
    depends_on: tuple[str, ...] = ()
    depends_on_requests: tuple[int, ...] = ()
    if req.depends_on or req.depends_on_requests or req.dependency_failure_policy:
        depends_on, depends_on_requests = tuple(req.depends_on), tuple(req.depends_on_requests)
        for name, why in dependency_violations(
            depends_on,
            depends_on_requests,
            req.dependency_failure_policy,
            keyed=bool(unique_for_ms or debounce_ms),
            valid_id=valid_job_id,
        ):
            violation(name, why)
    if bad:
        raise InvalidArgument(bad)
    return JobSpec(
        type=job_type,
        payload=payload,
        queue=queue,
        priority=priority,
        idempotency_key=key,
        run_at=run_at,
        delay_ms=delay_ms or 0,
        max_attempts=max_attempts,
        timeout_ms=timeout_ms or 0,
        retry=retry,
        retention_ms=retention_ms or 0,
        labels=labels,
        unique_for_ms=unique_for_ms,
        debounce_ms=debounce_ms,
        concurrency_key=concurrency_key,
        rate_key=rate_key,
        depends_on=depends_on,
        depends_on_requests=depends_on_requests,
        dependency_policy=int(req.dependency_failure_policy),
    )


def valid_concurrency_key(key: str) -> bool:
    """A concurrency key (or rate key) as SubmitJobRequest takes it: printable, at most
    MAX_CONCURRENCY_KEY characters (it becomes part of a Redis key name)."""
    return len(key) <= MAX_CONCURRENCY_KEY and key.isprintable()


def _payload(struct: struct_pb2.Struct, limit: int, violation: Any) -> dict[str, Any]:
    """The payload as a dict (`conveyor.jobs.payload`), or a violation: too large, a number
    JSON cannot hold (NaN, infinity), or a NUL character (PostgreSQL's jsonb cannot store
    one)."""
    size = struct.ByteSize()
    if size > limit:
        violation("payload", f"is {size} bytes; the limit is {limit}")
        return {}
    try:
        return payload_from_struct(struct)
    except NotFinite:
        violation("payload", "numbers must be finite (no NaN or infinity)")
    except HasNul:
        violation("payload", "must not contain NUL characters")
    return {}


def duration_ms(d: duration_pb2.Duration) -> int | None:
    """The duration in ms, or None if protobuf itself holds it invalid (nanos out of range
    or of the other sign than seconds, beyond ±10,000 years)."""
    try:
        d.ToJsonString()  # the one public check of a Duration's validity
        return int(d.ToMilliseconds())
    except ValueError:
        return None


def timestamp_ms(t: timestamp_pb2.Timestamp) -> int | None:
    """The time in epoch ms, or None if protobuf itself holds it invalid (nanos out of
    range, outside years 1-9999)."""
    try:
        t.ToJsonString()  # the one public check of a Timestamp's validity
        return int(t.ToMilliseconds())
    except (ValueError, OverflowError):
        return None
