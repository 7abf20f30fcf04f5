"""The sweeper: deletes finished jobs past their retention (see `conveyor.jobs.retention`).

It runs in the scheduler (every `CONVEYOR_SWEEP_INTERVAL_SECONDS`; with several
replicas, each takes turns through a Redis lock, and a double sweep would be harmless
anyway). Per batch of `CONVEYOR_SWEEP_BATCH` expired jobs it deletes their objects, rows and
hot state, in the order `conveyor.api.removal.remove_jobs` keeps (which DeleteJobs shares).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass

from conveyor.api.removal import remove_jobs
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
