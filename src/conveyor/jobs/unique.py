"""Unique and debounced jobs: an idempotency key held for a while, or by a job that waits.

A plain idempotency key is held by its job for as long as the job's row lives: the same key
and request answer that job, a different request is ALREADY_EXISTS. Two submit options make
the key's hold shorter and let it move on to a new job:

- `unique_for` (`JobSpec.unique_for_ms`): the job holds its key until `key_until`, its
  acceptance plus the window. Within it a submit with the same key answers that job,
  whatever its request (one job per key per window is the point: no ALREADY_EXISTS); after
  it, the submit makes a new job and the key moves to that one.
- `debounce` (`JobSpec.debounce_ms`): the job is SCHEDULED at acceptance plus the debounce
  and holds its key while it still waits. A later submit with the key replaces its payload
  and labels and moves its run_at to that submit's time plus the debounce, answering the
  same job, so a burst makes one job that runs once, after the burst, with the last
  request's payload. Once it is due, started or finished, the next submit makes a new job.

The key moves by the one statement that can: the old row's `idempotency_key` is set to NULL
in the transaction that inserts the new job, under the row lock of the old one (SELECT …
FOR UPDATE), so the unique constraint on (owner, idempotency_key) still decides every race:
two submits after a window both lock the old row; the second, once the first commits, finds
no row holding the key, and its insert then meets the first's new job, which it answers.
The old job keeps its row, attempts and result; it only no longer names the key.

Whether a debounced job still waits is Redis's to say (a claim is a Redis script; the
database learns of an attempt only when it ends), so the replacement is a Lua script
(debounce.lua) that checks the job is still SCHEDULED and, in the same step, rewrites its
payload, labels and run_at (and its place in the delayed set), or puts the job there with
the new values when Redis lacks it (not enqueued yet, or Redis lost it). It runs while the
submit holds the old row's lock, and the row is updated and committed right after it: the
database lock orders the submits of one key, the script orders each against the claims.
See `JobStore.insert_keyed` for the window a crash between the two leaves.

Ordinary submits never take this path (their cost is what it was); a keyed submit is one
transaction of its own, not group-committed, and SubmitJobs refuses these options.
"""

from __future__ import annotations

import enum
from dataclasses import replace
from typing import TYPE_CHECKING

from conveyor.errors import FieldViolation

if TYPE_CHECKING:
    from conveyor.jobs.model import Job

MIN_UNIQUE_FOR_MS = 1000
MAX_UNIQUE_FOR_MS = 366 * 24 * 3600 * 1000
MIN_DEBOUNCE_MS = 1
MAX_DEBOUNCE_MS = 24 * 3600 * 1000


def key_windows(
    unique_for: tuple[bool, int | None],
    debounce: tuple[bool, int | None],
    *,
    has_key: bool,
    fixed_time: bool,
) -> tuple[int, int, list[FieldViolation]]:
    """A request's `unique_for` and `debounce` in ms (each: set, and its value or None when
    protobuf holds it invalid), and what is wrong with them (field names unprefixed)."""
    bad: list[FieldViolation] = []
    windows = []
    for name, (is_set, ms), low, high, bounds in (
        ("unique_for", unique_for, MIN_UNIQUE_FOR_MS, MAX_UNIQUE_FOR_MS, "1 second and a year"),
        ("debounce", debounce, MIN_DEBOUNCE_MS, MAX_DEBOUNCE_MS, "1 millisecond and a day"),
    ):
        if is_set and (ms is None or not low <= ms <= high):
            bad.append(FieldViolation(name, f"must be a valid duration between {bounds}"))
        if is_set and not has_key:
            bad.append(FieldViolation(name, "needs an idempotency_key"))
        windows.append(ms or 0 if is_set else 0)
    if unique_for[0] and debounce[0]:
        bad.append(FieldViolation("debounce", "set unique_for or debounce, not both"))
    if debounce[0] and fixed_time:
        bad.append(FieldViolation("debounce", "sets run_at itself: not with run_at or delay"))
    return windows[0], windows[1], bad


class Hold(enum.Enum):
    """What a submit with a key meets in the job holding it (`holding`)."""

    # A plain key: the same request answers the job, another is ALREADY_EXISTS.
    PLAIN = "plain"
    # The key is held (a unique job within its window; a debounced job that waits, met
    # by a submit that is not a debounce): the submit answers the job as it is.
    HELD = "held"
    # A debounce submit meets a debounced job the database has as unfinished: replace its
    # payload if Redis says it still waits, else MOVE.
    REPLACE = "replace"
    # The hold is over: the key moves to a new job.
    MOVE = "move"


def holding(prior: Job, job: Job, now: int) -> Hold:
    """How the job `prior`, which holds the key, meets the new `job` submitted with it."""
    if prior.key_until is not None:
        return Hold.HELD if now < prior.key_until else Hold.MOVE
    if prior.debounce_ms:
        if prior.state.terminal:
            return Hold.MOVE
        return Hold.REPLACE if job.debounce_ms else Hold.HELD
    return Hold.PLAIN


def replaced(prior: Job, job: Job) -> Job:
    """The debounced job `prior` as a later submit `job` of its burst makes it: that
    submit's payload, labels, request fingerprint and run_at, and SCHEDULED."""
    from conveyor.jobs.model import JobState  # here: conveyor.jobs.model imports this module

    return replace(
        prior,
        payload=job.payload,
        labels=job.labels,
        request_hash=job.request_hash,
        run_at=job.run_at,
        state=JobState.SCHEDULED,
    )
