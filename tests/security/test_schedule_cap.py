"""An owner cannot make schedules without bound (issue 18, item 6): past
CONVEYOR_MAX_SCHEDULES_PER_OWNER, CreateSchedule is RESOURCE_EXHAUSTED with a QuotaFailure
and nothing is stored, other owners are unaffected, and two creates racing for the last
place, from two API processes' worth of engines, let exactly one through. On PostgreSQL
and SQLite."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from sqlalchemy import event

from conveyor.api.jobs import JobOperations
from conveyor.api.schedules import ScheduleOperations
from conveyor.client import schedule_request
from conveyor.config import Settings
from conveyor.db import Database, JobStore
from conveyor.db.schedules import ScheduleStore
from conveyor.errors import QuotaExceeded
from conveyor.jobs.model import now_ms
from conveyor.jobs.schedules import schedule_from_proto
from conveyor.redis import EventHub, RedisQueue, connect
from conveyor.server.auth import Principal, Role
from conveyor.v1 import schedule_service_pb2

CAP = 3


Build = Callable[..., ScheduleOperations]


@pytest.fixture
async def make_ops(db: Database, settings: Settings) -> AsyncIterator[Build]:
    """Builds ScheduleOperations on `db` (or another engine on the same database), as an
    API process would, with the cap at CAP."""
    capped = settings.model_copy(update={"max_schedules_per_owner": CAP})
    redis = connect(settings.redis_url)
    hub = EventHub(redis)
    engines: list[Database] = []

    def build(separate: bool = False) -> ScheduleOperations:
        database = db
        if separate:
            database = Database(db.url)
            engines.append(database)
        jobs = JobOperations(JobStore(database), RedisQueue(redis, capped), hub, capped)
        return ScheduleOperations(ScheduleStore(database), jobs)

    yield build
    for engine in engines:
        await engine.close()
    await hub.close()
    await redis.aclose()


def _owner() -> Principal:
    return Principal(f"capped-{uuid.uuid4().hex[:8]}", Role.USER)


def _schedule() -> schedule_service_pb2.Schedule:
    return schedule_request("noop", every=3600)


async def test_past_the_cap_create_is_resource_exhausted(make_ops: Build) -> None:
    ops = make_ops()
    alice, bob = _owner(), _owner()
    made = [await ops.create(alice, _schedule()) for _ in range(CAP)]
    with pytest.raises(QuotaExceeded) as refused:
        await ops.create(alice, _schedule())
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "CONVEYOR_MAX_SCHEDULES_PER_OWNER" in refused.value.message
    [detail] = refused.value.details()
    quota = error_details_pb2.QuotaFailure()
    assert detail.Unpack(quota) and quota.violations[0].subject == f"owner:{alice.owner}"
    listed, _ = await ops.list_schedules(alice, 100, "", "")
    assert sorted(s.id for s in listed) == sorted(s.id for s in made), "nothing more stored"
    await ops.create(bob, _schedule())  # another owner's own cap
    await ops.delete(alice, made[0].id)
    await ops.create(alice, _schedule())  # room again


async def test_two_creates_racing_at_the_cap_let_exactly_one_through(
    make_ops: Build, db: Database
) -> None:
    """Two API processes (here: two threads, each with its own event loop and engine)
    create at once with one place left. The first holds its transaction open after its
    count until the second has counted too (or for a second): without the per-owner
    lock both counts would see one place and both would pass."""
    alice = _owner()
    for _ in range(CAP - 1):
        await make_ops().create(alice, _schedule())
    first_counted, second_counted = threading.Event(), threading.Event()

    def first_waits(*args: Any) -> None:
        if str(args[2]).startswith("SELECT count(*)"):
            first_counted.set()
            second_counted.wait(1.0)

    def second_signals(*args: Any) -> None:
        if str(args[2]).startswith("SELECT count(*)"):
            second_counted.set()

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_insert_in_own_process, db.url, alice.owner, first_waits)
        assert first_counted.wait(10), "the first create counted"
        second = pool.submit(_insert_in_own_process, db.url, alice.owner, second_signals)
        stored = [first.result(20), second.result(20)]
    assert sorted(stored) == [False, True]
    listed, _ = await make_ops().list_schedules(alice, 100, "", "")
    assert len(listed) == CAP


def _insert_in_own_process(url: str, owner: str, hook: Callable[..., None]) -> bool:
    """One capped insert on an engine and event loop of its own, `hook` watching its
    statements; whether it was stored."""

    async def insert() -> bool:
        database = Database(url)
        event.listen(database.engine.sync_engine, "after_cursor_execute", hook)
        schedule = schedule_from_proto(_schedule(), owner, max_payload_bytes=1 << 20, now=now_ms())
        try:
            return await ScheduleStore(database).insert(schedule, owner_cap=CAP)
        finally:
            await database.close()

    return asyncio.run(insert())
