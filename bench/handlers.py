"""Handlers only the benchmarks load (`--handlers bench.handlers`)."""

from __future__ import annotations

import os
import time
from typing import Any

from redis.asyncio import Redis

from conveyor.handlers import JobContext, SyncJobContext, handler

STAMPS = "bench:stamps"
_redis: Redis | None = None


@handler("bench.stamp")
async def stamp(payload: dict[str, Any], ctx: JobContext) -> None:
    """Record when the handler started (wall clock, ns) for the submit→start latency bench."""
    started = time.time_ns()
    global _redis
    if _redis is None:
        _redis = Redis.from_url(os.environ["CONVEYOR_REDIS_URL"], decode_responses=True)
    await _redis.hset(STAMPS, ctx.job_id, started)


@handler("bench.spin")
async def spin(payload: dict[str, Any], ctx: JobContext) -> None:
    """Busy for BENCH_SPIN_MS milliseconds on the worker's loop: a CPU-bound handler, for
    the scaling bench (a process's handlers then compete for its one core)."""
    end = time.perf_counter() + float(os.environ.get("BENCH_SPIN_MS", "1")) / 1000
    while time.perf_counter() < end:
        pass


@handler("bench.isolated_noop", isolation="process")
def isolated_noop(payload: dict[str, Any], ctx: SyncJobContext) -> None:
    """Nothing, in a child process of its own: what process isolation costs an attempt."""
