"""The stores' keyset listings on PostgreSQL and SQLite: job attempts oldest first and API
keys newest first, each page after a cursor, every row once; jobs bounded by create_time
exactly, whatever their ids' own times say."""

from __future__ import annotations

from typing import Any, cast

import pytest
from sqlalchemy import Table

from conveyor.db import Database, JobStore, KeyStore
from conveyor.db.jobs import ID_CLOCK_SLACK_MS
from conveyor.db.keys import KeyCursor, StoredKey
from conveyor.db.models import ApiKeyRow, AttemptRow
from conveyor.jobs.attempts import AttemptOutcome
from conveyor.jobs.model import FALLBACK_RETRY, JobDefaults, JobSpec, now_ms

pytestmark = pytest.mark.usefixtures("clean")

DEFAULTS = JobDefaults(3, 1000, FALLBACK_RETRY)


async def insert_rows(db: Database, table: Any, rows: list[dict[str, Any]]) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(cast(Table, table).insert(), rows)


async def test_jobs_are_bounded_by_create_time_exactly(db: Database) -> None:
    """Guards ListJobs' create_time bounds: [start, end) on the create_time a job reports,
    inclusive at the start and exclusive at the end to the millisecond, paged newest first.
    The jobs' create times are set 30 s to 21 s before their ids' times (as a bulk submit's
    or a stepped clock's may differ, within ID_CLOCK_SLACK_MS), so a listing that bounded
    ids alone would find none of them."""
    store = JobStore(db)
    base = now_ms() - 30_000
    assert ID_CLOCK_SLACK_MS > 30_000
    jobs = [JobSpec(type="noop").new_job("alice", defaults=DEFAULTS, now=base + i * 1000)
            for i in range(10)]  # fmt: skip
    await store.insert(jobs)
    await store.insert([JobSpec(type="noop").new_job("bob", defaults=DEFAULTS, now=base + 3000)])

    async def listed(start: int | None, end: int | None, limit: int = 100) -> list[str]:
        ids: list[str] = []
        before = None
        while True:
            page = await store.list_jobs(
                "alice",
                limit=limit,
                before_id=before,
                create_time_start=start,
                create_time_end=end,
            )
            ids += [j.id for j in page]
            if len(page) < limit:
                return ids
            before = page[-1].id

    def made(*indexes: int) -> list[str]:
        return [jobs[i].id for i in sorted(indexes, reverse=True)]

    assert await listed(base + 2000, base + 7000) == made(2, 3, 4, 5, 6)
    assert await listed(base + 2000, base + 7000, limit=2) == made(2, 3, 4, 5, 6)
    assert await listed(base + 2001, base + 7001) == made(3, 4, 5, 6, 7)
    assert await listed(base + 1999, base + 6999) == made(2, 3, 4, 5, 6)
    assert await listed(base + 8000, None, limit=1) == made(8, 9)
    assert await listed(None, base + 1000) == made(0)
    assert await listed(base + 4000, base + 4000) == [], "an empty range lists nothing"
    assert await listed(None, None, limit=3) == made(*range(10))


async def test_attempts_page_oldest_first_after_a_cursor(db: Database) -> None:
    """Guards ListJobAttempts' keyset: attempts by number from the first, a page after the
    last one listed, each once; attempts recorded between pages come on later pages."""
    store = JobStore(db)
    job = JobSpec(type="noop").new_job("alice", defaults=DEFAULTS, now=now_ms())
    other = JobSpec(type="noop").new_job("alice", defaults=DEFAULTS, now=now_ms())
    await store.insert([job, other])

    def rows(job_id: str, numbers: range) -> list[dict[str, Any]]:
        return [
            {"job_id": job_id, "attempt": n, "outcome": int(AttemptOutcome.FAILED),
             "worker_id": "w", "start_time": n, "finish_time": n + 1, "error": f"#{n}",
             "traceback": ""}
            for n in numbers
        ]  # fmt: skip

    await insert_rows(db, AttemptRow.__table__, rows(job.id, range(1, 6)))
    await insert_rows(db, AttemptRow.__table__, rows(other.id, range(1, 4)))
    first = await store.attempts(job.id, limit=2)
    assert [a.attempt for a in first] == [1, 2]
    await insert_rows(db, AttemptRow.__table__, rows(job.id, range(6, 8)))
    seen = [a.attempt for a in first]
    after = first[-1].attempt
    while page := await store.attempts(job.id, limit=2, after=after):
        seen += [a.attempt for a in page]
        after = page[-1].attempt
    assert seen == [1, 2, 3, 4, 5, 6, 7]
    assert [a.error for a in await store.attempts(job.id)] == [f"#{n}" for n in range(1, 8)]


async def test_keys_page_newest_first_with_ties_on_create_time(db: Database) -> None:
    """Guards ListApiKeys' keyset: keys newest first by (create_time, id), so keys made in
    the same millisecond (random ids) are each listed once across pages, however a page
    boundary falls between them; the owner and revocation filters hold on every page."""
    keys = KeyStore(db)
    moments = [1000, 2000, 2000, 2000, 2000, 3000, 4000, 4000]
    rows = [
        {"id": f"00000000-0000-4000-8000-{i:012d}", "key_hash": f"{i:064d}", "owner": "alice",
         "role": "user", "description": "", "max_running": 0, "create_time": t,
         "revoke_time": 5000 if i == 6 else None}
        for i, t in enumerate(moments)
    ]  # fmt: skip
    bob = {**rows[0], "id": "00000000-0000-4000-8000-999999999999", "key_hash": "b" * 64,
           "owner": "bob", "create_time": 2000}  # fmt: skip
    await insert_rows(db, ApiKeyRow.__table__, [*rows, bob])

    async def walk(owner: str | None, include_revoked: bool, limit: int) -> list[str]:
        found: list[StoredKey] = []
        before: KeyCursor | None = None
        while page := await keys.list_keys(
            owner, include_revoked=include_revoked, limit=limit, before=before
        ):
            found += page
            before = (page[-1].create_time, page[-1].id)
        return [k.id for k in found]

    newest_first = sorted(rows, key=lambda r: (r["create_time"], r["id"]), reverse=True)
    expected = [r["id"] for r in newest_first]
    for limit in (1, 2, 3, 100):
        assert await walk("alice", True, limit) == expected
    live = [r["id"] for r in newest_first if r["revoke_time"] is None]
    assert await walk("alice", False, 2) == live
    everyone = sorted([*rows, bob], key=lambda r: (r["create_time"], r["id"]), reverse=True)
    assert await walk(None, True, 3) == [r["id"] for r in everyone]
