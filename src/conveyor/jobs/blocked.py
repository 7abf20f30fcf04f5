"""Why a waiting job is not running: one `Blocked` value per cause, built where the cause is
found (GetJob's read of the queue, its known workers, the API's owed enqueues) and rendered
two ways from that one value: the `Job.blocked_reason` text people read (`text`) and the
`Job.blocked` message programs read (`to_proto`). Nothing else writes either, so the two
always say the same thing.

Each kind has one constructor here, named after it, that takes exactly the details its
proto comment (`BlockedKind` in protos/conveyor/v1/job.proto) promises; the other fields
keep their defaults and are left unset on the wire.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from conveyor.jobs.model import format_time
from conveyor.v1 import job_pb2


class BlockedKind(enum.IntEnum):
    """Mirror of the proto enum `conveyor.v1.BlockedKind`, with the same numbers."""

    UNSPECIFIED = 0
    SCHEDULED = 1
    BACKOFF = 2
    PAUSED = 3
    QUEUE_CONCURRENCY_LIMIT = 4
    OWNER_CONCURRENCY_LIMIT = 5
    API_KEY_CONCURRENCY_LIMIT = 6
    RATE_LIMITED = 7
    QUEUE_NEVER_SERVED = 8
    NO_WORKER = 9
    NO_WORKER_FOR_TYPE = 10
    IN_LINE = 11
    ENQUEUE_PENDING = 12
    QUEUE_UNREACHABLE = 13
    CONCURRENCY_KEY = 14
    RATE_KEY = 15
    DEPENDENCIES = 16


@dataclass(frozen=True, slots=True)
class Blocked:
    """One cause that holds a waiting job back, with its details (see the module)."""

    kind: BlockedKind
    queue: str = ""
    until: int | None = None  # epoch ms when the wait ends, when that is known
    running: int = 0  # jobs running against the full limit, and that limit
    limit: int = 0
    owner: str = ""
    api_key_id: str = ""
    jobs_ahead: int | None = None  # None: its place in line is not known
    rate_jobs: int = 0
    rate_interval_ms: int = 0
    attempt: int = 0
    max_attempts: int = 0
    job_type: str = ""
    type_unverified: bool = False
    cause: str = ""  # why Redis lacks the job, in words
    concurrency_key: str = ""
    rate_key: str = ""
    dependencies_pending: int = 0
    dependencies_total: int = 0
    waiting_for: tuple[str, ...] = ()

    # -- one constructor per kind ---------------------------------------------------------
    @classmethod
    def scheduled(cls, run_at: int) -> Blocked:
        return cls(BlockedKind.SCHEDULED, until=run_at)

    @classmethod
    def backoff(cls, run_at: int, attempt: int, max_attempts: int) -> Blocked:
        """Attempt `attempt` failed; the next is due at `run_at`."""
        return cls(BlockedKind.BACKOFF, until=run_at, attempt=attempt, max_attempts=max_attempts)

    @classmethod
    def paused(cls, queue: str) -> Blocked:
        return cls(BlockedKind.PAUSED, queue=queue)

    @classmethod
    def queue_concurrency_limit(cls, queue: str, running: int, limit: int) -> Blocked:
        return cls(BlockedKind.QUEUE_CONCURRENCY_LIMIT, queue=queue, running=running, limit=limit)

    @classmethod
    def owner_concurrency_limit(cls, queue: str, owner: str, running: int, limit: int) -> Blocked:
        return cls(
            BlockedKind.OWNER_CONCURRENCY_LIMIT,
            queue=queue,
            owner=owner,
            running=running,
            limit=limit,
        )

    @classmethod
    def api_key_concurrency_limit(
        cls, queue: str, api_key_id: str, running: int, limit: int
    ) -> Blocked:
        return cls(
            BlockedKind.API_KEY_CONCURRENCY_LIMIT,
            queue=queue,
            api_key_id=api_key_id,
            running=running,
            limit=limit,
        )

    @classmethod
    def concurrency_key_limit(
        cls, queue: str, concurrency_key: str, running: int, limit: int
    ) -> Blocked:
        return cls(
            BlockedKind.CONCURRENCY_KEY,
            queue=queue,
            concurrency_key=concurrency_key,
            running=running,
            limit=limit,
        )

    @classmethod
    def rate_limited(cls, queue: str, rate_jobs: int, rate_interval_ms: int, until: int) -> Blocked:
        """The rate window is full until `until` (epoch ms)."""
        return cls(
            BlockedKind.RATE_LIMITED,
            queue=queue,
            rate_jobs=rate_jobs,
            rate_interval_ms=rate_interval_ms,
            until=until,
        )

    @classmethod
    def rate_key_limited(
        cls, queue: str, rate_key: str, rate_jobs: int, rate_interval_ms: int, until: int
    ) -> Blocked:
        """The jobs of `rate_key` may start again at `until` (epoch ms): its window is full
        (`rate_jobs` per `rate_interval_ms`), or a handler pushed back (both 0)."""
        return cls(
            BlockedKind.RATE_KEY,
            queue=queue,
            rate_key=rate_key,
            rate_jobs=rate_jobs,
            rate_interval_ms=rate_interval_ms,
            until=until,
        )

    @classmethod
    def queue_never_served(cls, queue: str) -> Blocked:
        return cls(BlockedKind.QUEUE_NEVER_SERVED, queue=queue)

    @classmethod
    def no_worker(cls, queue: str, job_type: str, *, type_unverified: bool) -> Blocked:
        """No live worker serves `queue`; `type_unverified`: nor can anyone check `job_type`."""
        return cls(
            BlockedKind.NO_WORKER, queue=queue, job_type=job_type, type_unverified=type_unverified
        )

    @classmethod
    def no_worker_for_type(cls, queue: str, job_type: str) -> Blocked:
        return cls(BlockedKind.NO_WORKER_FOR_TYPE, queue=queue, job_type=job_type)

    @classmethod
    def in_line(cls, queue: str, jobs_ahead: int | None) -> Blocked:
        return cls(BlockedKind.IN_LINE, queue=queue, jobs_ahead=jobs_ahead)

    @classmethod
    def enqueue_pending(cls, cause: str) -> Blocked:
        """Committed, not yet in Redis; `cause` says why (see conveyor.api.pending_writes)."""
        return cls(BlockedKind.ENQUEUE_PENDING, cause=cause)

    @classmethod
    def dependencies(cls, pending: int, total: int, waiting_for: tuple[str, ...]) -> Blocked:
        """`pending` of the job's `total` dependencies have not ended; `waiting_for` names
        some of them."""
        return cls(
            BlockedKind.DEPENDENCIES,
            dependencies_pending=pending,
            dependencies_total=total,
            waiting_for=waiting_for,
        )

    @classmethod
    def queue_unreachable(cls) -> Blocked:
        return cls(BlockedKind.QUEUE_UNREACHABLE)

    # -- renderings -----------------------------------------------------------------------
    @property
    def text(self) -> str:
        """The `blocked_reason` text (its wording is relied on: tests and users read it)."""
        queue = repr(self.queue)
        match self.kind:
            case BlockedKind.SCHEDULED:
                return f"scheduled for {self._until()}"
            case BlockedKind.BACKOFF:
                return (
                    f"waiting for backoff until {self._until()} after attempt "
                    f"{self.attempt} of {self.max_attempts} failed"
                )
            case BlockedKind.PAUSED:
                return f"queue {queue} is paused"
            case BlockedKind.QUEUE_CONCURRENCY_LIMIT:
                return f"queue {queue} is at its concurrency limit ({self._of_limit()})"
            case BlockedKind.OWNER_CONCURRENCY_LIMIT:
                return f"owner {self.owner!r} {self._group_full()}"
            case BlockedKind.API_KEY_CONCURRENCY_LIMIT:
                return f"API key {self.api_key_id} {self._group_full()}"
            case BlockedKind.CONCURRENCY_KEY:
                return f"concurrency key {self.concurrency_key!r} {self._group_full()}"
            case BlockedKind.RATE_KEY if not self.rate_jobs:
                return (
                    f"rate key {self.rate_key!r} was pushed back by a handler until {self._until()}"
                )
            case BlockedKind.RATE_KEY:
                return (
                    f"rate key {self.rate_key!r} is rate limited ({self.rate_jobs} per "
                    f"{self.rate_interval_ms} ms) until {self._until()}"
                )
            case BlockedKind.RATE_LIMITED:
                return (
                    f"queue {queue} is rate limited ({self.rate_jobs} per "
                    f"{self.rate_interval_ms} ms) until {self._until()}"
                )
            case BlockedKind.QUEUE_NEVER_SERVED:
                return (
                    f"no worker has ever served queue {queue} and no admin configured it: "
                    "the job waits until a worker serves that queue"
                )
            case BlockedKind.NO_WORKER if self.type_unverified:
                return (
                    f"no live worker serves queue {queue}, and job type {self.job_type!r} "
                    "cannot be checked until one does (the API does not load it and no live "
                    "worker announces it)"
                )
            case BlockedKind.NO_WORKER:
                return f"no live worker serves queue {queue}"
            case BlockedKind.NO_WORKER_FOR_TYPE:
                return f"no live worker on queue {queue} handles job type {self.job_type!r}"
            case BlockedKind.IN_LINE if self.jobs_ahead is None:
                return "waiting for a worker"
            case BlockedKind.IN_LINE:
                return (
                    f"waiting for a worker slot ({self.jobs_ahead} job(s) ahead in queue {queue})"
                )
            case BlockedKind.ENQUEUE_PENDING:
                return f"committed; waiting to be enqueued: {self.cause}"
            case BlockedKind.QUEUE_UNREACHABLE:
                return "the queue (redis) cannot be reached"
            case BlockedKind.DEPENDENCIES:
                shown = ", ".join(self.waiting_for)
                more = "" if len(self.waiting_for) >= self.dependencies_pending else ", …"
                return (
                    f"waiting for {self.dependencies_pending} of {self.dependencies_total} "
                    f"dependencies: {shown}{more}"
                )
        raise ValueError(f"no text for {self.kind!r}")

    def _until(self) -> str:
        return format_time(self.until) if self.until is not None else "an unknown time"

    def _of_limit(self) -> str:
        return f"{self.running} of {self.limit} running"

    def _group_full(self) -> str:
        return f"is at its concurrency limit in queue {self.queue!r} ({self._of_limit()})"

    def to_proto(self) -> job_pb2.BlockedReason:
        """The `Job.blocked` message: the kind and the details it sets (see the module)."""
        msg = job_pb2.BlockedReason(
            kind=self.kind.value,  # type: ignore[arg-type]
            queue=self.queue,
            running=self.running,
            limit=self.limit,
            owner=self.owner,
            api_key_id=self.api_key_id,
            rate_jobs=self.rate_jobs,
            attempt=self.attempt,
            max_attempts=self.max_attempts,
            job_type=self.job_type,
            type_unverified=self.type_unverified,
            cause=self.cause,
            concurrency_key=self.concurrency_key,
            rate_key=self.rate_key,
            dependencies_pending=self.dependencies_pending,
            dependencies_total=self.dependencies_total,
            waiting_for=self.waiting_for,
        )
        if self.until is not None:
            msg.until.FromMilliseconds(self.until)
        if self.jobs_ahead is not None:
            msg.jobs_ahead = self.jobs_ahead
        if self.rate_interval_ms:
            msg.rate_interval.FromMilliseconds(self.rate_interval_ms)
        return msg
