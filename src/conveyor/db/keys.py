"""KeyStore: API keys, stored as digests with their owner, role and revocation time."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, literal, select, tuple_, update

from conveyor.db.database import Database
from conveyor.db.jobs import unavailable_on_db_errors
from conveyor.db.models import ApiKeyRow
from conveyor.jobs.model import new_job_id, now_ms

_KEYS = cast(Table, ApiKeyRow.__table__)
MAX_LISTED = 1000
# Where a listing of keys stands: the last key's (create_time, id).
KeyCursor = tuple[int, str]


@dataclass(frozen=True, slots=True)
class StoredKey:
    id: str
    owner: str
    role: str
    key_hash: str = ""
    description: str = ""
    create_time: int = 0
    revoke_time: int | None = None
    # (per second, burst) overrides; None: the server's default.
    submit_limit: tuple[float, float] | None = None
    read_limit: tuple[float, float] | None = None
    max_running: int = 0  # jobs submitted with the key running at once per queue; 0: no cap


# A key's own limits, by the names of UpdateApiKeyLimits' fields (its update_mask's paths).
LIMIT_FIELDS = ("submit_limit", "read_limit", "max_running_jobs")
_UNSET = (None, None)  # a rate limit's columns when it is the server's default


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """Limits to give a key (`KeyStore.set_limits` changes the ones it is told to)."""

    # (per second, burst); None: the server's default.
    submit_limit: tuple[float, float] | None = None
    read_limit: tuple[float, float] | None = None
    max_running_jobs: int = 0  # 0: no cap


def parse_key_id(value: str) -> str | None:
    """A key id in its stored form (a UUID), or None if `value` is not one."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _limit(per_second: float | None, burst: float | None) -> tuple[float, float] | None:
    return None if per_second is None else (per_second, burst or per_second)


def _key(row: Any) -> StoredKey:
    return StoredKey(
        id=row.id,
        owner=row.owner,
        role=row.role,
        key_hash=row.key_hash,
        description=row.description,
        create_time=row.create_time,
        revoke_time=row.revoke_time,
        submit_limit=_limit(row.submit_per_second, row.submit_burst),
        read_limit=_limit(row.read_per_second, row.read_burst),
        max_running=row.max_running,
    )


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(
        self,
        key_hash: str,
        owner: str,
        role: str,
        *,
        key_id: str | None = None,
        description: str = "",
    ) -> StoredKey:
        """Store a key digest; adding the same digest again returns the stored key."""
        existing = await self.find(key_hash)
        if existing is not None:
            return existing
        key = StoredKey(
            id=key_id or new_job_id(),
            owner=owner,
            role=role,
            key_hash=key_hash,
            description=description,
            create_time=now_ms(),
        )
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            await conn.execute(
                _KEYS.insert().values(
                    id=key.id,
                    key_hash=key_hash,
                    owner=owner,
                    role=role,
                    description=description,
                    create_time=key.create_time,
                )
            )
        return key

    async def find(self, key_hash: str) -> StoredKey | None:
        """The live (not revoked) key with this digest."""
        stmt = select(_KEYS).where(_KEYS.c.key_hash == key_hash, _KEYS.c.revoke_time.is_(None))
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return _key(row) if row is not None else None

    async def get(self, key_id: str) -> StoredKey | None:
        """A key by id, revoked or not."""
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            row = (await conn.execute(select(_KEYS).where(_KEYS.c.id == key_id))).first()
        return _key(row) if row is not None else None

    async def list_keys(
        self,
        owner: str | None = None,
        *,
        include_revoked: bool = False,
        limit: int = MAX_LISTED,
        before: KeyCursor | None = None,
    ) -> list[StoredKey]:
        """Keys, newest first: by create_time, then id (key ids are random, and two keys
        may share a millisecond), so that a cursor names one place. `before`: only keys
        after that one in this order (a keyset cursor, on the index of migration 0007)."""
        order = (_KEYS.c.create_time, _KEYS.c.id)
        stmt = select(_KEYS).order_by(*(c.desc() for c in order)).limit(limit)
        if owner:
            stmt = stmt.where(_KEYS.c.owner == owner)
        if not include_revoked:
            stmt = stmt.where(_KEYS.c.revoke_time.is_(None))
        if before is not None:
            stmt = stmt.where(tuple_(*order) < tuple_(literal(before[0]), literal(before[1])))
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            return [_key(row) for row in await conn.execute(stmt)]

    async def revoke(self, key_id: str) -> StoredKey | None:
        """Revoke a key (idempotent: a revoked key keeps its first revocation time)."""
        stmt = (
            update(_KEYS)
            .where(_KEYS.c.id == key_id, _KEYS.c.revoke_time.is_(None))
            .values(revoke_time=now_ms())
        )
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            await conn.execute(stmt)
        return await self.get(key_id)

    async def set_limits(
        self, key_id: str, limits: KeyLimits, named: Collection[str] = LIMIT_FIELDS
    ) -> StoredKey | None:
        """Set the limits of `limits` that `named` names and keep the key's others; None
        if there is no such key. One UPDATE of the named columns only, so two admins
        changing different limits at once both get theirs (the row lock the UPDATE takes
        orders them; neither reads what the other writes)."""
        values: dict[str, Any] = {}
        if "submit_limit" in named:
            values["submit_per_second"], values["submit_burst"] = limits.submit_limit or _UNSET
        if "read_limit" in named:
            values["read_per_second"], values["read_burst"] = limits.read_limit or _UNSET
        if "max_running_jobs" in named:
            values["max_running"] = limits.max_running_jobs
        if not values:
            return await self.get(key_id)
        stmt = update(_KEYS).where(_KEYS.c.id == key_id).values(**values).returning(*_KEYS.c)
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            row = (await conn.execute(stmt)).first()
        return _key(row) if row is not None else None
