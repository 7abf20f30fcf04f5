"""What an admin does to queues and sees of workers: PauseQueue, ResumeQueue,
UpdateQueueLimits, GetQueueStats, ListWorkers (see `conveyor.jobs.queues` for the rules).

Every change goes to the database first and then to Redis, in that order, so a change the
caller was told about is never lost: if Redis cannot be reached the call is UNAVAILABLE,
but the stored settings reach Redis on the reconciler's next pass.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from conveyor.api.known_names import NameCache
from conveyor.db.queues import QueueStore
from conveyor.jobs.queues import QueueSettings, QueueStats, check_queue_name
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
        return await self._change(principal, name, paused=True)

    async def resume(self, principal: Principal, name: str) -> QueueStats:
        return await self._change(principal, name, paused=False)

    async def set_limits(
        self,
        principal: Principal,
        name: str,
        *,
        max_running: int,
        rate_jobs: int,
        rate_interval_ms: int,
        max_running_per_owner: int = 0,
    ) -> QueueStats:
        current = await self._current(principal, name)
        wanted = current.with_limits(
            max_running, rate_jobs, rate_interval_ms, max_running_per_owner
        )
        return await self._apply(wanted)

    async def _change(self, principal: Principal, name: str, *, paused: bool) -> QueueStats:
        current = await self._current(principal, name)
        return await self._apply(replace(current, paused=paused))

    async def _current(self, principal: Principal, name: str) -> QueueSettings:
        """The settings an admin is about to change."""
        principal.require_admin()
        return await self.store.get(check_queue_name(name))

    async def _apply(self, settings: QueueSettings) -> QueueStats:
        await self.store.put(settings)
        await self.queue.configure(settings)
        if self.names is not None:
            self.names.forget()
        log.info(
            "queue %s: paused=%s max_running=%d rate=%d/%dms",
            settings.name,
            settings.paused,
            settings.max_running,
            settings.rate_jobs,
            settings.rate_interval_ms,
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
