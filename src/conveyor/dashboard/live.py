"""A job page's live updates: one WatchJob stream per open page, as server-sent events.

The stream is read by a task of its own into a small queue, and the response sends what the
queue holds. The queue is bounded: every update is a whole snapshot of the job, so when a
slow browser falls behind the oldest waiting snapshots are dropped, never the newest. When
the browser goes away Starlette cancels the response, whose `finally` cancels the reader,
which cancels the gRPC call: nothing is left open. A comment line every `KEEPALIVE_SECONDS`
keeps proxies from closing a quiet stream and lets a gone browser be noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from conveyor.client import AsyncClient, Job
from conveyor.errors import ConveyorError

QUEUE_SIZE = 8
KEEPALIVE_SECONDS = 15.0
# What the queue carries: a job's event, or None when the watch ended (its job finished).
Event = dict[str, Any] | None


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


def _offer(queue: asyncio.Queue[Event], event: Event) -> None:
    """Put `event` without waiting: when full, drop the oldest snapshot to make room."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(event)


async def _read(client: AsyncClient, job_id: str, queue: asyncio.Queue[Event]) -> None:
    """Feed the job's updates into `queue`, then None when the watch ends (or fails: the
    page keeps what it shows, and a reload watches again)."""
    try:
        async for update in client.watch(job_id):
            _offer(queue, job_event(update.job))
    except ConveyorError:
        pass
    finally:  # whatever ended it, the response must not wait for more
        _offer(queue, None)


def _sse(event: dict[str, Any]) -> str:
    return f"event: job\ndata: {json.dumps(event)}\n\n"


async def job_events(client: AsyncClient, job_id: str) -> AsyncIterator[str]:
    """The job's updates as server-sent events, ending after its last one."""
    queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_SIZE)
    reader = asyncio.create_task(_read(client, job_id, queue), name=f"watch {job_id}")
    try:
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            if event is None:
                yield "event: end\ndata: {}\n\n"
                return
            yield _sse(event)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
