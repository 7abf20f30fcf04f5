"""BulkOperationStore: the rows of bulk operations (see migration 0010 and
conveyor.api.bulk), and the lease that says which API process runs each."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table, insert, select, update

from conveyor.db.database import Database
from conveyor.db.jobs import unavailable_on_db_errors
from conveyor.db.models import BulkOperationRow
from conveyor.jobs.bulk import BulkAction, BulkOperation, BulkState

_OPS = cast(Table, BulkOperationRow.__table__)
_RUNNING = int(BulkState.RUNNING)


def _operation(row: Any) -> BulkOperation:
    """A row (its `_mapping`) as the operation it records."""
    return BulkOperation(
        id=row["id"],
        owner=row["owner"],
        admin=bool(row["admin"]),
        action=BulkAction(row["action"]),
        filter=row["filter"],
        state=BulkState(row["state"]),
        per_second=row["per_second"],
        max_attempts=row["max_attempts"],
        top_id=row["top_id"],
        cursor=row["cursor"],
        matched=row["matched"],
        done=row["done"],
        skipped=row["skipped"],
        failed=row["failed"],
        error=row["error"],
        create_time=row["create_time"],
        finish_time=row["finish_time"],
    )


class BulkOperationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, op: BulkOperation, lease_owner: str, lease_expire: int) -> None:
        """Record a new operation, leased to its starter."""
        row = {
            "id": op.id,
            "owner": op.owner,
            "admin": op.admin,
            "action": int(op.action),
            "filter": op.filter,
            "state": int(op.state),
            "per_second": op.per_second,
            "max_attempts": op.max_attempts,
            "top_id": op.top_id,
            "cursor": op.cursor,
            "matched": op.matched,
            "done": op.done,
            "skipped": op.skipped,
            "failed": op.failed,
            "error": op.error,
            "lease_owner": lease_owner,
            "lease_expire": lease_expire,
            "create_time": op.create_time,
            "finish_time": op.finish_time,
        }
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            await conn.execute(insert(_OPS), [row])

    async def get(self, op_id: str, owner: str | None) -> BulkOperation | None:
        """The operation, if `owner` (None: any) started it."""
        stmt = select(_OPS).where(_OPS.c.id == op_id)
        if owner is not None:
            stmt = stmt.where(_OPS.c.owner == owner)
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return _operation(row._mapping) if row is not None else None

    async def abandoned(self, now: int, limit: int = 10) -> list[str]:
        """Running operations whose lease has run out (their process is gone)."""
        stmt = (
            select(_OPS.c.id)
            .where(_OPS.c.state == _RUNNING, _OPS.c.lease_expire < now)
            .order_by(_OPS.c.id)
            .limit(limit)
        )
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            return [r.id for r in await conn.execute(stmt)]

    async def take_over(
        self, op_id: str, lease_owner: str, now: int, lease_expire: int
    ) -> BulkOperation | None:
        """Lease a running operation whose lease has run out to `lease_owner`; None if it
        ended or another process took it first."""
        stmt = (
            update(_OPS)
            .where(_OPS.c.id == op_id, _OPS.c.state == _RUNNING, _OPS.c.lease_expire < now)
            .values(lease_owner=lease_owner, lease_expire=lease_expire)
            .returning(*_OPS.c)
        )
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            row = (await conn.execute(stmt)).first()
        return _operation(row._mapping) if row is not None else None

    async def extend(self, op_id: str, lease_owner: str, lease_expire: int) -> bool:
        """Extend the lease of a running operation; False if it is no longer this
        process's to run (cancelled, or taken over)."""
        stmt = (
            update(_OPS)
            .where(_OPS.c.id == op_id, _OPS.c.state == _RUNNING, _OPS.c.lease_owner == lease_owner)
            .values(lease_expire=lease_expire)
            .returning(_OPS.c.id)
        )
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            return (await conn.execute(stmt)).first() is not None

    async def progress(self, op: BulkOperation, lease_owner: str, lease_expire: int) -> bool:
        """Record how far `op` has got and extend its lease; False if it is no longer
        this process's to run (cancelled: its counts are still recorded; or its lease lost
        to another process)."""
        stmt = (
            update(_OPS)
            .where(
                _OPS.c.id == op.id,
                _OPS.c.lease_owner == lease_owner,
                _OPS.c.state.in_([_RUNNING, int(BulkState.CANCELLED)]),
            )
            .values(
                cursor=op.cursor,
                done=op.done,
                skipped=op.skipped,
                failed=op.failed,
                error=op.error,
                lease_expire=lease_expire,
            )
            .returning(_OPS.c.state)
        )
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            state = (await conn.execute(stmt)).scalar()
        return bool(state == _RUNNING)

    async def finish(self, op: BulkOperation, lease_owner: str | None) -> BulkOperation | None:
        """End a running operation as `op.state` says, with its counts (`lease_owner`
        None: whoever runs it, as CancelBulkOperation does); None if it had ended."""
        conditions = [_OPS.c.id == op.id, _OPS.c.state == _RUNNING]
        values: dict[str, Any] = {
            "state": int(op.state),
            "finish_time": op.finish_time,
            "lease_expire": 0,
        }
        if lease_owner is not None:
            conditions.append(_OPS.c.lease_owner == lease_owner)
            values.update(
                cursor=op.cursor, done=op.done, skipped=op.skipped, failed=op.failed, error=op.error
            )
        stmt = update(_OPS).where(*conditions).values(**values).returning(*_OPS.c)
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            row = (await conn.execute(stmt)).first()
        return _operation(row._mapping) if row is not None else None
