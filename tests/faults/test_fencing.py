"""Fencing against real processes: a worker frozen with SIGSTOP past its lease loses the job
to another worker, and when SIGCONT wakes it, nothing it still does reaches the job: the
database and Redis keep the newer attempt's state, progress and outcome, the side effect
guarded by `once()` happened once, and the lost attempt is on record as LOST.

The step-by-step orderings of the same race are in tests/integration/test_fencing.py."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from conveyor.client import AsyncClient
from conveyor.v1 import job_pb2
from tests.handlers import lines
from tests.observability import scrape, value
from tests.processes import Keys, Stack, worker_status

QUEUE = "frozen"


async def test_a_worker_frozen_past_its_lease_cannot_overwrite_the_newer_attempt(
    stack: Stack, keys: Keys, alice: AsyncClient, tmp_path: Path
) -> None:
    log = tmp_path / "effects.log"
    frozen = stack.start("worker", "--queues", QUEUE, "--concurrency", "1", env=stack.worker_env())
    frozen_id = (await worker_status(frozen, keys.admin)).worker_id
    job = await alice.submit(
        "test.effect", {"log": str(log), "seconds": 1.5, "key": "k"}, queue=QUEUE, max_attempts=5
    )
    async with asyncio.timeout(20):
        async for update in alice.watch(job.id):
            if update.job.progress >= 10:  # attempt 1 is past its once()-guarded effect
                break
    os.kill(frozen.proc.pid, signal.SIGSTOP)
    try:
        rescuer = stack.start("worker", "--queues", QUEUE, env=stack.worker_env())
        rescuer_id = (await worker_status(rescuer, keys.admin)).worker_id
        async with asyncio.timeout(30):
            final = [u async for u in alice.watch(job.id)][-1].job
        assert final.state == job_pb2.JOB_STATE_SUCCEEDED and final.attempt == 2
        reclaimed = scrape(rescuer)
        assert value(reclaimed, "conveyor_leases_reclaimed_total", queue=QUEUE) == 1
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)

    # The woken worker finishes its handler or notices its lost lease, and whatever it
    # tries to write is refused. A graceful stop waits for its pending writes, so once it
    # has exited every late write has been tried.
    woke = await worker_status(frozen, keys.admin)
    assert frozen.stop() == 0
    refused = frozen.log.read_text().count("stale outcome")
    after = await alice.get(job.id)
    assert (after.state, after.attempt, after.progress) == (final.state, 2, 100.0)
    assert after.error == ""
    attempts = await alice.attempts(job.id)
    assert [(a.attempt, a.outcome, a.worker_id) for a in attempts] == [
        (1, job_pb2.ATTEMPT_OUTCOME_LOST, frozen_id),
        (2, job_pb2.ATTEMPT_OUTCOME_SUCCEEDED, rescuer_id),
    ]
    effects = [line for line in lines(log) if line.startswith("effect")]
    assert effects == [f"effect {job.id} 1"], "once() let the effect happen once"
    print(
        f"\nsigstop fencing: stale writes refused {refused}, accepted 0; "
        f"attempts {len(attempts)}; effects {len(effects)}; frozen worker saw {woke.state}"
    )
    assert rescuer.stop() == 0
