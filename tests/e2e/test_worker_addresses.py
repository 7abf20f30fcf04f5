"""A worker announces where its WorkerControl is dialled (ListWorkers' `control_address`),
and the SDK's `AsyncWorkerControl` reaches that worker there: with a named host, and with a
wildcard host on port 0, where neither the host nor the port configured can be dialled."""

from __future__ import annotations

import asyncio
import socket
import uuid
from datetime import timedelta

import pytest

from conveyor.client import AsyncClient, AsyncWorkerControl
from conveyor.embedded import free_port
from conveyor.errors import PermissionDenied, Unavailable
from conveyor.v1 import queue_pb2
from conveyor.v1 import worker_control_pb2 as wpb
from tests.processes import Keys, Service, Stack


async def listed(admin: AsyncClient, queue: str, service: Service) -> queue_pb2.Worker:
    """The worker serving `queue` once ListWorkers lists it (it announces itself within a
    second of starting; the registry has no stream to wait on, so this looks every 20 ms,
    for 30 s at most)."""
    async with asyncio.timeout(30):
        while not (workers := await admin.workers(queue)):
            assert service.proc.poll() is None, service.tail()
            await asyncio.sleep(0.02)
    [worker] = workers
    return worker


@pytest.mark.parametrize("bound", ["127.0.0.1:{free}", "0.0.0.0:0"], ids=["named", "wildcard"])
async def test_the_listed_control_address_answers_for_that_worker(
    stack: Stack, admin: AsyncClient, keys: Keys, bound: str
) -> None:
    """Guards issue 24's workers page: the address in ListWorkers is dialable (the bound
    port, and for 0.0.0.0 this machine's address) and is the worker's own, whose status,
    stream, pause, resume and drain the SDK client drives; a user key is refused there."""
    queue = f"addr-{uuid.uuid4().hex[:8]}"
    configured = bound.format(free=free_port())
    service = stack.spawn("worker", "--queues", queue, env={"CONVEYOR_WORKER_ADDR": configured})
    try:
        worker = await listed(admin, queue, service)
        host, _, port = worker.control_address.rpartition(":")
        if configured.startswith("0.0.0.0"):
            assert host == socket.gethostbyname(socket.gethostname()) and int(port) > 0
        else:
            assert worker.control_address == configured

        async with AsyncWorkerControl(worker.control_address, api_key=keys.admin) as control:
            status = await control.status()
            assert status.worker_id == worker.worker_id and list(status.queues) == [queue]
            watch = control.watch_status()
            assert (await anext(watch)).state == wpb.WORKER_STATE_RUNNING
            assert (await control.pause()).state == wpb.WORKER_STATE_PAUSED
            assert (await anext(watch)).state == wpb.WORKER_STATE_PAUSED
            assert (await control.resume()).state == wpb.WORKER_STATE_RUNNING
            await watch.aclose()  # type: ignore[attr-defined]
            assert (await control.drain(grace=timedelta(0))).state == wpb.WORKER_STATE_DRAINING
        assert await asyncio.to_thread(service.proc.wait, 15) == 0

        async with AsyncWorkerControl(worker.control_address, api_key=keys.admin) as control:
            with pytest.raises(Unavailable):  # the drained worker exited
                await control.status()
    finally:
        assert service.stop() == 0, service.tail()


async def test_a_user_key_is_refused_by_a_workers_control(
    stack: Stack, admin: AsyncClient, keys: Keys
) -> None:
    """WorkerControl is for admin keys: the SDK client raises PermissionDenied for a user's."""
    [worker, *_] = await admin.workers()
    async with AsyncWorkerControl(worker.control_address, api_key=keys.alice) as control:
        with pytest.raises(PermissionDenied):
            await control.status()
        with pytest.raises(PermissionDenied):
            await control.pause()


def test_an_empty_address_is_refused_before_anything_is_dialled() -> None:
    """An older worker announces no address: the client must not fall back to the API's."""
    with pytest.raises(ValueError, match="no address"):
        AsyncWorkerControl("")
