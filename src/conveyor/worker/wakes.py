"""WakeWaiter: how an idle worker blocks until one of its queues has work, on one Redis or on
a Redis Cluster, without polling.

Producers push a token on a queue's wake list (`cv:{Q}:wake`) for each worker they wake, and
a worker with nothing to claim BLPOPs its queues' lists. On one Redis, and on a cluster when
every queue served sits in one hash slot, that is a single BLPOP over all the lists, sent by
the claim loop itself with the time it may wait: the cheapest wait there is, and what a
worker has always done.

A cluster refuses a command whose keys span slots (CROSSSLOT), and each queue's keys sit in
the slot of its own hash tag. So there the queues are grouped by the slot of their wake
list, and each group
gets a waiter task that BLPOPs its lists on a connection of its own (to whichever primary
serves the slot); the claim loop waits for the first of them to take a token. The tasks
outlive each wait: redis-py drops the connection of a BLPOP that is cancelled, so cancelling
the other groups' waits at every wake-up would cost a reconnection per group per job.

A waiter sends a BLPOP only while the claim loop waits, and one sent then may still take a
token after the loop stopped waiting (another group woke it, it is claiming, its slots are
full). Such a token is pushed back on its list, for an idle worker or for this worker's
next wait, which takes it at once: as on one Redis, a worker that is not waiting takes no
token, and none is lost. When waits fail (a failover, a restart), one waiter tries again
with a growing pause while the others wait for it to get through; the cluster client learns
the new map of the cluster meanwhile, and the claim loop's own timeout
(`CONVEYOR_CLAIM_WAIT_SECONDS`) still claims every so often.

Whichever queue's token woke it, the claim loop then claims from all its queues in their
order (strict or weighted), as on one Redis: a token says that some queue has work, and
claiming from the woken queue alone would pass over a queue ahead of it in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from conveyor.redis.connection import AnyRedis, slot_groups
from conveyor.redis.keys import QueueKeys
from conveyor.redis.queue import RedisQueue

__all__ = ["BLOCK_SECONDS", "WakeWaiter"]

log = logging.getLogger(__name__)

# The longest one BLPOP of a waiter task blocks before it is sent again: it bounds how long
# a connection that died without a word (no reset from the peer) goes unnoticed.
BLOCK_SECONDS = 30.0
# While waits fail, the one waiter trying again blocks this long: a wait that returns is
# the sign that Redis is back.
SCOUT_SECONDS = 0.01
# The pause after a waiter's BLPOP failed, doubling up to the last while it keeps failing.
RETRY_FIRST_SECONDS = 0.1
RETRY_MAX_SECONDS = 5.0


class WakeWaiter:
    """Waits for a wake token on any of `queues` (see the module)."""

    def __init__(self, queue: RedisQueue, blocking: AnyRedis, queues: Sequence[str]) -> None:
        self.queue = queue
        self.blocking = blocking
        self.groups = slot_groups(blocking, queues, lambda name: QueueKeys(name).wake)
        # Set while the claim loop waits; the first waiter to take a token clears it.
        self._wanted = asyncio.Event()
        self._woken = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # While waits fail: set once the group in `_scout` gets through again.
        self._outage: asyncio.Event | None = None
        self._scout: list[str] | None = None

    async def wait(self, seconds: float) -> bool:
        """Block until a token arrives on one of the queues (True) or `seconds` pass
        (False). Redis errors of the single BLPOP reach the caller as `Unavailable`."""
        if len(self.groups) == 1:
            woken = await self.queue.wait_for_work(self.blocking, self.groups[0], seconds)
            return woken is not None
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._wait_on(group), name=f"wake-{group[0]}")
                for group in self.groups
            ]
        self._woken.clear()
        self._wanted.set()
        try:
            async with asyncio.timeout(seconds):
                await self._woken.wait()
        except TimeoutError:
            return False
        finally:
            self._wanted.clear()
        return True

    async def follow(self, queues: Sequence[str]) -> None:
        """Wait on `queues` from now on (a served queue's shard count changed): the waiter
        tasks of the old groups stop, and a wait under way returns as if woken, so the
        claim loop claims from every queue before it waits again."""
        await self.close()
        if self._outage is not None:  # its scout is gone: the new waiters try at once
            self._outage.set()
        self._outage = self._scout = None
        self.groups = slot_groups(self.blocking, queues, lambda name: QueueKeys(name).wake)
        self._woken.set()

    async def close(self) -> None:
        """Stop the waiter tasks (their connections are dropped)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def _take(self) -> bool:
        """Whether a token just popped wakes the claim loop: only the first while it waits
        (the rest go back on their lists)."""
        if not self._wanted.is_set():
            return False
        self._wanted.clear()
        self._woken.set()
        return True

    async def _wait_on(self, queues: list[str]) -> None:
        """One group's waiter: block on its lists whenever the claim loop waits."""
        pause = RETRY_FIRST_SECONDS
        while True:
            await self._wanted.wait()
            scouting = self._scout is queues
            try:
                await self.queue.wait_for_work(
                    self.blocking,
                    queues,
                    SCOUT_SECONDS if scouting else BLOCK_SECONDS,
                    keep=self._take,
                )
            except Exception as exc:  # any: a waiter that died would leave the worker deaf
                pause = await self._failed(queues, exc, pause)
                continue
            pause = RETRY_FIRST_SECONDS
            if scouting and self._outage is not None:
                self._outage.set()  # through: the others try again at once
                self._outage = self._scout = None
                log.info("waiting for work again")

    async def _failed(self, queues: list[str], exc: Exception, pause: float) -> float:
        """After a failed wait (Redis down, a failover under way): the first waiter to fail
        tries again after a growing pause, with a wait that returns at once; the others
        wait until it gets through (or `BLOCK_SECONDS`, should only its own node be
        down), so an outage costs one attempt at a time (each of which may have the
        cluster client relearn the map), not one per slot. Returns the next pause."""
        if self._outage is None:
            self._outage, self._scout = asyncio.Event(), queues
            log.warning(
                "waiting for work failed (%s, on %s); trying again with backoff",
                exc,
                ",".join(queues),
            )
        if self._scout is queues:
            await asyncio.sleep(pause)
            return min(pause * 2, RETRY_MAX_SECONDS)
        outage = self._outage
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(BLOCK_SECONDS):
                await outage.wait()
        return pause
