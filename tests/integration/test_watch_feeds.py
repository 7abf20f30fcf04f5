"""WatchJob's job feeds in-process, on the real Redis and PostgreSQL: a watcher that falls
behind is marked lagged and catches up from the job's event stream alone, while the other
watchers of the job keep the shared, live path (`conveyor.api.feeds`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from conveyor.api import feeds
from conveyor.api.jobs import JobOperations
from conveyor.config import Settings
from conveyor.db import Database, JobStore
from conveyor.jobs.model import JobSpec, JobState
from conveyor.redis import EventHub, QueueKeys, RedisQueue, connect
from conveyor.redis.events import BUFFER
from conveyor.server.auth import Principal, Role
from conveyor.v1 import job_service_pb2 as pb

pytestmark = pytest.mark.usefixtures("clean")

ALICE = Principal("alice", Role.USER)
QUEUE = "feeds"


@pytest.fixture
async def ops(settings: Settings) -> AsyncIterator[JobOperations]:
    """The operations as an api process builds them, reads not rate limited."""
    settings = settings.model_copy(update={"read_rate": 0.0})
    db = Database(settings.database_url)
    redis = connect(settings.redis_url)
    hub = EventHub(redis)
    yield JobOperations(JobStore(db), RedisQueue(redis, settings), hub, settings)
    await hub.close()
    await redis.aclose()
    await db.close()


async def test_a_lagged_watcher_catches_up_on_every_change(ops: JobOperations) -> None:
    """Guards the bound and the catch-up with a shared feed: of two watchers of one job,
    one reads along while the job publishes twice BUFFER changes, the other reads nothing
    meanwhile. The idle one holds at most BUFFER of them, is marked lagged, and then still
    gets every change in order from the job's event stream, ending with the cancel; the
    other got them all live. Both saw the same messages."""
    job = await ops.submit(ALICE, JobSpec(type="noop", queue=QUEUE))
    reader, idle = ops.watch(ALICE, job.id, 0), ops.watch(ALICE, job.id, 0)
    snapshot = await anext(reader)
    assert (await anext(idle)).sequence == snapshot.sequence
    read: list[pb.WatchJobResponse] = []
    reading = asyncio.create_task(_collect(reader, read))

    [claim], _ = await ops.queue.claim(QUEUE, 1, worker_id="w", token="t", lease_ms=60_000)
    for step in range(BUFFER * 2):
        assert await ops.queue.progress(claim.job, claim.lease, step % 100, f"step {step}")
    await ops.cancel(ALICE, job.id)
    await asyncio.wait_for(reading, 30)

    (feed,) = ops.feeds._feeds.values()
    (behind,) = feed.watchers  # the reader's stream has ended
    assert behind.lagged and len(behind._buffer) <= BUFFER
    caught_up = [answer async for answer in idle]
    expected = list(range(snapshot.sequence + 1, snapshot.sequence + 2 + BUFFER * 2 + 1))
    assert [a.sequence for a in read] == expected
    assert [(a.sequence, a.job.progress) for a in caught_up] == [
        (a.sequence, a.job.progress) for a in read
    ]
    assert JobState(caught_up[-1].job.state) is JobState.CANCELLED
    assert len(ops.feeds) == 0  # the last watcher gone, the feed and its subscription too


async def test_a_change_the_feed_missed_is_found_by_its_recheck(
    ops: JobOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards the safety net, now one per job rather than one per stream: the feed stops
    hearing the job's channel (as if Redis had lost its messages without dropping the
    connection), the job is claimed, and both watchers still get the change once the job
    has been quiet for WATCH_RECHECK_SECONDS (0.2 s here), from the job's event stream."""
    monkeypatch.setattr(feeds, "WATCH_RECHECK_SECONDS", 0.2)
    job = await ops.submit(ALICE, JobSpec(type="noop", queue=QUEUE))
    first, second = ops.watch(ALICE, job.id, 0), ops.watch(ALICE, job.id, 0)
    snapshot = await anext(first)
    await anext(second)
    (feed,) = ops.feeds._feeds.values()
    await ops.hub.unlisten(QueueKeys(QUEUE).channel(job.id), feed)  # deaf from here on

    claimed, _ = await ops.queue.claim(QUEUE, 1, worker_id="w", token="t", lease_ms=60_000)
    assert len(claimed) == 1
    for watcher in (first, second):
        found = await asyncio.wait_for(anext(watcher), 10)
        assert found.sequence == snapshot.sequence + 1
        assert JobState(found.job.state) is JobState.RUNNING
    await ops.cancel(ALICE, job.id)
    for watcher in (first, second):
        ended = await asyncio.wait_for(anext(watcher), 10)
        assert JobState(ended.job.state) is JobState.CANCELLED


async def _collect(
    answers: AsyncIterator[pb.WatchJobResponse], into: list[pb.WatchJobResponse]
) -> None:
    async for answer in answers:
        into.append(answer)
