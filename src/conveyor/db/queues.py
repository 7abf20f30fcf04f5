"""QueueStore: queue settings (paused, concurrency cap, rate limit) by queue name."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from sqlalchemy import Table, select, update

from conveyor.db.database import Database
from conveyor.db.jobs import unavailable_on_db_errors
from conveyor.db.models import QueueRow
from conveyor.jobs.model import now_ms
from conveyor.jobs.queues import QueueSettings

_QUEUES = cast(Table, QueueRow.__table__)


def _settings(row: Any) -> QueueSettings:
    return QueueSettings(
        name=row.name,
        paused=bool(row.paused),
        max_running=row.max_running,
        rate_jobs=row.rate_jobs,
        rate_interval_ms=row.rate_interval_ms,
        max_running_per_owner=row.max_running_per_owner,
        shards=row.shards,
        max_running_per_key=row.max_running_per_key,
        rate_per_key_jobs=row.rate_per_key_jobs,
        rate_per_key_interval_ms=row.rate_per_key_interval_ms,
    )


class QueueStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, name: str) -> QueueSettings:
        """The queue's settings; a queue without a row has the defaults (no limits)."""
        stmt = select(_QUEUES).where(_QUEUES.c.name == name)
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return _settings(row) if row is not None else QueueSettings(name)

    async def all(self) -> list[QueueSettings]:
        """Every queue that has settings, by name."""
        stmt = select(_QUEUES).order_by(_QUEUES.c.name)
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            return [_settings(row) for row in await conn.execute(stmt)]

    async def update(
        self,
        name: str,
        change: Callable[[QueueSettings], QueueSettings],
        publish: Callable[[QueueSettings], Awaitable[None]],
    ) -> QueueSettings:
        """Change the queue's settings in one transaction that holds its row locked: read
        them, `change` them (it may raise, to change nothing), write them, `publish` them
        (copy them to Redis) and commit. Two admins changing the queue at once are thus
        served one after the other, the second seeing the first's change, and reach Redis
        in the order they reach the database; a `publish` that fails changes nothing."""
        # A queue without a row gets one first, so there is always a row to lock (two
        # first changes at once would otherwise both start from the defaults).
        blank = self.db.insert(_QUEUES).values(name=name, **_values(QueueSettings(name)))
        locked = select(_QUEUES).where(_QUEUES.c.name == name).with_for_update()
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            await conn.execute(blank.on_conflict_do_nothing(index_elements=["name"]))
            wanted = change(_settings((await conn.execute(locked)).one()))
            write = update(_QUEUES).where(_QUEUES.c.name == name).values(**_values(wanted))
            await conn.execute(write)
            await publish(wanted)
        return wanted


def _values(settings: QueueSettings) -> dict[str, Any]:
    """The row's columns other than its name."""
    return {
        "paused": settings.paused,
        "max_running": settings.max_running,
        "rate_jobs": settings.rate_jobs,
        "rate_interval_ms": settings.rate_interval_ms,
        "max_running_per_owner": settings.max_running_per_owner,
        "shards": settings.shards,
        "max_running_per_key": settings.max_running_per_key,
        "rate_per_key_jobs": settings.rate_per_key_jobs,
        "rate_per_key_interval_ms": settings.rate_per_key_interval_ms,
        "update_time": now_ms(),
    }
