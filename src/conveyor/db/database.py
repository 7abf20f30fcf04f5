"""The async engine: PostgreSQL through psycopg 3, or SQLite (WAL) through aiosqlite in dev."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Table, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from conveyor import compact_json


def async_url(url: str) -> str:
    """The async driver URL for a configured one (`sqlite:///x` → `sqlite+aiosqlite:///x`)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if parsed.get_backend_name() == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database URL scheme: {parsed.drivername}")


def missing_sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names, resolved, when it does not exist (None: it does, or the
    URL is not SQLite's, or names an in-memory database). SQLite would make an empty one
    and every query would then fail on a missing table; a CLI command says this instead."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database).resolve()
    return None if path.exists() else path


def sync_url(url: str) -> str:
    """The sync driver URL (for migrations)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


class Database:
    """Owns the engine; `is_sqlite` lets the stores pick dialect-specific statements."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = async_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if not self.is_sqlite:
            kwargs = {"pool_size": pool_size, "max_overflow": pool_size, "pool_pre_ping": False}
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            # jsonb columns (payloads, labels, retry policies, dependencies) decoded by
            # orjson, several times faster than psycopg's default, json.loads; for every
            # psycopg connection of the process.
            from psycopg.types.json import set_json_loads

            set_json_loads(compact_json.loads)

    async def ping(self) -> bool:
        """Whether the database answers (for health checks)."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    def insert(self, table: Table) -> Any:
        """INSERT in this database's dialect (for its ON CONFLICT clauses)."""
        return (sqlite if self.is_sqlite else postgresql).insert(table)

    def upsert(self, table: Table, values: dict[str, Any], keys: Sequence[str]) -> Any:
        """INSERT `values`, or on a conflict of `keys` UPDATE the other columns to them."""
        changed = {k: v for k, v in values.items() if k not in keys}
        stmt = self.insert(table).values(**values)
        return stmt.on_conflict_do_update(index_elements=list(keys), set_=changed)

    async def close(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """WAL lets the API read while a worker writes; busy_timeout waits instead of failing."""
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")  # attempts and once-markers belong to a job
    cursor.close()
