"""Cancels racing their jobs' completion, against a real API and worker (issue 19, item 3):
whatever the ordering, the cancel's answer is final and the job's history is true to what
ran. A job cancelled before it started has no attempt; one cancelled while running has its
attempt on record as CANCELLED, with start and end; one cancelled after its handler had
returned says the result was discarded; a cancel that came too late is refused and the job
keeps its success.

The step-by-step orderings are in tests/integration/test_fencing.py."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

from conveyor.client import AsyncClient, Attempt, AttemptOutcome, Job, JobState
from conveyor.errors import FailedPrecondition
from conveyor.v1 import job_pb2
from tests.handlers import lines
from tests.processes import Stack

QUEUE = "cancel-race"
JOBS = 160
TERMINAL = (
    job_pb2.JOB_STATE_SUCCEEDED,
    job_pb2.JOB_STATE_CANCELLED,
    job_pb2.JOB_STATE_DEAD,
)


async def submit_and_cancel(alice: AsyncClient, log: Path, rng: random.Random) -> tuple[str, bool]:
    """One job of 20 to 200 ms, cancelled 0 to 250 ms after it was accepted; its id and whether
    the cancel was accepted."""
    job = await alice.submit(
        "test.touch", {"log": str(log), "seconds": rng.uniform(0.02, 0.2)}, queue=QUEUE
    )
    await asyncio.sleep(rng.uniform(0, 0.25))
    try:
        await alice.cancel(job.id)
    except FailedPrecondition:
        return job.id, False
    return job.id, True


async def settled(alice: AsyncClient, job_id: str) -> Job:
    async with asyncio.timeout(20):
        async for update in alice.watch(job_id):
            if update.job.state.terminal:
                return update.job
    return await alice.get(job_id)


def kind_of(job: Job, cancel_taken: bool, attempts: list[Attempt]) -> str:
    """Check one job's history against its cancel's answer; what kind of race it was."""
    if not cancel_taken:
        assert job.state == JobState.SUCCEEDED, job
        assert [a.outcome for a in attempts] == [AttemptOutcome.SUCCEEDED], attempts
        return "too late: refused, succeeded"
    assert job.state == JobState.CANCELLED, f"an accepted cancel is final: {job}"
    if job.attempt == 0:
        assert attempts == [], attempts
        return "before it started"
    assert [a.attempt for a in attempts] == [1] and job.attempt == 1, (job, attempts)
    [record] = attempts
    assert record.outcome == AttemptOutcome.CANCELLED, record
    assert record.worker_id and record.start_time and record.finish_time, record
    assert record.start_time <= record.finish_time
    if record.error.startswith("cancelled after its handler had ended"):
        return "after the handler returned"
    assert record.error.startswith("cancelled while running"), record
    return "while running"


async def test_cancels_racing_completion_leave_a_true_history(
    stack: Stack, alice: AsyncClient, tmp_path: Path
) -> None:
    """Guards the attempt history of cancelled jobs (before: a job cancelled while running
    showed attempt 0 and no attempt record, as if it had never run) and the finality of an
    accepted cancel, over 160 cancels at random points of short jobs."""
    worker = stack.start("worker", "--queues", QUEUE, "--concurrency", "8", env=stack.worker_env())
    log = tmp_path / "work.log"
    rng = random.Random(19)
    outcomes = await asyncio.gather(*(submit_and_cancel(alice, log, rng) for _ in range(JOBS)))
    kinds: Counter[str] = Counter()
    worked_but_cancelled = 0
    done = {line.split()[0] for line in lines(log)}
    for job_id, taken in outcomes:
        job = await settled(alice, job_id)
        kinds[kind_of(job, taken, await alice.attempts(job_id))] += 1
        if taken and job_id in done:
            assert job.attempt == 1, f"{job_id} ran, yet its history says it never did"
            worked_but_cancelled += 1
    print(
        f"\ncancel races: {JOBS} jobs; "
        + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
        + f"; work done yet cancelled {worked_but_cancelled} (each with its attempt on record)"
    )
    assert kinds["while running"] > 0, "the race must reach running handlers"
    assert worker.stop() == 0
