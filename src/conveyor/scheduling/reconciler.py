"""The reconciler: PostgreSQL is the truth, and Redis is brought back in line with it.

Submitting commits the job row, then enqueues it in Redis; a crash between the two, a Redis
restart without persistence or a FLUSHALL leaves committed jobs that Redis does not know.
The reconciler walks every unfinished job in the database (by primary key, in pages of ids
and fences) and runs `reconcile.lua` on each page: a job Redis holds in the wrong set is put
back in its set, and a RUNNING job whose lease deadline vanished gets a deadline of now, so
the next claim reclaims it. Only the jobs Redis lacks are then read in full and put back in
line by `restore.lua`, so a pass over a large healthy backlog sends ids, not payloads. Every
step is idempotent, so a pass may repeat, overlap a submit in flight, or run on several
replicas at once without harm.

When it runs:
- **At once when Redis lost its data.** The reconciler keeps a marker key (`cv:epoch`) in
  Redis and looks for it every `redis_check_seconds`. Its absence means Redis restarted
  empty or was flushed; the replica that sets a new marker first (SET NX) runs a pass.
- **At once when Redis may have lost writes**: the Redis process (each primary's, on a
  cluster) is not the one of the last check, by its run id. A restart with persistence
  keeps the marker but may lose the last second of writes; a cluster failover promotes a
  replica that asynchronous replication may have left a few writes behind. On a cluster
  the marker lives on one primary, so a single primary restarted empty without a replica
  is found this way too.
- **Every `reconcile_interval_seconds`** otherwise, by whichever replica takes the pass lock,
  for the rarer gaps (a submitter killed between commit and enqueue).

Before the walk it resolves the ended jobs whose dependents were never told (their writer
died between the end and its resolution: conveyor.jobs.dependencies); the dependents that
releases are unfinished jobs Redis lacks, which the walk then puts in line. Jobs still
waiting for dependencies are not Redis's, and the walk leaves them alone.

What it does not do: jobs the database already holds as finished are not looked at, so a job
cancelled in the database while Redis was unreachable can still run once from Redis (its
outcome is then refused and Redis converges to CANCELLED).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass

from conveyor.config import Settings
from conveyor.db import JobStore
from conveyor.db.dependencies import DependencyStore
from conveyor.db.queues import QueueStore
from conveyor.errors import Unavailable
from conveyor.redis import RedisQueue
from conveyor.redis.keys import RECONCILE_LOCK

log = logging.getLogger(__name__)

PAGE_SIZE = 1000


@dataclass(slots=True)
class PassStats:
    """What one pass found: unfinished jobs looked at, and how many of them were restored
    (Redis lacked them), replayed (a newer fence) or repaired (missing from their set)."""

    checked: int = 0
    resolved: int = 0
    restored: int = 0
    replayed: int = 0
    repaired: int = 0

    @property
    def changed(self) -> int:
        return self.resolved + self.restored + self.replayed + self.repaired


class Reconciler:
    def __init__(
        self, store: JobStore, queue: RedisQueue, settings: Settings, queues: QueueStore
    ) -> None:
        self.store = store
        self.dependencies = DependencyStore(store.db)
        self.queue = queue
        self.queues = queues
        self.settings = settings
        self.replica = secrets.token_hex(8)
        self._last_pass = float("-inf")
        # The Redis server processes seen at the last check (see `RedisQueue.incarnations`).
        self._incarnations: frozenset[str] | None = None

    async def run(self) -> None:
        """Reconcile until cancelled; outages of either store only delay it."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                lost = await self._redis_lost()
                due = loop.time() - self._last_pass >= self.settings.reconcile_interval_seconds
                if lost or (due and await self._take_turn()):
                    self._last_pass = loop.time()
                    await self.reconcile()
                elif due:
                    self._last_pass = loop.time()  # another replica's turn
            except Unavailable as exc:
                log.warning("reconciler: %s; trying again", exc)
            await asyncio.sleep(self.settings.redis_check_seconds)

    async def _redis_lost(self) -> bool:
        """True if Redis may have lost data and this replica is to repair it: Redis has no
        epoch marker and this replica set the new one, or the servers holding the data
        are not the processes they were at the last look and this replica takes the
        pass lock (every replica sees the change; one pass is enough)."""
        if await self.queue.epoch() is None:
            won = await self.queue.set_epoch(self.replica)
            if won:
                log.warning("reconciler: redis holds no epoch marker (restarted empty or flushed)")
            return won
        now = await self.queue.incarnations()
        before, self._incarnations = self._incarnations, now
        if before is None or now == before:
            return False
        log.warning(
            "reconciler: redis restarted or failed over (%d primaries changed)", len(now - before)
        )
        return await self._take_turn()

    async def _take_turn(self) -> bool:
        ttl_ms = int(self.settings.reconcile_interval_seconds * 1000 * 0.9)
        return await self.queue.try_lock(RECONCILE_LOCK, self.replica, max(ttl_ms, 1))

    async def _resolve_stranded(self) -> int:
        """Resolve every ended job whose dependents have not counted its end; how many."""
        resolved = 0
        while ended := await self.dependencies.stranded():
            done = await self.dependencies.resolve(ended)
            await self.queue.ended(done.cancelled)  # the released: restored by the walk
            resolved += len(ended)
        return resolved

    async def reconcile(self) -> PassStats:
        """One pass: every queue's settings (first, so that a paused queue is paused before
        its restored jobs are back in line), then every unfinished job."""
        stats = PassStats()
        for settings in await self.queues.all():
            await self.queue.configure(settings)
        stats.resolved = await self._resolve_stranded()
        after = ""
        while True:
            refs, last = await self.store.unfinished(after, PAGE_SIZE)
            by_queue: dict[str, list[tuple[str, int]]] = {}
            for job_id, queue, fence in refs:
                by_queue.setdefault(queue, []).append((job_id, fence))
            missing: list[str] = []
            for queue, page in by_queue.items():
                repaired, lacking = await self.queue.reconcile(queue, page)
                stats.repaired += repaired
                missing += lacking
            if missing:
                restored, replayed = await self.queue.restore(await self.store.get_many(missing))
                stats.restored += restored
                stats.replayed += replayed
            stats.checked += len(refs)
            if last is None:
                break
            after = last
        level = logging.WARNING if stats.changed else logging.DEBUG
        log.log(
            level,
            "reconciler: checked %d unfinished jobs; restored %d, replayed %d, repaired %d; "
            "resolved the ends of %d jobs for their dependents",
            stats.checked,
            stats.restored,
            stats.replayed,
            stats.repaired,
            stats.resolved,
        )
        return stats
