"""A dead worker's jobs come back within seconds, not after their lease.

Real processes with the default lease (30 s) and the default announcement interval (1 s):
a worker holding several jobs mid-run is killed with kill -9, and another worker on the same
queue, idle, must run every one of them again and finish it within 5 s: the registry finds
the silent worker dead after three missed announcements (its connection to Redis closed
with it) and a live worker releases its leases (before: the jobs waited out the 30 s lease).
A worker that is alive but silent (frozen, or its event loop blocked) is not taken for dead:
its jobs wait for their leases, and a frozen one that wakes is fenced off as after an
expired lease.

Run with `pytest -s` to see the counts and the seconds measured.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from conveyor.client import AsyncClient, AttemptOutcome, Job, JobState
from conveyor.v1 import job_pb2
from tests.handlers import lines
from tests.processes import Keys, Service, Stack, worker_status

# The shipped timings, over the test stack's short ones (2 s lease): heartbeat a third of
# the lease, announcements every second.
DEFAULT_LEASE = {"CONVEYOR_LEASE_SECONDS": "30", "CONVEYOR_HEARTBEAT_SECONDS": "0"}
BOUND = 5.0  # seconds from the death to every job done elsewhere
JOBS = 6


def worker(stack: Stack, queue: str, **env: str) -> Service:
    return stack.start(
        "worker", "--queues", queue, "--concurrency", "8",
        env={**stack.worker_env(), **DEFAULT_LEASE, **env},
    )  # fmt: skip


async def hold_jobs(alice: AsyncClient, queue: str, log: Path, gates: Sequence[Path]) -> list[Job]:
    """Submit one `test.hold` job per gate and wait until every one has started."""
    jobs = [
        await alice.submit("test.hold", {"log": str(log), "gate": str(gate)}, queue=queue)
        for gate in gates
    ]
    wanted = {f"started {job.id} 1" for job in jobs}
    deadline = time.monotonic() + 20
    while not wanted <= set(lines(log)):  # the handlers' own log: nothing to wait on but it
        assert time.monotonic() < deadline, "the jobs did not all start"
        await asyncio.sleep(0.02)
    return jobs


async def ended(alice: AsyncClient, job_id: str, since: float) -> tuple[Job, float]:
    """The job once it has ended, and how long after `since` that was."""
    final = [u async for u in alice.watch(job_id)][-1].job
    return final, time.monotonic() - since


async def all_ended(
    alice: AsyncClient, jobs: Sequence[Job], since: float, what: str, bound: float = BOUND
) -> list[tuple[Job, float]]:
    try:
        async with asyncio.timeout(bound):
            return list(await asyncio.gather(*(ended(alice, j.id, since) for j in jobs)))
    except TimeoutError:
        states = [job_pb2.JobState.Name((await alice.get(j.id)).state) for j in jobs]
        pytest.fail(f"{what}: not every job done elsewhere within {bound} s: {states}")


async def assert_taken_over(
    alice: AsyncClient,
    jobs: Sequence[Job],
    lost_by: str,
    run_by: str,
    why: str = "lease released: worker {} stopped announcing itself",
) -> None:
    """Each job ended SUCCEEDED on `run_by` as attempt 2, `lost_by`'s attempt on record as
    LOST, for the reason `why` (by default: the worker stopped announcing itself)."""
    for job in jobs:
        final = await alice.get(job.id)
        assert (final.state, final.attempt) == (JobState.SUCCEEDED, 2)
        attempts = await alice.attempts(job.id)
        assert [(a.attempt, a.outcome, a.worker_id) for a in attempts] == [
            (1, AttemptOutcome.LOST, lost_by),
            (2, AttemptOutcome.SUCCEEDED, run_by),
        ]
        assert attempts[0].error == why.format(lost_by)


async def test_a_kill_9d_workers_jobs_run_again_elsewhere_within_5_s(
    stack: Stack, keys: Keys, alice: AsyncClient, tmp_path: Path
) -> None:
    """Guards the release of a dead worker's leases: with the default 30 s lease, every job
    a kill -9'd worker held is run again by an idle worker and SUCCEEDS within 5 s."""
    queue, log = "dead-kill9", tmp_path / "runs.log"
    doomed = worker(stack, queue)
    doomed_id = (await worker_status(doomed, keys.admin)).worker_id
    jobs = await hold_jobs(alice, queue, log, [tmp_path / "never"] * JOBS)
    rescuer = worker(stack, queue)
    rescuer_id = (await worker_status(rescuer, keys.admin)).worker_id

    killed = time.monotonic()
    doomed.kill()
    done = await all_ended(alice, jobs, killed, "kill -9")

    await assert_taken_over(alice, jobs, doomed_id, rescuer_id)
    seconds = [s for _, s in done]
    last, median = max(seconds), statistics.median(seconds)
    reruns = sum(line.startswith("started") and line.endswith(" 2") for line in lines(log))
    print(
        f"\nkill -9 of a worker holding {len(jobs)} jobs (lease 30 s): {reruns} run again, "
        f"{sum(j.state == JobState.SUCCEEDED for j, _ in done)} succeeded, "
        f"{last:.2f} s after the kill for the last (median {median:.2f} s)"
    )
    assert reruns == len(jobs)
    assert rescuer.stop() == 0


