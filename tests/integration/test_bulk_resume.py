"""A bulk operation outlives the API process running it: its row keeps its progress and
lease, and once the lease runs out another process takes it over and finishes it from
its last recorded page. In process (two BulkOperations, as two API processes would hold),
on real Redis and the test database (PostgreSQL and SQLite)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor.api.bulk import BulkOperations
from conveyor.api.jobs import JobOperations
from conveyor.config import Settings
from conveyor.db import Database, JobStore
from conveyor.db.artifacts import ArtifactStore
from conveyor.db.bulk_operations import BulkOperationStore
from conveyor.jobs.bulk import BulkAction, BulkOperation, BulkRequest, BulkState
from conveyor.jobs.model import JobSpec, JobState
from conveyor.objects.local import LocalStore
from conveyor.redis import EventHub, RedisQueue, connect
from conveyor.server.auth import Principal, Role

ALICE = Principal("alice", Role.USER)
LEASE = 0.3


@pytest.fixture
async def ops(db: Database, settings: Settings) -> AsyncIterator[JobOperations]:
    redis = connect(settings.redis_url)
    hub = EventHub(redis)
    yield JobOperations(JobStore(db), RedisQueue(redis, settings), hub, settings)
    await hub.close()
    await redis.aclose()


def process(ops: JobOperations, db: Database, tmp_path: Path) -> BulkOperations:
    """What one API process holds (its own lease owner)."""
    objects = LocalStore(tmp_path / "objects", base_url="http://127.0.0.1:1")
    return BulkOperations(
        ops, BulkOperationStore(db), ArtifactStore(db), objects, lease_seconds=LEASE
    )


async def until(store: BulkOperationStore, op_id: str, done: int = 0) -> BulkOperation:
    """Poll the row (what GetBulkOperation reads) until it has ended or done `done` jobs."""
    async with asyncio.timeout(30):
        while True:
            op = await store.get(op_id, None)
            assert op is not None
            if op.state is not BulkState.RUNNING or (done and op.done >= done):
                return op
            await asyncio.sleep(0.02)


async def test_an_abandoned_operation_is_resumed_by_another_process(
    ops: JobOperations, db: Database, tmp_path: Path
) -> None:
    """Guards resumption: the first process cancels a page of 10 jobs, records it, and
    dies mid-way (its task cancelled: no end written, the lease left to run out); the
    second takes the operation over once the lease has run out, goes on after the
    recorded page, and ends it SUCCEEDED with every job cancelled, none twice."""
    run = uuid.uuid4().hex
    specs = [JobSpec(type="noop", queue="parked-resume", labels={"run": run}) for _ in range(25)]
    jobs = await ops.submit_many(ALICE, specs)
    first, second = process(ops, db, tmp_path), process(ops, db, tmp_path)
    request = BulkRequest.checked(BulkAction.CANCEL, f'labels.run = "{run}"', True, 10)
    async with first.running():
        count, op = await first.start(ALICE, request)
        assert op is not None and count == 25
        recorded = await until(first.store, op.id, done=10)
    assert recorded.state is BulkState.RUNNING and recorded.cursor, "left mid-way"
    async with second.running():  # looks for abandoned operations every LEASE / 3 s
        ended = await until(second.store, op.id)
    assert ended.state is BulkState.SUCCEEDED, ended.error
    states = [(await ops.store.get(job.id)) for job in jobs]
    assert {job.state for job in states if job is not None} == {JobState.CANCELLED}
    assert ended.failed == 0 and ended.done >= 10
    assert ended.done + ended.skipped <= 25, "no job acted on twice"


async def test_a_cancelled_operation_stops_and_is_not_resumed(
    ops: JobOperations, db: Database, tmp_path: Path
) -> None:
    """Guards CancelBulkOperation: the runner stops after its page, the row stays
    CANCELLED with its finish time, and no other process takes it over."""
    run = uuid.uuid4().hex
    specs = [JobSpec(type="noop", queue="parked-resume", labels={"run": run}) for _ in range(30)]
    await ops.submit_many(ALICE, specs)
    first, second = process(ops, db, tmp_path), process(ops, db, tmp_path)
    request = BulkRequest.checked(BulkAction.CANCEL, f'labels.run = "{run}"', True, 10)
    async with first.running():
        _, op = await first.start(ALICE, request)
        assert op is not None
        await until(first.store, op.id, done=1)
        stopped = await first.cancel(ALICE, op.id)
        assert stopped.state is BulkState.CANCELLED and stopped.finish_time is not None
        await first.wait(op.id)
    after = await first.store.get(op.id, None)
    assert after is not None and after.state is BulkState.CANCELLED and after.done < 30
    assert await second.take_over_abandoned() == 0
