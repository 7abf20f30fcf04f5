"""Process-isolated handlers (`isolation="process"`) for the isolation tests. Kept apart
from `tests.handlers` so that only the workers of those tests fork children for them."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from conveyor.handlers import JobContext, SyncJobContext, handler


@handler("isolated.spin", isolation="process", timeout=60)
def spin(payload: dict[str, Any], ctx: SyncJobContext) -> None:
    """A busy loop that never looks at `ctx.cancelled`: only killing its process stops it.
    It writes its pid to `pidfile` first, so a test can check the process is gone."""
    with open(str(payload["pidfile"]), "w") as out:
        out.write(str(os.getpid()))
    ctx.progress(1, "spinning")
    while True:
        pass


@handler("isolated.hog", isolation="process", memory_limit_mb=64)
def hog(payload: dict[str, Any], ctx: SyncJobContext) -> None:
    """Allocates `mb` MiB, a MiB at a time, held: past 64 MiB its limit stops it."""
    held = [bytearray(1 << 20) for _ in range(int(payload.get("mb", 1024)))]
    ctx.progress(100, f"held {len(held)} MiB")


@handler("isolated.work", isolation="process")
def work(payload: dict[str, Any], ctx: SyncJobContext) -> dict[str, Any]:
    """Everything a handler can do, from a child: progress, `once`, an artifact, a result,
    or a failure when `fail` says so."""
    ctx.progress(50, "half way")
    first = ctx.once("effect")
    again = ctx.once("effect")
    if payload.get("fail") == "permanent":
        from conveyor.handlers import PermanentError

        raise PermanentError("refused on purpose")
    if payload.get("fail"):
        raise RuntimeError("failing on purpose")
    stored = ctx.artifacts.put("out.txt", b"made in a child")
    return {
        "pid": os.getpid(),
        "first": first,
        "again": again,
        "artifact": stored.name,
        "size": stored.size,
        "read": ctx.artifacts.read("out.txt").decode(),
    }


@handler("isolated.async_work", isolation="process")
async def async_work(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """An async handler in a child: its own event loop, `await ctx.once`."""
    ctx.progress(10, "started")
    await asyncio.sleep(float(payload.get("seconds", 0)))
    return {"pid": os.getpid(), "first": await ctx.once("effect")}


@handler("isolated.noop", isolation="process")
def noop(payload: dict[str, Any], ctx: SyncJobContext) -> None:
    """Nothing: what isolation itself costs (the bench's isolated drain)."""


@handler("thread.stuck", timeout=0.3)
def stuck(payload: dict[str, Any], ctx: SyncJobContext) -> None:
    """A thread-mode handler that overruns its timeout and ignores cancellation."""
    time.sleep(float(payload.get("seconds", 2)))
