"""A noisy owner for the `noisy_neighbour` workload, in a process of its own so that its
client-side work does not slow the quiet owner's client: `loops` tasks submit as fast as
they can, ignoring RetryInfo, for `seconds`; prints {"accepted": n, "refused": m}."""

from __future__ import annotations

import asyncio
import json
import sys
import time

from conveyor.client import AsyncClient
from conveyor.errors import ConveyorError


async def flood(addr: str, key: str, seconds: float, loops: int) -> dict[str, int]:
    counts = {"accepted": 0, "refused": 0}
    until = time.perf_counter() + seconds

    async def loop(client: AsyncClient) -> None:
        while time.perf_counter() < until:
            try:
                await client.submit("noop", queue="parked")
                counts["accepted"] += 1
            except ConveyorError:
                counts["refused"] += 1

    async with AsyncClient(addr, api_key=key) as client:
        await asyncio.gather(*(loop(client) for _ in range(loops)))
    return counts


if __name__ == "__main__":
    address, api_key, duration, tasks = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    print(json.dumps(asyncio.run(flood(address, api_key, float(duration), int(tasks)))))
