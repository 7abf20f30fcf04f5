"""ScheduleStore: schedules and how far the schedulers have got with each.

Progress moves by compare-and-set (`advance` applies only if `next_run` is still what the
caller read), so several schedulers can handle the same schedule at once: one of them
moves it on, and the others' emissions of the same buckets are absorbed by the jobs'
idempotency keys.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

from sqlalchemy import Table, delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from conveyor.db.database import Database
from conveyor.db.jobs import unavailable_on_db_errors
from conveyor.db.models import ScheduleRow
from conveyor.jobs.model import now_ms
from conveyor.jobs.schedules import Schedule
from conveyor.jobs.timetable import CatchUp, Timetable

_SCHEDULES = cast(Table, ScheduleRow.__table__)

# Compare-and-set for a whole page of schedules: a row moves only if its next_run is still
# the one its scheduler read; the rows travel as one JSON document (see store/bulk.py).
_ADVANCE = text("""
UPDATE schedules AS s
SET next_run = v.next_run,
    last_run = COALESCE(v.last_run, s.last_run),
    last_job_id = CASE WHEN v.last_run IS NULL THEN s.last_job_id ELSE v.last_job_id END,
    last_error = CASE WHEN v.last_run IS NULL THEN s.last_error ELSE v.last_error END,
    update_time = :now
FROM jsonb_to_recordset(CAST(:rows AS jsonb))
  AS v(id text, expected bigint, next_run bigint, last_run bigint, last_job_id text,
       last_error text)
