"""Poison jobs: a job whose handler kills its worker process (as a segfault would) is
counted per attempt, each lost attempt is on record, and after its last attempt the next
worker records it DEAD without running it, so it cannot crash-loop the fleet."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from conveyor.client import AsyncClient, AttemptOutcome, JobState
from tests.handlers import lines
from tests.processes import Stack

QUEUE = "poison"
MAX_ATTEMPTS = 2


@pytest.mark.timeout(120)
async def test_a_job_that_kills_its_worker_ends_dead_after_its_attempts(
    stack: Stack, alice: AsyncClient, tmp_path: Path
) -> None:
    log = tmp_path / "crashes.log"
    job = await alice.submit(
        "test.crash", {"log": str(log)}, queue=QUEUE, max_attempts=MAX_ATTEMPTS
    )
    deaths = 0
    for _ in range(MAX_ATTEMPTS):
        worker = stack.spawn("worker", "--queues", QUEUE, env=stack.worker_env())
        try:
            code = await asyncio.to_thread(worker.proc.wait, 30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the job did not kill its worker:\n{worker.tail()}") from None
        worker.killed = True  # it died on purpose; the stack must not expect a clean exit
        assert code == 70
        deaths += 1

    survivor = stack.start("worker", "--queues", QUEUE, env=stack.worker_env())
    async with asyncio.timeout(30):
        final = [u async for u in alice.watch(job.id)][-1].job
    assert final.state == JobState.DEAD
    assert final.attempt == MAX_ATTEMPTS
    assert "was lost" in final.error and "no attempts left" in final.error
    attempts = await alice.attempts(job.id)
    assert [(a.attempt, a.outcome) for a in attempts] == [
        (n, AttemptOutcome.LOST) for n in range(1, MAX_ATTEMPTS + 1)
    ]
    runs = lines(log)
    print(f"\npoison: {deaths} worker deaths, {len(runs)} runs, final {final.error!r}")
    assert len(runs) == MAX_ATTEMPTS, "the handler ran once per attempt, no more"
    assert survivor.proc.poll() is None and survivor.stop() == 0
