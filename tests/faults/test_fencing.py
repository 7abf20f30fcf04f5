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

from conveyor.client import AsyncClient, AttemptOutcome, JobState
from conveyor.v1 import worker_control_pb2 as wc
from tests.handlers import lines
from tests.observability import scrape, value
from tests.processes import Keys, Service, Stack, worker_status

QUEUE = "frozen"


async def until_stale_write(worker: Service, key: str) -> wc.WorkerStatus:
    """Wait until the worker has counted a refused stale write, and return its status.
    WorkerControl's status is asked for every 50 ms (there is no event), for 20 s at most."""
    async with asyncio.timeout(20):
        while not (status := await worker_status(worker, key)).stale_writes:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return status


async def test_a_worker_frozen_past_its_lease_cannot_overwrite_the_newer_attempt(
    stack: Stack, keys: Keys, alice: AsyncClient, tmp_path: Path
) -> None:
    """Guards the README's fencing figures: the woken worker's outcome is refused (at
    least one stale write counted in WorkerControl's `stale_writes` and logged) and 0 are
    accepted (the job and attempt 1's record are as the rescuer and the fence left them)."""
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
        assert final.state == JobState.SUCCEEDED and final.attempt == 2
        reclaimed = scrape(rescuer)
        assert value(reclaimed, "conveyor_leases_reclaimed_total", queue=QUEUE) == 1
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)

    # The woken worker finishes its handler and tries to write its outcome, which the
    # fence refuses: wait until it has counted that, then stop it. A graceful stop waits
    # for its pending writes, so once it has exited every late write has been tried.
    woke = await until_stale_write(frozen, keys.admin)
    assert frozen.stop() == 0
    refused = frozen.log.read_text().count("stale outcome")
    after = await alice.get(job.id)
    attempts = await alice.attempts(job.id)
    # A stale write that got through would show as a changed job or a rewritten attempt 1.
    accepted = int((after.state, after.attempt, after.progress, after.error) != (
        final.state, final.attempt, final.progress, final.error
    )) + sum(a.worker_id == frozen_id and a.outcome != AttemptOutcome.LOST
             for a in attempts)  # fmt: skip
    effects = [line for line in lines(log) if line.startswith("effect")]
    print(
        f"\nsigstop fencing: stale writes refused {woke.stale_writes} ({refused} outcomes "
        f"logged), accepted {accepted}; attempts {len(attempts)}; effects {len(effects)}"
    )
    assert woke.stale_writes >= 1 and refused >= 1, "the woken worker's outcome was refused"
    assert accepted == 0
    assert (after.state, after.attempt, after.progress) == (final.state, 2, 100.0)
    assert after.error == ""
    assert [(a.attempt, a.outcome, a.worker_id) for a in attempts] == [
        (1, AttemptOutcome.LOST, frozen_id),
        (2, AttemptOutcome.SUCCEEDED, rescuer_id),
    ]
    assert effects == [f"effect {job.id} 1"], "once() let the effect happen once"
    assert rescuer.stop() == 0
