"""Handlers the test stack's workers load with `--handlers tests.handlers` (CONVEYOR_HANDLERS).

Side effects that tests must count go to a file named in the payload (`log`): one line per
effect, appended with O_APPEND so concurrent workers never interleave within a line.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from conveyor.handlers import JobContext, RateLimited, SyncJobContext, handler, retry


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


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


@handler("test.effect")
async def effect(payload: dict[str, Any], ctx: JobContext) -> None:
    """Logs `started <id> <attempt>`, performs the side effect `once` guards (a line
    `effect <id> <attempt>`), reports progress 10, sleeps `seconds`, then fails while
    attempt <= `fail_until`."""
    log = str(payload["log"])
    _append(log, f"started {ctx.job_id} {ctx.attempt}")
    if await ctx.once(str(payload.get("key", "effect"))):
        _append(log, f"effect {ctx.job_id} {ctx.attempt}")
    ctx.progress(10, "past the effect")
    await asyncio.sleep(float(payload.get("seconds", 0)))
    if ctx.attempt <= int(payload.get("fail_until", 0)):
        raise RuntimeError(f"failing attempt {ctx.attempt} on purpose")


@handler("test.sync_effect")
def sync_effect(payload: dict[str, Any], ctx: SyncJobContext) -> None:
    """`test.effect` for the thread-pool path."""
    log = str(payload["log"])
    if ctx.once(str(payload.get("key", "effect"))):
        _append(log, f"effect {ctx.job_id} {ctx.attempt}")
    if ctx.attempt <= int(payload.get("fail_until", 0)):
        raise RuntimeError(f"failing attempt {ctx.attempt} on purpose")


@handler("test.crash")
def crash(payload: dict[str, Any], ctx: SyncJobContext) -> None:
    """A poison job: kills its worker process outright, as a segfault would."""
    if payload.get("log"):
        _append(str(payload["log"]), f"crash {ctx.job_id} {ctx.attempt} {os.getpid()}")
    os._exit(70)


@handler("test.policy", max_attempts=4, retry=retry(initial=0.3, maximum=0.6, jitter=0.0))
async def policy(payload: dict[str, Any], ctx: JobContext) -> None:
    """Always fails, under a retry policy of its own type (for the per-type policy test)."""
    raise RuntimeError("always fails")


@handler("test.touch")
async def touch(payload: dict[str, Any], ctx: JobContext) -> None:
    """Appends `<id> <attempt>` to `log` after `seconds`: who ran what, and how often."""
    await asyncio.sleep(float(payload.get("seconds", 0)))
    _append(str(payload["log"]), f"{ctx.job_id} {ctx.attempt}")


def _exists(path: str) -> bool:
    return os.path.exists(path)  # a stat of a local file: too quick to need a thread


async def _wait_for_file(path: str) -> None:
    """Until `path` exists (a test's gate: a file the test makes); cancel ends the wait."""
    while True:
        if _exists(path):
            return
        await asyncio.sleep(0.02)


@handler("test.hold")
async def hold(payload: dict[str, Any], ctx: JobContext) -> None:
    """Logs `started <id> <attempt>`; its first `hold_attempts` attempts (default 1) then
    hold until the file `gate` exists (never, if the test does not make it), as a long job
    would; then logs `done <id> <attempt>`. A worker holding it can be killed or frozen
    mid-job at a moment the test picks."""
    log = str(payload["log"])
    _append(log, f"started {ctx.job_id} {ctx.attempt}")
    if ctx.attempt <= int(payload.get("hold_attempts", 1)):
        ctx.progress(50, "holding")
        await _wait_for_file(str(payload["gate"]))
    _append(log, f"done {ctx.job_id} {ctx.attempt}")


@handler("test.throttled_once")
async def throttled_once(payload: dict[str, Any], ctx: JobContext) -> None:
    """Its first run makes the file `flag` and raises RateLimited(retry_after=`seconds`), as
    a handler given a 429 would; any later run (the flag is there) succeeds."""
    flag = str(payload["flag"])
    if not _exists(flag):
        _append(flag, "throttled")
        raise RateLimited(retry_after=float(payload["seconds"]))


@handler("test.throttled_once_isolated", isolation="process")
def throttled_once_isolated(payload: dict[str, Any], ctx: SyncJobContext) -> None:
    """test.throttled_once in a child process of its own (the RateLimited crosses the
    isolation wire)."""
    flag = str(payload["flag"])
    if not _exists(flag):
        _append(flag, "throttled")
        raise RateLimited(retry_after=float(payload["seconds"]))


@handler("test.block_loop")
async def block_loop(payload: dict[str, Any], ctx: JobContext) -> None:
    """An `async def` handler that blocks its worker's event loop for `seconds` (a
    blocking library called from a coroutine: a common mistake), logging `started` and
    `done <id> <attempt>`."""
    log = str(payload["log"])
    _append(log, f"started {ctx.job_id} {ctx.attempt}")
    time.sleep(float(payload["seconds"]))  # noqa: ASYNC251 (the mistake this test makes on purpose)
    _append(log, f"done {ctx.job_id} {ctx.attempt}")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@handler("test.result")
async def result(payload: dict[str, Any], ctx: JobContext) -> object:
    """Returns `value`; or `bytes` characters of text; or, with `unjsonable`, a set."""
    if payload.get("unjsonable"):
        return {"a set": {1, 2}}
    if "bytes" in payload:
        return {"text": "x" * int(payload["bytes"])}
    return payload.get("value")


@handler("test.artifact")
def artifact(payload: dict[str, Any], ctx: SyncJobContext) -> dict[str, int]:
    """Puts `count` artifacts `a<i>.txt`, each `size` bytes of a pattern (streamed in chunks)."""
    size = int(payload.get("size", 1000))
    for i in range(int(payload.get("count", 1))):
        pattern = f"artifact {i} ".encode()
        chunks = (pattern * (size // len(pattern) + 1))[:size]
        ctx.artifacts.put(f"a{i}.txt", [chunks[n : n + 65536] for n in range(0, size, 65536)])
    return {"count": int(payload.get("count", 1))}


@handler("test.collect")
async def collect(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Returns what its dependencies returned (`ctx.dependency_results()`) under `results`,
    and its payload's `batch` (a batch callback's) under `batch`."""
    return {"results": await ctx.dependency_results(), "batch": payload.get("batch")}


@handler("test.sync_collect")
def sync_collect(payload: dict[str, Any], ctx: SyncJobContext) -> dict[str, Any]:
    """`test.collect` for the thread-pool path."""
    return {"results": ctx.dependency_results()}
