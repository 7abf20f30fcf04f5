"""WorkerControl on a worker process's own port: admin only; status, stream, pause, resume,
drain (the process exits cleanly once its running jobs end)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from conveyor.client import AsyncClient, Job, JobState
from conveyor.v1 import worker_control_pb2 as wc
from conveyor.v1.worker_control_pb2_grpc import WorkerControlStub
from tests.processes import Keys, Service, Stack

QUEUE = "control"


@pytest.fixture
def worker(stack: Stack) -> Iterator[Service]:
    service = stack.start("worker", "--queues", QUEUE, "--concurrency", "2", env=stack.worker_env())
    yield service
    assert service.stop() == 0


@pytest.fixture
async def control(worker: Service) -> AsyncIterator[WorkerControlStub]:
    async with grpc.aio.insecure_channel(worker.addr) as channel:
        yield WorkerControlStub(channel)


async def until_claimable(client: AsyncClient, job_id: str) -> Job:
    """Wait until the API says the job waits only for a slot of a live worker that
    handles it (the worker is up, announced and able to claim it), and return the job.
    Blocked reasons have no stream to wait on, so this looks every 20 ms, for 10 s at most."""
    async with asyncio.timeout(10):
        while not (job := await client.get(job_id)).blocked_reason.startswith(  # noqa: ASYNC110
            "waiting for a worker slot"
        ):
            await asyncio.sleep(0.02)
    return job


def auth(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


async def test_only_admins_may_control_workers(control: WorkerControlStub, keys: Keys) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await control.GetWorkerStatus(wc.GetWorkerStatusRequest(), metadata=auth(keys.alice))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await control.PauseWorker(wc.PauseWorkerRequest())
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_bytes_that_do_not_parse_are_invalid_argument(worker: Service, keys: Keys) -> None:
    """Guards the worker's wire boundary as the fuzz suite guards the api's: garbage is
    INVALID_ARGUMENT with a detail that says so (not grpc's UNKNOWN), before the key."""
    async with grpc.aio.insecure_channel(worker.addr) as channel:
        call = channel.unary_unary(
            "/conveyor.v1.WorkerControl/DrainWorker",
            request_serializer=None,
            response_deserializer=None,
        )
        for metadata in (auth(keys.admin), ()):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(b"\x0a\xff\xff\xff\xff\x0f", metadata=metadata, timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid protobuf message" in (refused.value.details() or "")
    assert worker.proc.poll() is None, "the worker keeps running"


async def test_status_pause_resume_and_drain(
    control: WorkerControlStub, worker: Service, stack: Stack, keys: Keys, alice: AsyncClient
) -> None:
    admin = auth(keys.admin)
    status = (await control.GetWorkerStatus(wc.GetWorkerStatusRequest(), metadata=admin)).status
    assert status.state == wc.WORKER_STATE_RUNNING
    assert status.concurrency == 2 and list(status.queues) == [QUEUE] and status.worker_id

    paused = await control.PauseWorker(wc.PauseWorkerRequest(), metadata=admin)
    assert paused.status.state == wc.WORKER_STATE_PAUSED
    job = await alice.submit("sleep", {"seconds": 0.6, "steps": 3}, queue=QUEUE)
    held = await until_claimable(alice, job.id)
    assert held.state == JobState.QUEUED, "the paused worker claimed nothing"

    stream = control.WatchWorkerStatus(wc.WatchWorkerStatusRequest(), metadata=admin)
    resume_ms = int(time.time() * 1000)
    resumed = await control.ResumeWorker(wc.ResumeWorkerRequest(), metadata=admin)
    assert resumed.status.state == wc.WORKER_STATE_RUNNING
    seen_running = False
    async with asyncio.timeout(10):
        async for update in stream:
            if any(r.job_id == job.id for r in update.status.running_jobs):
                seen_running = True
                break
    stream.cancel()
    assert seen_running, "the status stream showed the job running"

    drained = await control.DrainWorker(wc.DrainWorkerRequest(), metadata=admin)
    assert drained.status.state == wc.WORKER_STATE_DRAINING
    exit_code = await asyncio.to_thread(worker.proc.wait, 15)
    assert exit_code == 0
    final = await alice.get(job.id)
    assert final.state == JobState.SUCCEEDED, "draining let the running job finish"
    [attempt] = await alice.attempts(job.id)
    assert attempt.start_time is not None
    assert attempt.start_time.timestamp() * 1000 >= resume_ms, "it started only after the resume"
