"""Retention: how long a finished job is kept.

Each job carries its retention from submit on (`Job.retention_ms`): the request's
`retention`, else its type's (`@handler(..., retention=...)`), else
`CONVEYOR_RETENTION_SECONDS` (7 days; 0 keeps jobs forever). Once the job is SUCCEEDED,
DEAD or CANCELLED, it expires at `finish_time + retention`, and GetJob shows that time as
`expire_time`. The statement that finishes the job also records that time in
`job_expiry` (a table of its own, so outcome updates keep PostgreSQL's in-place HOT
update; see migration 0005). A job replayed with RetryJob is unfinished again: its expiry
row goes, and it gets a new one when it ends. The scheduler's sweeper
(`conveyor.scheduling.sweeper`) deletes expired jobs.
"""

from __future__ import annotations


def resolve_retention_ms(
    requested_ms: int | None, type_seconds: float | None, default_seconds: float
) -> int | None:
    """The job's retention: the request's, else the type's, else the server's; None is
    forever (a type or server retention of 0)."""
    if requested_ms:
        return requested_ms
    seconds = type_seconds if type_seconds is not None else default_seconds
    return int(seconds * 1000) if seconds > 0 else None