async def test_a_frozen_worker_is_not_taken_for_dead_and_is_fenced_off_when_it_wakes(
    stack: Stack, keys: Keys, alice: AsyncClient, tmp_path: Path
) -> None:
    """Guards the liveness check behind a release: a worker frozen with SIGSTOP stops
    announcing, but its process (and its announcer's connection to Redis) is alive, so no
    one takes it for dead; its jobs run again elsewhere only once their 6 s lease lapses
    (the LOST attempts say "lease expired", not "released"), and when SIGCONT wakes it,
    its heartbeat finds the leases gone and stops its handlers, or its late outcome is
    refused: the jobs keep the newer attempt's outcome."""
    queue, log = "dead-frozen", tmp_path / "runs.log"
    opened, never = tmp_path / "opened", tmp_path / "never"
    # A heartbeat every second, so the woken worker learns at once; a 6 s lease, well past
    # the 3.25 s after which a silent worker that had also lost its connection is dead.
    lease = {"CONVEYOR_HEARTBEAT_SECONDS": "1", "CONVEYOR_LEASE_SECONDS": "6"}
    frozen = worker(stack, queue, **lease)
    frozen_id = (await worker_status(frozen, keys.admin)).worker_id
    finishing, holding = await hold_jobs(alice, queue, log, [opened, never])
    rescuer = worker(stack, queue, **lease)
    rescuer_id = (await worker_status(rescuer, keys.admin)).worker_id

    stopped = time.monotonic()
    os.kill(frozen.proc.pid, signal.SIGSTOP)
    try:
        done = await all_ended(alice, [finishing, holding], stopped, "SIGSTOP", bound=15)
        opened.touch()  # the woken worker's first handler finishes and tries to record
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)

    deadline = time.monotonic() + 10
    while (await worker_status(frozen, keys.admin)).running_jobs:  # WorkerStatus, polled
        assert time.monotonic() < deadline, "the woken worker still runs the lost jobs"
        await asyncio.sleep(0.05)
    assert frozen.stop() == 0  # a graceful stop waits for its pending writes
    text = frozen.log.read_text()
    assert f"job {holding.id}: lease lost; stopping its handler" in text, "heartbeat told it"
    assert (
        f"job {finishing.id}: lease lost; stopping its handler" in text
        or f"job {finishing.id}: stale outcome of attempt 1 refused" in text
    )
    expired = "lease expired: worker {} stopped renewing it"
    await assert_taken_over(alice, [finishing, holding], frozen_id, rescuer_id, why=expired)
    for job in (finishing, holding):
        after = await alice.get(job.id)
        assert (after.progress, after.error) == (100.0, "")
    first = min(s for _, s in done)
    print(
        f"\nSIGSTOP of a worker holding 2 jobs (lease 6 s): not taken for dead; done "
        f"elsewhere {first:.2f} s after the freeze, once the leases lapsed; woken worker "
        f"fenced off (heartbeat stops {text.count('lease lost; stopping')}, "
        f"late outcomes refused {text.count('stale outcome')})"
    )
    # The lease was last renewed at most a heartbeat (1 s) before the freeze.
    assert first >= 5.0, "released before the lease: the frozen worker was taken for dead"
    assert rescuer.stop() == 0


async def test_a_worker_whose_event_loop_is_blocked_is_not_taken_for_dead(
    stack: Stack, alice: AsyncClient, tmp_path: Path
) -> None:
    """Guards announcing from a thread of its own: an `async def` handler that blocks its
    worker's event loop for 5 s (longer than the 3.25 s that makes a silent worker dead)
    does not get its job run again by the idle worker beside it; the process is alive, and
    only its leases (30 s) would say otherwise."""
    queue, log = "dead-blocked-loop", tmp_path / "runs.log"
    busy, idle = worker(stack, queue), worker(stack, queue)  # either may take the job
    job = await alice.submit("test.block_loop", {"log": str(log), "seconds": 5}, queue=queue)
    async with asyncio.timeout(20):
        final = [u async for u in alice.watch(job.id)][-1].job
    attempts = await alice.attempts(job.id)
    runs = [line for line in lines(log) if line.startswith("started")]
    print(f"\nevent loop blocked 5 s: the job ran {len(runs)} time(s), {len(attempts)} attempt(s)")
    assert (final.state, final.attempt) == (JobState.SUCCEEDED, 1)
    assert [(a.attempt, a.outcome) for a in attempts] == [(1, AttemptOutcome.SUCCEEDED)]
    assert runs == [f"started {job.id} 1"]
    assert busy.stop() == 0 and idle.stop() == 0
