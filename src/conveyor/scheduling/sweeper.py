"""The sweeper: deletes finished jobs past their retention (see `conveyor.jobs.retention`).

It runs in the scheduler (every `CONVEYOR_SWEEP_INTERVAL_SECONDS`; with several
replicas, each takes turns through a Redis lock, and a double sweep would be harmless
anyway). Per batch of `CONVEYOR_SWEEP_BATCH` expired jobs it deletes, in this order:
1. their objects (artifacts, results kept by reference) from the object store, first, so a
   crash between the steps leaves rows whose objects are gone (swept again next time)
   rather than objects nobody can find (kept past their retention, and paid for);
2. their rows in one statement (attempts, once-markers and artifact rows cascade);
3. their hot state and event streams in Redis.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from conveyor.db.artifacts import ArtifactStore
from conveyor.errors import Unavailable
from conveyor.jobs.model import now_ms
from conveyor.objects import ObjectStore
from conveyor.redis import RedisQueue

log = logging.getLogger(__name__)

SWEEP_LOCK = "cv:sweep:lock"


@dataclass
class SweepStats:
    jobs: int = 0
    objects: int = 0


async def remove_jobs(
    objects: ObjectStore,
    queue: RedisQueue,
    held: Sequence[tuple[str, str, list[str]]],
    delete_rows: Callable[[list[str]], Awaitable[int]],
) -> tuple[int, int]:
    """Delete finished jobs, given as (id, placement, object keys held), in the order the
    module describes: objects, then rows (`delete_rows`, which deletes those still
    deletable and says how many), then hot state. How many rows and objects went. Shared
    by the sweeper and DeleteJobs (conveyor.api.bulk)."""
    keys = [key for _, _, kept in held for key in kept]
    await asyncio.to_thread(objects.delete, keys)
    gone = await delete_rows([job_id for job_id, _, _ in held])
    await queue.forget([(job_id, where) for job_id, where, _ in held])
    return gone, len(keys)


class Sweeper:
    def __init__(
        self,
        artifacts: ArtifactStore,
        objects: ObjectStore,
        queue: RedisQueue,
        *,
        batch: int,
        interval: float,
    ) -> None:
        self.artifacts = artifacts
        self.objects = objects
        self.queue = queue
        self.batch = batch
        self.interval = interval
        self.stats = SweepStats()
        self._me = secrets.token_hex(8)

    async def sweep(self, now: int | None = None) -> int:
        """Delete every job expired by `now`, a batch at a time; how many went."""
        now = now_ms() if now is None else now
        deleted = 0
        while True:
            expired = await self.artifacts.expired(now, self.batch)
            if not expired:
                break
            gone, objects = await remove_jobs(
                self.objects, self.queue, expired, lambda ids: self.artifacts.delete_jobs(ids, now)
            )
            deleted += gone
            self.stats.objects += objects
            if len(expired) < self.batch:
                break
        self.stats.jobs += deleted
        if deleted:
            log.info("retention: deleted %d expired job(s)", deleted)
        return deleted

    async def run(self) -> None:
        """Sweep every `interval` seconds, taking turns with other schedulers."""
        while True:
            try:
                lock_ms = int(self.interval * 1000)
                if await self.queue.try_lock(SWEEP_LOCK, self._me, lock_ms):
                    await self.sweep()
            except Unavailable as exc:
                log.warning("retention sweep skipped: %s", exc)
            except Exception:
                log.exception("retention sweep failed; trying again next interval")
            await asyncio.sleep(self.interval)
