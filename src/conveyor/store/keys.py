"""KeyStore: API keys, stored hashed with their owner and role."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, select

from conveyor.jobs import new_job_id, now_ms
from conveyor.store.database import Database
from conveyor.store.jobs import unavailable_on_db_errors
from conveyor.store.models import ApiKeyRow

_KEYS = cast(Table, ApiKeyRow.__table__)


@dataclass(frozen=True, slots=True)
class StoredKey:
    id: str
    owner: str
    role: str


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, key_hash: str, owner: str, role: str) -> StoredKey:
        """Store a key hash; adding the same hash again returns the stored key unchanged."""
        existing = await self.find(key_hash)
        if existing is not None:
            return existing
        key = StoredKey(id=new_job_id(), owner=owner, role=role)
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            await conn.execute(
                _KEYS.insert().values(
                    id=key.id, key_hash=key_hash, owner=owner, role=role, create_time=now_ms()
                )
            )
        return key

    async def find(self, key_hash: str) -> StoredKey | None:
        """The live (not revoked) key with this hash."""
        stmt = select(_KEYS.c.id, _KEYS.c.owner, _KEYS.c.role).where(
            _KEYS.c.key_hash == key_hash, _KEYS.c.revoke_time.is_(None)
        )
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return StoredKey(row.id, row.owner, row.role) if row is not None else None
