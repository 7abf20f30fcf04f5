"""Live pages: gRPC server streams as server-sent events (`events`), for a job page (one
WatchJob stream, `job_events`) and the workers page (a WatchWorkerStatus stream per worker,
`conveyor.dashboard.workers`).

Each stream is read by a task of its own (a `Reader`) into a small queue of its own, and the
response sends what the queues hold, as they fill. Each queue is bounded: every update is a
whole snapshot, so when a slow browser falls behind the oldest waiting snapshots of that
stream are dropped, never the newest, and never another stream's. When the browser goes
away Starlette cancels the response, whose `finally` cancels the readers, which cancel their
gRPC calls: nothing is left open. A comment line every `KEEPALIVE_SECONDS` keeps proxies
from closing a quiet stream and lets a gone browser be noticed. Once every stream has ended
the response sends an `end` event and ends (the page does not reconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from conveyor.client import AsyncClient, Job
from conveyor.errors import ConveyorError

log = logging.getLogger(__name__)

QUEUE_SIZE = 8
KEEPALIVE_SECONDS = 15.0
# An event stream's response headers: never cached, never buffered by a proxy (nginx).
SSE_HEADERS = {"cache-control": "no-store", "x-accel-buffering": "no"}
# One server-sent event: its name and its data (sent as JSON).
Event = tuple[str, dict[str, Any]]
# What a reader hands its events to (it never waits: see `_offer`).
Put = Callable[[Event], None]
# Reads one stream, handing each update to `put`, until the stream ends.
Reader = Callable[[Put], Awaitable[None]]


def job_event(job: Job) -> dict[str, Any]:
    """What the page shows live of a job (see static/dashboard.js)."""
    return {
        "state": job.state.name,
        "terminal": job.state.terminal,
        "progress": round(job.progress),  # 0 to 100
        "progress_message": job.progress_message,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "blocked_reason": job.blocked_reason,
        "error": job.error,
    }


def job_events(client: AsyncClient, job_id: str) -> AsyncIterator[str]:
    """The job's updates as server-sent events, ending after its last one."""

    async def read(put: Put) -> None:
        # A failed watch ends quietly: the page keeps what it shows, and a reload watches again.
        with contextlib.suppress(ConveyorError):
            async for update in client.watch(job_id):
                put(("job", job_event(update.job)))

    return events({job_id: read})


async def events(readers: Mapping[str, Reader]) -> AsyncGenerator[str, None]:
    """Server-sent events of every reader's stream at once (each a task, named by its
    key), then `end` once they have all ended."""
    ready = asyncio.Event()
    queues: dict[str, asyncio.Queue[Event | None]] = {}
    tasks: list[asyncio.Task[None]] = []
    for name, read in readers.items():
        queues[name] = asyncio.Queue(QUEUE_SIZE)
        tasks.append(asyncio.create_task(_feed(read, queues[name], ready), name=f"watch {name}"))
    try:
        while queues:
            try:
                async with asyncio.timeout(KEEPALIVE_SECONDS):
                    await ready.wait()
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            ready.clear()  # before taking: what arrives meanwhile sets it again
            for name, queue in list(queues.items()):
                while not queue.empty():
                    event = queue.get_nowait()
                    if event is None:  # that stream ended
                        del queues[name]
                        break
                    yield _sse(*event)
        yield _sse("end", {})
    finally:
        await _stop(tasks)


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the readers, wait for them, then forget them. A cancelled task keeps its
    CancelledError, whose traceback holds the frames of the gRPC call it was reading: kept,
    they would keep that call and its channel's connection (to a worker) open until the
    garbage collector's next pass, which a quiet service makes rarely (`tune_collector`)."""
    for task in tasks:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks, return_exceptions=True)
    tasks.clear()


async def _feed(read: Reader, queue: asyncio.Queue[Event | None], ready: asyncio.Event) -> None:
    """Run `read` into `queue`, then None when it ends, however it ends (the response must
    not wait for more)."""

    def put(event: Event | None) -> None:
        _offer(queue, event)
        ready.set()

    try:
        await read(put)
    except Exception:  # a bug: the page stops updating that part; the rest goes on
        log.exception("a live stream's reader failed")
    finally:
        put(None)


def _offer(queue: asyncio.Queue[Event | None], event: Event | None) -> None:
    """Put `event` without waiting: when full, drop the oldest snapshot to make room."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(event)


def _sse(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"