WHERE s.id = v.id AND s.next_run = v.expected
RETURNING s.id
""")


# Serializes one owner's schedule creations (PostgreSQL): the advisory lock's first key
# names this use ("schd"), the second is the owner's hash (a collision only serializes
# two owners' creations).
_OWNER_LOCK = text("SELECT pg_advisory_xact_lock(1935894628, hashtext(:owner))")


@dataclass(frozen=True, slots=True)
class Advance:
    """A schedule handled up to `next_run` (None: over), read when it was `expected`."""

    id: str
    expected: int
    next_run: int | None
    last_run: int | None
    last_job_id: str
    last_error: str = ""


def _schedule(row: Any) -> Schedule:
    return Schedule(
        id=row.id,
        owner=row.owner,
        timetable=Timetable(
            cron=row.cron,
            time_zone=row.time_zone,
            interval_ms=row.interval_ms,
            start_ms=row.start_time,
            end_ms=row.end_time,
        ),
        template=row.template,
        description=row.description,
        catch_up=CatchUp(row.catch_up),
        catch_up_limit=row.catch_up_limit,
        paused=bool(row.paused),
        next_run=row.next_run,
        last_run=row.last_run,
        last_job_id=row.last_job_id,
        last_error=row.last_error,
        create_time=row.create_time,
    )


class ScheduleStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(self, schedule: Schedule, *, owner_cap: int = 0) -> bool:
        """Store a new schedule, unless its owner already has `owner_cap` of them (0: no
        cap); whether it was stored.

        Concurrent inserts for one owner cannot both pass the cap: the row is inserted,
        then the owner's rows are counted in the same transaction, and rolled back when
        over. SQLite holds its single write lock from the insert to the commit; PostgreSQL
        takes a transaction-scoped advisory lock on the owner first (an insert alone does
        not make a concurrent transaction's count see it)."""
        tt = schedule.timetable
        values = {
            "id": schedule.id,
            "owner": schedule.owner,
            "description": schedule.description,
            "cron": tt.cron,
            "interval_ms": tt.interval_ms,
            "time_zone": tt.time_zone,
            "template": schedule.template,
            "catch_up": int(schedule.catch_up),
            "catch_up_limit": schedule.catch_up_limit,
            "start_time": tt.start_ms,
            "end_time": tt.end_ms,
            "paused": schedule.paused,
            "next_run": schedule.next_run,
            "create_time": schedule.create_time,
            "update_time": schedule.create_time,
        }
        async with (
            unavailable_on_db_errors(),
            self.db.engine.connect() as conn,
            conn.begin() as transaction,
        ):
            if owner_cap and not self.db.is_sqlite:
                await conn.execute(_OWNER_LOCK, {"owner": schedule.owner})
            await conn.execute(_SCHEDULES.insert().values(**values))
            if owner_cap and await self._count(conn, schedule.owner) > owner_cap:
                await transaction.rollback()
                return False
        return True

    async def _count(self, conn: AsyncConnection, owner: str) -> int:
        stmt = select(func.count()).select_from(_SCHEDULES).where(_SCHEDULES.c.owner == owner)
        return int((await conn.execute(stmt)).scalar_one())

    async def get(self, schedule_id: str) -> Schedule | None:
        stmt = select(_SCHEDULES).where(_SCHEDULES.c.id == schedule_id)
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return _schedule(row) if row is not None else None

    async def list_schedules(
        self, owner: str | None, *, limit: int, before_id: str | None = None
    ) -> list[Schedule]:
        """An owner's schedules (None: everyone's), newest first, after a keyset cursor."""
        stmt = select(_SCHEDULES)
        if owner is not None:
            stmt = stmt.where(_SCHEDULES.c.owner == owner)
        if before_id:
            stmt = stmt.where(_SCHEDULES.c.id < before_id)
        stmt = stmt.order_by(_SCHEDULES.c.id.desc()).limit(limit)
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            return [_schedule(row) for row in await conn.execute(stmt)]

    async def delete(self, schedule_id: str) -> bool:
        stmt = delete(_SCHEDULES).where(_SCHEDULES.c.id == schedule_id)
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            return bool((await conn.execute(stmt)).rowcount)

    async def set_state(self, schedule: Schedule) -> None:
        """Store a pause or resume (and the next run it implies)."""
        stmt = (
            update(_SCHEDULES)
            .where(_SCHEDULES.c.id == schedule.id)
            .values(paused=schedule.paused, next_run=schedule.next_run, update_time=now_ms())
        )
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            await conn.execute(stmt)

    async def due(self, now: int, limit: int) -> list[Schedule]:
        """Running schedules whose next bucket is at or before `now`, most overdue first."""
        stmt = (
            select(_SCHEDULES)
            .where(_SCHEDULES.c.next_run <= now, _SCHEDULES.c.paused.is_(False))
            .order_by(_SCHEDULES.c.next_run)
            .limit(limit)
        )
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            return [_schedule(row) for row in await conn.execute(stmt)]

    async def next_due(self) -> int | None:
        """The earliest next bucket of any running schedule."""
        stmt = select(func.min(_SCHEDULES.c.next_run)).where(_SCHEDULES.c.paused.is_(False))
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            value = (await conn.execute(stmt)).scalar()
        return int(value) if value is not None else None

    async def advance(self, moves: Sequence[Advance]) -> set[str]:
        """Move schedules past the buckets just handled, each only if no one else has (its
        next_run is still the one read): one statement on PostgreSQL, one transaction on
        SQLite; the ids this call moved."""
        if not moves:
            return set()
        if not self.db.is_sqlite:
            rows = [asdict(move) for move in moves]
            params = {"rows": json.dumps(rows, separators=(",", ":")), "now": now_ms()}
            async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
                return {row[0] for row in await conn.execute(_ADVANCE, params)}
        moved: set[str] = set()
        now = now_ms()
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            for move in moves:
                values: dict[str, Any] = {"next_run": move.next_run, "update_time": now}
                if move.last_run is not None:
                    values.update(
                        last_run=move.last_run,
                        last_job_id=move.last_job_id,
                        last_error=move.last_error,
                    )
                stmt = (
                    update(_SCHEDULES)
                    .where(_SCHEDULES.c.id == move.id, _SCHEDULES.c.next_run == move.expected)
                    .values(**values)
                )
                if (await conn.execute(stmt)).rowcount:
                    moved.add(move.id)
        return moved
