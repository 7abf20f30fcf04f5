"""A client process that submits as fast as it can, for the workloads that need clients in
processes of their own: the noisy owner of `noisy_neighbour` (so that its client-side work
does not slow the quiet owner's client) and the 16 client processes of `api_processes`.
`loops` tasks submit, ignoring RetryInfo, for `seconds` from `start_at` (epoch seconds; 0:
at once), so that many processes started one after another submit over the same window;
prints {"accepted": n, "refused": m}."""

from __future__ import annotations

import asyncio
import json
import sys
import time

from conveyor.client import AsyncClient
from conveyor.errors import ConveyorError


async def flood(
    addr: str, key: str, seconds: float, loops: int, start_at: float = 0.0
) -> dict[str, int]:
    counts = {"accepted": 0, "refused": 0}

    async def loop(client: AsyncClient, until: float) -> None:
        while time.perf_counter() < until:
            try:
                await client.submit("noop", queue="parked")
                counts["accepted"] += 1
            except ConveyorError:
                counts["refused"] += 1

    async with AsyncClient(addr, api_key=key) as client:
        await asyncio.sleep(max(start_at - time.time(), 0))
        until = time.perf_counter() + seconds
        await asyncio.gather(*(loop(client, until) for _ in range(loops)))
    return counts


if __name__ == "__main__":
    address, api_key, duration, tasks = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    start = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    print(json.dumps(asyncio.run(flood(address, api_key, float(duration), int(tasks), start))))
