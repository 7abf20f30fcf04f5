"""Deleting finished jobs, shared by retention's sweeper (conveyor.scheduling.sweeper) and
DeleteJobs (conveyor.api.bulk), in one order:
1. their objects (artifacts, results kept by reference) from the object store, first, so a
   crash between the steps leaves rows whose objects are gone (deleted again next time)
   rather than objects nobody can find (kept forever, and paid for);
2. their rows in one statement (attempts, once-markers and artifact rows cascade);
3. their hot state and event streams in Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from conveyor.objects import ObjectStore
from conveyor.redis import RedisQueue


async def remove_jobs(
    objects: ObjectStore,
    queue: RedisQueue,
    held: Sequence[tuple[str, str, list[str]]],
    delete_rows: Callable[[list[str]], Awaitable[int]],
) -> tuple[int, int]:
    """Delete finished jobs, given as (id, placement, object keys held): their objects,
    then their rows (`delete_rows`, which deletes those still deletable and says how
    many), then their hot state. How many rows and objects went."""
    keys = [key for _, _, kept in held for key in kept]
    await asyncio.to_thread(objects.delete, keys)
    gone = await delete_rows([job_id for job_id, _, _ in held])
    await queue.forget([(job_id, where) for job_id, where, _ in held])
    return gone, len(keys)
