"""Attempts: one run of a job's handler, how it ended, and what the database keeps of it.

Every attempt that reaches an end is recorded in `job_attempts` by the same statement that
records the job's outcome (so the history never disagrees with the job). An attempt whose
worker vanished is recorded as LOST by the worker that reclaims the job.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from conveyor.jobs.model import JobState
from conveyor.v1 import job_pb2


class AttemptOutcome(enum.IntEnum):
    """Mirror of the proto enum `conveyor.v1.AttemptOutcome`."""

    UNSPECIFIED = 0
    SUCCEEDED = 1
    FAILED = 2
    TIMED_OUT = 3
    LOST = 4
    CANCELLED = 5


@dataclass(frozen=True, slots=True)
class Attempt:
    job_id: str
    attempt: int
    outcome: AttemptOutcome
    worker_id: str
    start_time: int | None
    finish_time: int
    error: str = ""
    traceback: str = ""

    def to_proto(self) -> job_pb2.JobAttempt:
        msg = job_pb2.JobAttempt(
            job_id=self.job_id,
            attempt=self.attempt,
            outcome=self.outcome.value,  # type: ignore[arg-type]
            worker_id=self.worker_id,
            error=self.error,
            traceback=self.traceback,
        )
        if self.start_time is not None:
            msg.start_time.FromMilliseconds(self.start_time)
        msg.finish_time.FromMilliseconds(self.finish_time)
        return msg


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    """The end of an attempt as the worker writes it: the job's new state and the record.

    `state` is SUCCEEDED, DEAD or CANCELLED (then `finish_time` is set) or RETRYING (then
    `run_at` is the retry time). `fence` and `attempt` are the write's fencing token: the
    database applies it only while the job's fence is still `fence` and no later attempt has
    been recorded.
    """

    id: str
    state: JobState
    attempt: int
    fence: int
    error: str
    progress: float
    progress_message: str
    start_time: int | None
    finish_time: int | None
    run_at: int | None
    outcome: AttemptOutcome
    worker_id: str
    ended: int
    traceback: str = ""
    # What the handler returned, for a SUCCEEDED attempt (a JSON object); else None.
    result: dict[str, Any] | None = None
    # Set instead of `result` when the result was too large for the row: its object key.
    result_ref: str | None = None

    @property
    def record(self) -> Attempt:
        return Attempt(
            job_id=self.id,
            attempt=self.attempt,
            outcome=self.outcome,
            worker_id=self.worker_id,
            start_time=self.start_time,
            finish_time=self.ended,
            error=self.error,
            traceback=self.traceback,
        )
