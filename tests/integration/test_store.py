"""JobStore against a real PostgreSQL: idempotency by constraint, paging, conditional writes."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.db import Database, JobStore
from conveyor.errors import AlreadyExists, FailedPrecondition, NotFound
from conveyor.jobs.model import FALLBACK_RETRY, Job, JobDefaults, JobSpec, JobState, now_ms
from tests.builders import ended

pytestmark = pytest.mark.usefixtures("clean")


def new(spec: JobSpec, owner: str = "alice") -> Job:
    return spec.new_job(owner, defaults=JobDefaults(3, 1000, FALLBACK_RETRY), now=now_ms())


async def test_same_key_same_request_returns_the_first_job(db: Database) -> None:
    store = JobStore(db)
    spec = JobSpec(type="noop", payload={"n": 1}, idempotency_key="k1")
    first, again = new(spec), new(spec)
    [stored] = await store.insert([first])
    [repeat] = await store.insert([again])
    assert isinstance(repeat, Job) and repeat.id == first.id == stored.id  # type: ignore[union-attr]


async def test_same_key_other_request_is_already_exists(db: Database) -> None:
    store = JobStore(db)
    await store.insert([new(JobSpec(type="noop", payload={"n": 1}, idempotency_key="k1"))])
    [result] = await store.insert(
        [new(JobSpec(type="noop", payload={"n": 2}, idempotency_key="k1"))]
    )
    assert isinstance(result, AlreadyExists)


async def test_keys_are_per_owner(db: Database) -> None:
    store = JobStore(db)
    spec = JobSpec(type="noop", idempotency_key="shared")
    a, b = await store.insert([new(spec, "alice"), new(spec, "bob")])
    assert isinstance(a, Job) and isinstance(b, Job) and a.id != b.id


async def test_many_concurrent_submits_of_one_key_make_one_job(db: Database) -> None:
    store = JobStore(db)
    spec = JobSpec(type="noop", idempotency_key="race")
    results = await asyncio.gather(*(store.insert([new(spec)]) for _ in range(50)))
    ids = {r[0].id for r in results if isinstance(r[0], Job)}
    assert len(ids) == 1
    assert len(await store.list_jobs("alice")) == 1


async def test_all_or_nothing_rolls_back_the_whole_batch(db: Database) -> None:
    store = JobStore(db)
    await store.insert([new(JobSpec(type="noop", payload={"n": 1}, idempotency_key="k"))])
    batch = [
        new(JobSpec(type="noop")),
        new(JobSpec(type="noop", payload={"n": 2}, idempotency_key="k")),
    ]
    results = await store.insert(batch, all_or_nothing=True)
    assert isinstance(results[1], AlreadyExists)
    assert len(await store.list_jobs("alice")) == 1


async def test_listing_is_newest_first_with_a_keyset_cursor(db: Database) -> None:
    store = JobStore(db)
    jobs = [new(JobSpec(type="noop")) for _ in range(5)]
    await store.insert(jobs)
    first = await store.list_jobs("alice", limit=2)
    rest = await store.list_jobs("alice", limit=10, before_id=first[-1].id)
    listed = [j.id for j in first + rest]
    assert listed == sorted((j.id for j in jobs), reverse=True)


async def test_outcomes_do_not_overwrite_a_terminal_job(db: Database) -> None:
    store = JobStore(db)
    job = new(JobSpec(type="noop"))
    await store.insert([job])
    cancelled = await store.cancel(job.id, "alice")
    assert cancelled.state is JobState.CANCELLED
    [result] = await store.write_outcomes([ended(job.id, JobState.SUCCEEDED)])
    assert not result.applied and result.current is not None
    assert result.current.state is JobState.CANCELLED
    stored = await store.get(job.id)
    assert stored is not None and stored.state is JobState.CANCELLED


async def test_cancel_refuses_ended_jobs_and_hides_other_owners(db: Database) -> None:
    store = JobStore(db)
    job = new(JobSpec(type="noop"))
    await store.insert([job])
    with pytest.raises(NotFound):
        await store.cancel(job.id, "mallory")
    await store.cancel(job.id, "alice")
    with pytest.raises(FailedPrecondition):
        await store.cancel(job.id, "alice")
