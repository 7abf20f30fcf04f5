"""Process isolation against a real worker process: a handler registered with
`isolation="process"` runs in a child that cancel and timeout kill and whose memory is
capped; the worker survives each of these and its slot is free again at once. And a
thread-mode handler that overruns its timeout is counted and keeps its slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import psutil
import pytest

from conveyor.client import AsyncClient, AttemptOutcome, Job, JobState
from conveyor.handlers import default_registry, load_modules
from conveyor.v1 import job_pb2
from conveyor.v1 import worker_control_pb2 as wc
from conveyor.v1.worker_control_pb2_grpc import WorkerControlStub
from tests.observability import scrape, value
from tests.processes import Keys, Service, Stack

QUEUE = "isolated"
TERMINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_DEAD, job_pb2.JOB_STATE_CANCELLED}


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Iterator[Service]:
    """One worker for the module, two slots, two children forked ahead of need."""
    service = stack.start(
        "worker",
        "--queues",
        QUEUE,
        "--concurrency",
        "2",
        env={
            **stack.worker_env(),
            "CONVEYOR_HANDLERS": "tests.handlers,tests.isolated_handlers",
            "CONVEYOR_PROCESS_POOL_SIZE": "2",
            "CONVEYOR_KILL_GRACE_SECONDS": "0.5",
        },
    )
    yield service
    assert service.stop() == 0, service.tail()


@pytest.fixture
async def control(worker: Service) -> AsyncIterator[WorkerControlStub]:
    async with grpc.aio.insecure_channel(worker.addr) as channel:
        yield WorkerControlStub(channel)


async def status(control: WorkerControlStub, keys: Keys) -> wc.WorkerStatus:
    metadata = (("authorization", f"Bearer {keys.admin}"),)
    response = await control.GetWorkerStatus(wc.GetWorkerStatusRequest(), metadata=metadata)
    current: wc.WorkerStatus = response.status
    return current


async def finished(client: AsyncClient, job_id: str, seconds: float = 20) -> Job:
    async with asyncio.timeout(seconds):
        async for update in client.watch(job_id):
            if update.job.state.terminal:
                return update.job
    raise AssertionError("the watch ended before a terminal state")


async def wait_for(predicate: object, seconds: float) -> None:
    """Poll a cheap local condition (a file, a pid) until it holds; fail after `seconds`."""
    assert callable(predicate)
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def children_of(worker: Service) -> set[int]:
    return {p.pid for p in psutil.Process(worker.proc.pid).children(recursive=True)}


async def test_a_busy_loop_is_cancelled_within_2_s_and_its_process_is_gone(
    worker: Service, alice: AsyncClient, tmp_path: Path, control: WorkerControlStub, keys: Keys
) -> None:
    pidfile = tmp_path / "pid"
    job = await alice.submit("isolated.spin", {"pidfile": str(pidfile)}, queue=QUEUE)
    await wait_for(pidfile.exists, 20)
    await wait_for(lambda: pidfile.read_text() != "", 5)
    pid = int(pidfile.read_text())
    assert pid in children_of(worker), "the handler runs in a child of the worker"

    cancelled_at = time.monotonic()
    await alice.cancel(job.id)
    ended = await finished(alice, job.id)
    assert ended.state == JobState.CANCELLED
    await wait_for(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 2
    )
    gone = time.monotonic() - cancelled_at
    while (await status(control, keys)).running_jobs:  # its slot
        assert time.monotonic() - cancelled_at < 1.0, "the slot was not free within a second"
        await asyncio.sleep(0.02)
    freed = time.monotonic() - cancelled_at
    print(f"\nisolated cancel: process gone {gone:.2f} s, slot free {freed:.2f} s after it")
    assert gone < 2.0, "the process was not gone within 2 s"

    # Both slots run new jobs at once.
    start = time.monotonic()
    jobs = [await alice.submit("isolated.work", {}, queue=QUEUE) for _ in range(2)]
    done = [await finished(alice, j.id) for j in jobs]
    assert [j.state for j in done] == [JobState.SUCCEEDED] * 2
    assert time.monotonic() - start < 5.0
    assert (await status(control, keys)).overrunning_handlers == 0


async def test_a_timeout_kills_the_child_and_is_recorded_as_timed_out(
    worker: Service, alice: AsyncClient, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    job = await alice.submit(
        "isolated.spin",
        {"pidfile": str(pidfile)},
        queue=QUEUE,
        timeout=timedelta(seconds=1),
        max_attempts=1,
    )
    ended = await finished(alice, job.id)
    assert ended.state == JobState.DEAD
    [attempt] = await alice.attempts(job.id)
    assert attempt.outcome == AttemptOutcome.TIMED_OUT
    pid = int(pidfile.read_text())
    await wait_for(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 2
    )


async def test_past_its_memory_limit_an_attempt_fails_naming_the_limit(
    worker: Service, alice: AsyncClient
) -> None:
    baseline = psutil.Process(worker.proc.pid).memory_info().rss
    job = await alice.submit("isolated.hog", {"mb": 1024}, queue=QUEUE, max_attempts=1)
    ended = await finished(alice, job.id)
    assert ended.state == JobState.DEAD
    assert "killed: memory limit 64 MB exceeded" in ended.error
    [attempt] = await alice.attempts(job.id)
    assert attempt.outcome == AttemptOutcome.FAILED
    # The gigabyte was the child's: the worker itself did not grow.
    grown = psutil.Process(worker.proc.pid).memory_info().rss - baseline
    assert grown < 32 << 20, f"the worker grew by {grown >> 20} MiB"
    # And it still runs jobs.
    after = await alice.submit("isolated.work", {}, queue=QUEUE)
    assert (await finished(alice, after.id)).state == JobState.SUCCEEDED


async def test_progress_once_artifacts_and_results_work_from_a_child(
    worker: Service, alice: AsyncClient
) -> None:
    job = await alice.submit("isolated.work", {}, queue=QUEUE)
    seen = []
    async with asyncio.timeout(20):
        async for update in alice.watch(job.id):
            seen.append(update.job.progress)
            if update.job.state.terminal:
                break
    assert update.job.state == JobState.SUCCEEDED, update.job.error
    assert 50.0 in seen, "the child's progress reached the job"
    result = (await alice.result(job.id)).result
    assert result is not None
    assert result["first"] is True and result["again"] is False, "once holds across calls"
    assert result["read"] == "made in a child"
    assert result["pid"] != worker.proc.pid
    artifacts = (await alice.result(job.id)).artifacts
    assert [a.name for a in artifacts] == ["out.txt"]

    async_job = await alice.submit("isolated.async_work", {}, queue=QUEUE)
    assert (await finished(alice, async_job.id)).state == JobState.SUCCEEDED
    async_result = (await alice.result(async_job.id)).result
    assert async_result is not None and async_result["first"] is True


async def test_failures_in_a_child_keep_their_meaning(worker: Service, alice: AsyncClient) -> None:
    permanent = await alice.submit("isolated.work", {"fail": "permanent"}, queue=QUEUE)
    ended = await finished(alice, permanent.id)
    assert ended.state == JobState.DEAD and ended.attempt == 1
    assert "PermanentError: refused on purpose" in ended.error

    retried = await alice.submit("isolated.work", {"fail": "yes"}, queue=QUEUE, max_attempts=2)
    ended = await finished(alice, retried.id)
    assert ended.state == JobState.DEAD and ended.attempt == 2
    attempts = await alice.attempts(retried.id)
    assert "RuntimeError: failing on purpose" in attempts[0].error
    assert "failing on purpose" in attempts[0].traceback


async def test_a_thread_handler_past_its_timeout_is_counted_and_holds_its_slot(
    worker: Service, alice: AsyncClient, control: WorkerControlStub, keys: Keys
) -> None:
    job = await alice.submit(
        "thread.stuck", {"seconds": 3}, queue=QUEUE, max_attempts=1, timeout=timedelta(seconds=0.3)
    )
    ended = await finished(alice, job.id)
    assert ended.state == JobState.DEAD
    held = await status(control, keys)
    assert held.overrunning_handlers == 1
    samples = await asyncio.to_thread(scrape, worker)
    assert value(samples, "conveyor_worker_overrunning_handlers") == 1
    assert value(samples, "conveyor_handler_overruns_total") >= 1
    deadline = time.monotonic() + 10
    while (await status(control, keys)).overrunning_handlers:
        assert time.monotonic() < deadline, "the overrun never ended"
        await asyncio.sleep(0.1)


async def test_the_worker_survived_every_one_of_these(worker: Service, alice: AsyncClient) -> None:
    assert worker.proc.poll() is None
    job = await alice.submit("isolated.noop", {}, queue=QUEUE)
    assert (await finished(alice, job.id)).state == JobState.SUCCEEDED
    assert psutil.pid_exists(worker.proc.pid)


def test_built_ins_that_run_what_a_user_wrote_are_isolated() -> None:
    """csv.export runs a user's query and email.send a user's templates: each attempt in
    a child the worker can kill, with its memory capped."""
    load_modules([])
    for name in ("csv.export", "email.send"):
        spec = default_registry.get(name)
        assert spec is not None and spec.isolation == "process", name
        assert spec.memory_limit_mb, name


async def test_a_child_dies_with_its_worker(
    stack: Stack, alice: AsyncClient, tmp_path: Path
) -> None:
    """A worker killed with -9 leaves no handler running on: its job will run again
    elsewhere once the lease lapses, and a child still spinning would run it twice."""
    doomed = stack.start(
        "worker",
        "--queues",
        "isolated-doomed",
        env={**stack.worker_env(), "CONVEYOR_HANDLERS": "tests.handlers,tests.isolated_handlers"},
    )
    pidfile = tmp_path / "pid"
    await alice.submit("isolated.spin", {"pidfile": str(pidfile)}, queue="isolated-doomed")
    await wait_for(lambda: pidfile.exists() and pidfile.read_text() != "", 60)
    pid = int(pidfile.read_text())
    doomed.kill()
    await wait_for(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 5
    )
