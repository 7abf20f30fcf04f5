"""`conveyor.errors.outage`: a lost connection is UNAVAILABLE, except while the task is
being cancelled, when it must stay a cancellation (the SIGTERM that a service ignored)."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.errors import Unavailable, outage


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
