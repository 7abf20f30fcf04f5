"""QueueStore.update against real PostgreSQL and SQLite: a change of a queue's settings is
read, changed, written and published with the queue's row locked, so concurrent changes are
served one after the other and none is lost; a change that raises changes nothing."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import pytest

from conveyor.db import Database
from conveyor.db.queues import QueueStore
from conveyor.errors import InvalidArgument, Unavailable
from conveyor.jobs.queues import LimitChange, QueueSettings


def new_queue() -> str:
    return f"q-{uuid.uuid4().hex[:12]}"


async def test_concurrent_changes_of_one_queue_all_land_in_the_order_published(
    db: Database,
) -> None:
    """Guards the row lock: 20 changes that each add one to max_running, run at once on a
    queue that has no row yet, end at 20 (a read-then-write merge ends lower), and each
    change is published with the value it wrote, in the order written (so Redis, which
    gets what is published, ends with the last)."""
    store, name = QueueStore(db), new_queue()
    published: list[int] = []

    async def publish(settings: QueueSettings) -> None:
        published.append(settings.max_running)

    def add_one(current: QueueSettings) -> QueueSettings:
        return replace(current, max_running=current.max_running + 1)

    await asyncio.gather(*(store.update(name, add_one, publish) for _ in range(20)))
    assert (await store.get(name)).max_running == 20
    assert published == list(range(1, 21))


async def test_a_refused_or_unpublished_change_changes_nothing(db: Database) -> None:
    """Guards the all-or-nothing update: a change that fails validation, or whose copy to
    Redis fails, leaves the stored settings as they were (and makes no row for a new
    queue)."""
    store, name = QueueStore(db), new_queue()

    async def publish(settings: QueueSettings) -> None:
        pass

    async def redis_down(settings: QueueSettings) -> None:
        raise Unavailable("redis is unavailable")

    await store.update(name, LimitChange(max_running=3).applied_to, publish)
    with pytest.raises(InvalidArgument):
        await store.update(name, LimitChange(rate_jobs=5).applied_to, publish)
    with pytest.raises(Unavailable):
        await store.update(name, LimitChange(max_running=4).applied_to, redis_down)
    assert await store.get(name) == QueueSettings(name, max_running=3)
    untouched = new_queue()
    with pytest.raises(Unavailable):
        await store.update(untouched, LimitChange(max_running=4).applied_to, redis_down)
    assert untouched not in {s.name for s in await store.all()}
