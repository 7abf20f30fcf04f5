"""`conveyor.errors.outage`: a lost connection is UNAVAILABLE, except while the task is
being cancelled, when it must stay a cancellation (the SIGTERM that a service ignored).
`conveyor.redis.queue.refusal`: which Redis errors are a Redis refusing writes for now."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import NoScriptError, OutOfMemoryError, ReadOnlyError, ResponseError

from conveyor.errors import Unavailable, outage
from conveyor.redis.queue import refusal


async def test_a_lost_connection_is_unavailable() -> None:
    assert isinstance(outage("redis"), Unavailable)


async def test_a_connection_error_raised_by_a_cancelled_task_stays_a_cancellation() -> None:
    """Guards the loops that retry outages: redis-py may answer a cancellation with a
    connection error; treated as an outage, the loop would carry on forever."""
    seen: list[BaseException] = []

    async def loop() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                error = outage("redis")  # what a library's ConnectionError would become
                seen.append(error)
                raise error from None

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [type(e) for e in seen] == [asyncio.CancelledError]


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        # redis-py's own classes, as it parses a direct reply (the code stripped).
        (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), "out of memory"),
        (ReadOnlyError("You can't write against a read only replica."), "read-only replica"),
        # What a script's failed redis.call comes back as on Redis 6.2 (seen in the fault test).
        (
            ResponseError(
                "Error running script (call to f_6551): @user_script:177: @user_script: 177: "
                "-OOM command not allowed when used memory > 'maxmemory'."
            ),
            "out of memory",
        ),
        (
            ResponseError("MISCONF Redis is configured to save RDB snapshots"),
            "cannot persist to disk",
        ),
        (ResponseError("BUSY Redis is busy running a script."), "busy running a script"),
        # Bugs are not conditions to wait out.
        (ResponseError("ERR unknown command 'NOSUCHCOMMAND'"), None),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), None),
        (NoScriptError("No matching script."), None),
        (ValueError("BUSY"), None),
    ],
)
def test_refusals_are_told_from_bugs(error: Exception, reason: str | None) -> None:
    """Guards the line between UNAVAILABLE (Redis refuses for now: retry) and INTERNAL (a
    bug): a refusal a script met arrives as a plain ResponseError, found by its code."""
    assert refusal(error) == reason
