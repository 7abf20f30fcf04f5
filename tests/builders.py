"""Small constructors for test data that the code under test would otherwise make."""

from __future__ import annotations

from conveyor.attempts import AttemptEnd, AttemptOutcome
from conveyor.jobs import JobState, now_ms

_OUTCOMES = {
    JobState.SUCCEEDED: AttemptOutcome.SUCCEEDED,
    JobState.CANCELLED: AttemptOutcome.CANCELLED,
}


def ended(
    job_id: str,
    state: JobState,
    attempt: int = 1,
    *,
    fence: int = 0,
    error: str = "",
    worker_id: str = "test-worker",
) -> AttemptEnd:
    """The end of attempt `attempt` of a job as a worker holding `fence` would write it."""
    now = now_ms()
    return AttemptEnd(
        id=job_id,
        state=state,
        attempt=attempt,
        fence=fence,
        error=error,
        progress=100.0 if state is JobState.SUCCEEDED else 0.0,
        progress_message="",
        start_time=now - 1,
        finish_time=None if state is JobState.RETRYING else now,
        run_at=now + 1000 if state is JobState.RETRYING else None,
        outcome=_OUTCOMES.get(state, AttemptOutcome.FAILED),
        worker_id=worker_id,
        ended=now,
    )
