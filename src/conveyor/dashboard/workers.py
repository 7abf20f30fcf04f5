"""The workers page's live part and its Pause / Resume / Drain: WorkerControl of each
worker process, on its own port, with the logged-in user's own key.

A worker announces where it serves WorkerControl (ListWorkers' `control_address`); the
dashboard dials only addresses it read from ListWorkers, found by the worker's id
(`find_worker`), never one a request names: no browser can make the dashboard dial a host
of its choosing (SSRF). The events of the page (`worker_events`) are one WatchWorkerStatus
stream per listed worker, at most `WATCH_LIMIT` of them (the first ListWorkers gives, the
longest-running: a page of a larger fleet says it shows only those), multiplexed into one
response by `live.events`. A worker that cannot be reached, or that announces no address
(an older version), is an event that says so, and the other rows go on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from conveyor.client import AsyncClient, AsyncWorkerControl
from conveyor.dashboard.live import Put, Reader, events
from conveyor.errors import ConveyorError, FailedPrecondition, NotFound
from conveyor.v1 import queue_pb2
from conveyor.v1 import worker_control_pb2 as wpb

# Workers one page watches at most: a WatchWorkerStatus stream and a channel each, held on
# the dashboard and on the workers while the page is open.
WATCH_LIMIT = 50
NO_ADDRESS = "announces no control address (a worker of an older version)"


def worker_event(status: wpb.WorkerStatus) -> dict[str, Any]:
    """What a row shows live of a worker (see static/dashboard.js)."""
    return {
        "worker_id": status.worker_id,
        "reachable": True,
        "state": wpb.WorkerState.Name(status.state).removeprefix("WORKER_STATE_"),
        "concurrency": status.concurrency,
        "processed": status.processed,
        "failed": status.failed,
        "running_jobs": [
            {"job_id": r.job_id, "type": r.type, "progress": round(r.progress)}
            for r in status.running_jobs
        ],
    }


def unreachable(worker_id: str, why: str) -> dict[str, Any]:
    return {"worker_id": worker_id, "reachable": False, "error": why}


def worker_events(workers: Sequence[queue_pb2.Worker], api_key: str) -> AsyncIterator[str]:
    """The live status of the first `WATCH_LIMIT` of `workers` as server-sent events."""
    return events({w.worker_id: _reader(w, api_key) for w in workers[:WATCH_LIMIT]})


def _reader(worker: queue_pb2.Worker, api_key: str) -> Reader:
    async def read(put: Put) -> None:
        if not worker.control_address:
            put(("worker", unreachable(worker.worker_id, NO_ADDRESS)))
            return
        try:
            async with AsyncWorkerControl(worker.control_address, api_key=api_key) as control:
                async for status in control.watch_status():
                    put(("worker", worker_event(status)))
        except ConveyorError as exc:  # its last status stays; the row says why it stopped
            put(("worker", unreachable(worker.worker_id, str(exc))))

    return read


async def find_worker(client: AsyncClient, worker_id: str) -> queue_pb2.Worker:
    """The live worker `worker_id` as ListWorkers gives it (PermissionDenied for a user
    key); NotFound when no live worker has that id."""
    for worker in await client.workers():
        if worker.worker_id == worker_id:
            return worker
    raise NotFound(f"no live worker {worker_id}")


async def control(worker: queue_pb2.Worker, api_key: str, action: str) -> wpb.WorkerStatus:
    """Pause, resume or drain `worker` at its announced address; its status after.
    FailedPrecondition when it announces no address; the worker's refusals as raised."""
    if not worker.control_address:
        raise FailedPrecondition(NO_ADDRESS)
    async with AsyncWorkerControl(worker.control_address, api_key=api_key) as worker_control:
        act = {
            "pause": worker_control.pause,
            "resume": worker_control.resume,
            "drain": worker_control.drain,
        }[action]
        return await act()
