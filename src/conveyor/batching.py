"""Group commit: callers hand in items one by one; one flush handles all that arrived meanwhile.

No timer is involved. The first caller flushes at once; callers that arrive while a flush is
running wait for the next one, which then carries all of them. A lone client pays one round
trip per item, while many concurrent clients share each transaction's commit (fsync).

With `concurrency` above 1, that many flushes may run at once: an item that arrives while
one flush is busy starts the next at once instead of waiting for it (two connections'
commits overlap, and PostgreSQL flushes their WAL together). That halves the wait a quiet
caller sees behind a busy one. Flushes may then finish out of order, so only batchers whose
items are independent (new jobs; not one job's successive outcomes) use it.

A flush always runs in a task of its own, never in the first caller's: gRPC cancels a
call's task when its client goes away or its deadline passes, and a flush cancelled between
its commit and its Redis write would leave committed jobs out of line (until the
reconciler's pass) for callers who are still waiting. That task is the only hop a call
makes (about 10 us: one task made, one future resolved); a flush of n items pays it once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int = 2000,
        concurrency: int = 1,
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._concurrency = concurrency
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        """Hand in one item; its result once the flush that carried it is done."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._start()
        return await future

    async def submit_many(self, items: Sequence[T]) -> list[R]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._pending += zip(items, futures, strict=True)
        self._start()
        return list(await asyncio.gather(*futures))

    def _start(self) -> None:
        if len(self._running) < self._concurrency:
            self._running.add(asyncio.create_task(self._drain()))

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    results = await self._flush([item for item, _ in batch])
                except BaseException as exc:  # every waiter of this batch sees the failure
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, fut), result in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
        finally:
            # Leave the running set in the same step that saw nothing pending, so that an
            # item handed in from now on starts a flush of its own.
            task = asyncio.current_task()
            if task is not None:
                self._running.discard(task)
