"""Unique and debounced jobs (conveyor.jobs.unique) against real PostgreSQL (and SQLite,
dev mode's store) and Redis: who holds a key and when it moves, the races after a window,
debounce.lua against claims, and both stores agreeing on a debounced job's last payload."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import psycopg
import pytest

from conveyor.api.jobs import JobOperations
from conveyor.config import Settings
from conveyor.db import Database, JobStore
from conveyor.db.bulk import psycopg_dsn
from conveyor.errors import AlreadyExists, Unavailable
from conveyor.jobs.model import FALLBACK_RETRY, Job, JobDefaults, JobSpec, JobState, now_ms
from conveyor.jobs.unique import replaced
from conveyor.redis import EventHub, QueueKeys, RedisQueue, connect
from conveyor.server.auth import Principal, Role

pytestmark = pytest.mark.usefixtures("clean")

ALICE = Principal("alice", Role.USER)
HOUR = 3_600_000


def new(spec: JobSpec, now: int) -> Job:
    return spec.new_job("alice", defaults=JobDefaults(3, 1000, FALLBACK_RETRY), now=now)


def unique(n: int, window: int = HOUR) -> JobSpec:
    return JobSpec(type="noop", payload={"n": n}, idempotency_key="u", unique_for_ms=window)


def debounced(n: int, debounce: int = 1000) -> JobSpec:
    return JobSpec(type="noop", payload={"n": n}, idempotency_key="d", debounce_ms=debounce)


async def never(job: Job) -> bool:
    raise AssertionError("Redis asked where the database decides alone")


@pytest.fixture
async def queue(settings: Settings) -> AsyncIterator[RedisQueue]:
    client = connect(settings.redis_url)
    yield RedisQueue(client, settings)
    await client.aclose()


@pytest.fixture
async def ops(db: Database, settings: Settings) -> AsyncIterator[JobOperations]:
    redis = connect(settings.redis_url)
    hub = EventHub(redis)
    yield JobOperations(JobStore(db), RedisQueue(redis, settings), hub, settings)
    await hub.close()
    await redis.aclose()


async def test_within_the_window_the_key_answers_its_job_whatever_is_asked(db: Database) -> None:
    """A unique job holds its key until key_until: another request is not ALREADY_EXISTS
    but the first job, as it was."""
    store, t0 = JobStore(db), now_ms()
    first = new(unique(1), t0)
    assert await store.insert_keyed(first, t0, never) == (first, True)
    answer, made = await store.insert_keyed(new(unique(2), t0 + 10), t0 + HOUR - 1, never)
    assert not made and answer.id == first.id and answer.payload == {"n": 1}
    assert answer.key_until == t0 + HOUR


async def test_after_the_window_the_key_moves_to_a_new_job(db: Database) -> None:
    """After the window a submit makes a new job that holds the key; the old job keeps its
    row but no longer names the key."""
    store, t0 = JobStore(db), now_ms()
    first = new(unique(1, window=1000), t0)
    await store.insert_keyed(first, t0, never)
    later = new(unique(2), t0 + 1000)
    assert await store.insert_keyed(later, t0 + 1000, never) == (later, True)
    old, moved = await store.get(first.id), await store.get(later.id)
    assert old is not None and old.idempotency_key is None and old.payload == {"n": 1}
    assert (
        moved is not None and moved.idempotency_key == "u" and moved.key_until == t0 + 1000 + HOUR
    )


async def test_concurrent_submits_after_the_window_make_exactly_one_job(
    database_url: str,
) -> None:
    """Twenty submits after the window at once: one new job takes the key (the old row's
    lock and the key's unique constraint decide), and all twenty answer it."""
    db = Database(database_url)
    store, t0 = JobStore(db), now_ms()
    try:
        await store.insert_keyed(new(unique(0, window=1000), t0), t0, never)
        later = t0 + 5000
        answers = await asyncio.gather(
            *(store.insert_keyed(new(unique(i), later), later, never) for i in range(1, 21))
        )
        assert len({job.id for job, _ in answers}) == 1
        assert sum(made for _, made in answers) == 1
        assert len(await store.list_jobs("alice")) == 2
    finally:
        await db.close()


async def test_a_plain_keyed_job_holds_its_key_for_ever(db: Database) -> None:
    """A unique submit meeting a job a plain keyed submit made is compared as a plain one:
    the same request answers it, another is ALREADY_EXISTS."""
    store, t0 = JobStore(db), now_ms()
    [plain] = await store.insert(
        [new(JobSpec(type="noop", payload={"n": 1}, idempotency_key="u"), t0)]
    )
    assert isinstance(plain, Job)
    with pytest.raises(AlreadyExists):
        await store.insert_keyed(new(unique(2), t0), t0 + 10 * HOUR, never)


async def test_a_debounce_replaces_the_waiting_job_or_moves_the_key(db: Database) -> None:
    """While Redis says the job waits, a later submit rewrites its row (payload, run_at)
    and answers it; once Redis says it started, a new job takes the key; once the database
    says it ended, the key moves without asking Redis."""
    store, t0 = JobStore(db), now_ms()
    first = new(debounced(1), t0)
    await store.insert_keyed(first, t0, never)
    asked: list[Job] = []

    async def waits(job: Job) -> bool:
        asked.append(job)
        return True

    answer, made = await store.insert_keyed(new(debounced(2), t0 + 500), t0 + 500, waits)
    assert not made and answer.id == first.id and answer.payload == {"n": 2}
    assert asked[0].payload == {"n": 2} and asked[0].run_at == t0 + 1500
    row = await store.get(first.id)
    assert row is not None and row.payload == {"n": 2} and row.run_at == t0 + 1500

    async def started(job: Job) -> bool:
        return False

    second = new(debounced(3), t0 + 2000)
    assert await store.insert_keyed(second, t0 + 2000, started) == (second, True)
    old = await store.get(first.id)
    assert old is not None and old.idempotency_key is None and old.payload == {"n": 2}
    await store.cancel(second.id, "alice")
    third = new(debounced(4), t0 + 3000)
    assert await store.insert_keyed(third, t0 + 3000, never) == (third, True)


async def test_debounce_lua_replaces_a_waiting_job(queue: RedisQueue) -> None:
    """debounce.lua on a SCHEDULED job: new payload, labels and run_at in its hash, its
    delayed-set score moved, and an event for its watchers."""
    t0 = now_ms()
    job = new(debounced(1), t0)
    job.labels = {"old": "1"}
    await queue.enqueue([job])
    spec = JobSpec(
        type="noop", payload={"n": 2}, idempotency_key="d", debounce_ms=1000, labels={"team": "a"}
    )
    later = replaced(job, new(spec, t0 + 700))

    assert await queue.debounce(later)
    hot = await queue.hot("default", job.id)
    assert hot is not None
    assert json.loads(hot["payload"]) == {"n": 2} and int(hot["run_at"]) == t0 + 1700
    assert json.loads(hot["labels"]) == {"team": "a"} and hot["seq"] == "2"
    assert await queue.redis.zscore(QueueKeys("default").delayed, job.id) == t0 + 1700
    assert len(await queue.events_after("default", job.id, 1)) == 1


async def test_debounce_lua_refuses_a_job_that_is_due_or_claimed(queue: RedisQueue) -> None:
    """A job no longer SCHEDULED (due, or claimed by a worker) keeps what it has."""
    t0 = now_ms()
    job = new(debounced(1, debounce=1), t0 - 10)
    await queue.enqueue([job])
    claims, _ = await queue.claim("default", 10, worker_id="w", token="t", lease_ms=10_000)
    assert [c.job.id for c in claims] == [job.id]
    assert not await queue.debounce(replaced(job, new(debounced(2), t0)))
    hot = await queue.hot("default", job.id)
    assert hot is not None and json.loads(hot["payload"]) == {"n": 1}
    assert hot["state"] == str(int(JobState.RUNNING))


async def test_debounce_lua_places_a_job_redis_lacks(queue: RedisQueue) -> None:
    """A debounced job not in Redis yet (its first submit's enqueue still to come) is put
    in line with the new values, and the late enqueue of its first values leaves it."""
    t0 = now_ms()
    first = new(debounced(1), t0)
    assert await queue.debounce(replaced(first, new(debounced(2), t0 + 300)))
    await queue.enqueue([first])
    hot = await queue.hot("default", first.id)
    assert hot is not None and json.loads(hot["payload"]) == {"n": 2}
    assert hot["state"] == str(int(JobState.SCHEDULED))
    assert await queue.redis.zscore(QueueKeys("default").delayed, first.id) == t0 + 1300


async def test_a_burst_leaves_both_stores_with_the_last_payload(ops: JobOperations) -> None:
    """Through the API's operations: a burst of debounced submits answers one job, and its
    row and its Redis hash agree on the last submit's payload and run_at."""
    answers = [await ops.submit(ALICE, debounced(i, debounce=60_000)) for i in range(20)]
    assert len({job.id for job in answers}) == 1
    last = answers[-1]
    row = await ops.store.get(last.id)
    hot = await ops.queue.hot(last.placement, last.id)
    assert row is not None and hot is not None
    assert row.payload == json.loads(hot["payload"]) == {"n": 19}
    assert row.run_at == int(hot["run_at"]) == last.run_at
    assert row.state == JobState.SCHEDULED and hot["state"] == str(int(JobState.SCHEDULED))


async def test_a_debounce_after_redis_lost_the_job_puts_it_back_with_the_new_payload(
    ops: JobOperations,
) -> None:
    """Redis flushed mid-burst: the next submit finds the job unfinished in the database and
    missing from Redis, and puts it back in line with its own payload and run_at (what the
    reconciler would restore from the row, which the same submit updates)."""
    first = await ops.submit(ALICE, debounced(1, debounce=60_000))
    await ops.queue.redis.flushall()
    again = await ops.submit(ALICE, debounced(2, debounce=60_000))
    assert again.id == first.id
    hot = await ops.queue.hot(first.placement, first.id)
    row = await ops.store.get(first.id)
    assert hot is not None and row is not None
    assert json.loads(hot["payload"]) == row.payload == {"n": 2}
    assert hot["state"] == str(int(JobState.SCHEDULED)) and int(hot["run_at"]) == row.run_at
    assert await ops.queue.redis.zscore(QueueKeys(first.placement).delayed, first.id) == row.run_at


async def test_a_failed_row_update_puts_the_earlier_payload_back_in_redis(
    database_url: str, queue: RedisQueue
) -> None:
    """The database connection dies after Redis took a debounce's new payload and before
    the row is updated (its backend terminated, as a PostgreSQL restart would): the submit
    fails UNAVAILABLE and Redis has the earlier payload and run_at again, as the row does."""
    db = Database(database_url)
    store, t0 = JobStore(db), now_ms()

    async def then_lose_the_database(job: Job) -> bool:
        done = await queue.debounce(job)
        async with await psycopg.AsyncConnection.connect(psycopg_dsn(database_url)) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE state = 'idle in transaction' AND datname = current_database()"
                " AND pid <> pg_backend_pid()"
            )
        return done

    try:
        first = new(debounced(1), t0)
        await store.insert_keyed(first, t0, queue.debounce)
        await queue.enqueue([first])
        with pytest.raises(Unavailable):
            await store.insert_keyed(new(debounced(2), t0 + 500), t0 + 500, then_lose_the_database)
        hot = await queue.hot("default", first.id)
        row = await store.get(first.id)
        assert hot is not None and row is not None
        assert json.loads(hot["payload"]) == row.payload == {"n": 1}
        assert int(hot["run_at"]) == row.run_at == first.run_at
    finally:
        await db.close()
