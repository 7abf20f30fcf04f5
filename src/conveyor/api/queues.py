"""What an admin does to queues and sees of workers: PauseQueue, ResumeQueue,
UpdateQueueLimits, GetQueueStats, ListWorkers (see `conveyor.jobs.queues` for the rules).

Every change is one database transaction that holds the queue's row locked while it reads
the settings, changes them, writes them and copies them to Redis, then commits: concurrent
changes (two admins setting different limits, a pause beside a new limit) are served one
after the other and none is lost, in the database or in Redis. If Redis cannot be reached
the call is UNAVAILABLE and nothing changes; if the commit fails after the copy, the
reconciler's next pass puts the stored settings back in Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from conveyor.api.known_names import NameCache
from conveyor.db.queues import QueueStore
from conveyor.jobs.queues import LimitChange, QueueSettings, QueueStats, check_queue_name
from conveyor.redis import RedisQueue
from conveyor.redis.workers import WorkerInfo, WorkerRegistry
from conveyor.server.auth import Principal

log = logging.getLogger(__name__)


class QueueAdmin:
    def __init__(
        self, store: QueueStore, queue: RedisQueue, names: NameCache | None = None
    ) -> None:
        self.store = store
        self.queue = queue
        self.workers = WorkerRegistry(queue.redis)
        # The submit path's reading of existing queues, read again once a change lands.
        self.names = names

    async def pause(self, principal: Principal, name: str) -> QueueStats:
        return await self._update(principal, name, lambda current: replace(current, paused=True))

    async def resume(self, principal: Principal, name: str) -> QueueStats:
        return await self._update(principal, name, lambda current: replace(current, paused=False))

    async def set_limits(self, principal: Principal, name: str, change: LimitChange) -> QueueStats:
        """Change the limits `change` names and keep the queue's others."""
        return await self._update(principal, name, change.applied_to)

    async def _update(
        self, principal: Principal, name: str, change: Callable[[QueueSettings], QueueSettings]
    ) -> QueueStats:
        """Apply `change` to the queue's stored settings with their row locked, so that
        concurrent changes (a pause and a new limit, two limits) all land."""
        principal.require_admin()
        settings = await self.store.update(check_queue_name(name), change, self.queue.configure)
        if self.names is not None:
            self.names.forget()
        log.info(
            "queue %s: paused=%s max_running=%d rate=%d/%dms max_running_per_owner=%d shards=%d"
            " max_running_per_key=%d rate_per_key=%d/%dms",
            settings.name,
            settings.paused,
            settings.max_running,
            settings.rate_jobs,
            settings.rate_interval_ms,
            settings.max_running_per_owner,
            settings.shards,
            settings.max_running_per_key,
            settings.rate_per_key_jobs,
            settings.rate_per_key_interval_ms,
        )
        return await self.queue.queue_stats(settings.name)

    async def stats(self, principal: Principal, name: str = "") -> list[QueueStats]:
        """One queue's numbers (any name), or every existing queue's."""
        principal.require_admin()
        if name:
            return [await self.queue.queue_stats(check_queue_name(name))]
        return await self.all_stats()

    async def all_stats(self) -> list[QueueStats]:
        """Every existing queue's numbers, by name: the default queue, those workers serve
        or served and those with settings (see `conveyor.api.known_names`). A queue only
        submits named is left out, so this reads as many queues as the operator set up
        however many names users make up (it feeds the queue gauges at every scrape)."""
        names = await self.queue.existing_queues()
        names |= {s.name for s in await self.store.all()}
        return [await self.queue.queue_stats(n) for n in sorted(names)]

    async def list_workers(self, principal: Principal, queue: str = "") -> list[WorkerInfo]:
        principal.require_admin()
        if queue:
            check_queue_name(queue)
        workers = await self.workers.live()
        return [w for w in workers if not queue or queue in w.queues]
