"""Built-in job types for tests, demos and benchmarks: `noop`, `sleep`, `fail`."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from conveyor.handlers.context import JobContext
from conveyor.handlers.registry import PermanentError, handler


@handler("noop")
async def noop(payload: dict[str, Any], ctx: JobContext) -> None:
    """Does nothing: the cost of the machinery itself."""


class SleepPayload(BaseModel):
    """`sleep`'s payload, checked at submit like every built-in's: numbers only (no "three"
    or "3"), and no field it does not know (a misspelt `secs` is refused, not ignored)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    seconds: float = Field(1.0, ge=0, le=86_400)
    steps: int = Field(10, ge=1, le=10_000)


@handler("sleep")
async def sleep(payload: SleepPayload, ctx: JobContext) -> None:
    """Sleeps `seconds` (default 1) in `steps` (default 10) slices, reporting progress."""
    seconds, steps = payload.seconds, payload.steps
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
