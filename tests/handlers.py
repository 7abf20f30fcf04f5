"""Handlers the test stack's workers load with `--handlers tests.handlers` (CONVEYOR_HANDLERS)."""

from __future__ import annotations

import time
from typing import Any

from conveyor.handlers import SyncJobContext, handler


@handler("test.sync_steps")
def sync_steps(payload: dict[str, Any], ctx: SyncJobContext) -> dict[str, int]:
    """A blocking handler (run in the worker's thread pool) that reports progress per step
    and stops early once cancelled."""
    steps = int(payload.get("steps", 5))
    for step in range(steps):
        if ctx.cancelled:
            return {"done": step}
        time.sleep(float(payload.get("delay", 0.05)))
        ctx.progress(100.0 * (step + 1) / steps, f"step {step + 1} of {steps}")
    return {"done": steps}
