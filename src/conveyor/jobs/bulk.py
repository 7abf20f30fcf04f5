"""Bulk operations (RetryJobs, CancelJobs, DeleteJobs): the record of one, what its
request may say, and the pace it keeps. Run by conveyor.api.bulk, kept by
conveyor.db.bulk_operations."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from conveyor.errors import FieldViolation, InvalidArgument
from conveyor.jobs.model import MAX_ATTEMPTS_LIMIT, JobState
from conveyor.v1 import job_service_pb2 as pb

# Jobs acted on per second when a request says 0, and the most a request may ask for.
DEFAULT_PER_SECOND = 500
MAX_PER_SECOND = 10_000


class BulkAction(enum.IntEnum):
    RETRY = pb.BULK_ACTION_RETRY
    CANCEL = pb.BULK_ACTION_CANCEL
    DELETE = pb.BULK_ACTION_DELETE

    @property
    def states(self) -> tuple[JobState, ...]:
        """The states of the jobs this action is for (as its single-job RPC allows)."""
        if self is BulkAction.RETRY:
            return (JobState.DEAD, JobState.CANCELLED)
        if self is BulkAction.CANCEL:
            return tuple(s for s in JobState if s and not s.terminal)
        return (JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED)


class BulkState(enum.IntEnum):
    RUNNING = pb.BULK_OPERATION_STATE_RUNNING
    SUCCEEDED = pb.BULK_OPERATION_STATE_SUCCEEDED
    FAILED = pb.BULK_OPERATION_STATE_FAILED
    CANCELLED = pb.BULK_OPERATION_STATE_CANCELLED


@dataclass(frozen=True, slots=True)
class BulkRequest:
    """What a RetryJobs, CancelJobs or DeleteJobs call asks for, checked."""

    action: BulkAction
    filter: str
    force: bool
    per_second: int
    max_attempts: int = 0

    @classmethod
    def checked(
        cls, action: BulkAction, filter: str, force: bool, per_second: int, max_attempts: int = 0
    ) -> BulkRequest:
        """The request, or INVALID_ARGUMENT with a violation per bad field. The filter's
        own syntax is checked where it is parsed (conveyor.jobs.filters)."""
        bad = []
        if not filter.strip():
            bad.append(FieldViolation("filter", "is required: a bulk action must say which jobs"))
        if not 0 <= per_second <= MAX_PER_SECOND:
            bad.append(
                FieldViolation(
                    "per_second",
                    f"must be 0 (default, {DEFAULT_PER_SECOND}) to {MAX_PER_SECOND}",
                )
            )
        if not 0 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
            bad.append(
                FieldViolation("max_attempts", f"must be 0 (default) to {MAX_ATTEMPTS_LIMIT}")
            )
        if bad:
            raise InvalidArgument(bad)
        return cls(action, filter, force, per_second or DEFAULT_PER_SECOND, max_attempts)


@dataclass(slots=True)
class BulkOperation:
    id: str
    owner: str
    admin: bool
    action: BulkAction
    filter: str
    state: BulkState
    per_second: int
    max_attempts: int
    # The newest job when it started: jobs with greater ids are never touched.
    top_id: str
    # The last id done with, walking down ("": none yet).
    cursor: str
    matched: int
    done: int
    skipped: int
    failed: int
    error: str
    create_time: int
    finish_time: int | None

    def to_proto(self) -> pb.BulkOperation:
        answer = pb.BulkOperation(
            id=self.id,
            owner=self.owner,
            action=int(self.action),  # type: ignore[arg-type]
            filter=self.filter,
            state=int(self.state),  # type: ignore[arg-type]
            per_second=self.per_second,
            max_attempts=self.max_attempts,
            matched=self.matched,
            done=self.done,
            skipped=self.skipped,
            failed=self.failed,
            error=self.error,
        )
        answer.create_time.FromMilliseconds(self.create_time)
        if self.finish_time is not None:
            answer.finish_time.FromMilliseconds(self.finish_time)
        return answer


class Pacer:
    """Hands out `per_second` turns a second, evenly: the n-th turn (from 0) is due n /
    per_second seconds after the first, and `turn()` sleeps until it (no busy loop). A
    pacer that fell behind (slow jobs) does not burst to catch up by more than one
    second's worth."""

    def __init__(
        self,
        per_second: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.interval = 1.0 / per_second
        self.burst = float(per_second) * self.interval  # one second
        self.clock = clock
        self.sleep = sleep
        self.next: float | None = None

    async def turn(self) -> None:
        now = self.clock()
        if self.next is None or self.next < now - self.burst:
            self.next = now
        wait = self.next - now
        self.next += self.interval
        if wait > 0:
            await self.sleep(wait)
