"""Built-in job types for tests, demos and benchmarks: `noop`, `sleep`, `fail`."""

from __future__ import annotations

import asyncio
from typing import Any

from conveyor.handlers.context import JobContext
from conveyor.handlers.registry import PermanentError, handler


@handler("noop")
async def noop(payload: dict[str, Any], ctx: JobContext) -> None:
    """Does nothing: the cost of the machinery itself."""


@handler("sleep")
async def sleep(payload: dict[str, Any], ctx: JobContext) -> None:
    """Sleeps `seconds` (default 1) in `steps` (default 10) slices, reporting progress."""
    seconds = float(payload.get("seconds", 1.0))
    steps = max(int(payload.get("steps", 10)), 1)
    if not 0 <= seconds <= 86_400:
        raise PermanentError("seconds must be between 0 and 86400")
    for step in range(steps):
        await asyncio.sleep(seconds / steps)
        ctx.progress(100.0 * (step + 1) / steps, f"slept {seconds * (step + 1) / steps:.2f}s")


@handler("fail")
async def fail(payload: dict[str, Any], ctx: JobContext) -> None:
    """Raises: `message` (default "failed on purpose"); `permanent: true` skips retries."""
    message = str(payload.get("message", "failed on purpose"))
    if payload.get("permanent"):
        raise PermanentError(message)
    raise RuntimeError(message)
