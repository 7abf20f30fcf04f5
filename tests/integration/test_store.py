"""JobStore against a real PostgreSQL: idempotency by constraint, paging, conditional writes."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.db import Database, JobStore
from conveyor.db.bulk import COPY_FROM
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


def big_batch(reused: JobSpec | None = None) -> list[Job]:
    """A batch as large as `COPY_FROM` (PostgreSQL copies it in), every job keyed, the
    middle one with `reused`'s spec when given."""
    batch = [
        new(JobSpec(type="noop", payload={"i": i}, idempotency_key=f"big-{i}"))
        for i in range(COPY_FROM)
    ]
    if reused is not None:
        batch[COPY_FROM // 2] = new(reused)
    return batch


async def test_a_large_batch_is_stored_as_a_statement_would_store_it(db: Database) -> None:
    """Guards the COPY of large batches: every column of a copied job holds what the
    one-statement insert of a small batch stores for the same job (payload, policy,
    retention, unset key as NULL, the fields a new job starts with), and GetJob's read
    gives back the job as made."""
    store = JobStore(db)
    spec = JobSpec(
        type="noop", payload={"text": "tab\there \\ \u00e9", "n": [1, 2.5, None]},
        priority=7, retention_ms=60_000, max_attempts=4,
    )  # fmt: skip
    copied = [new(spec) for _ in range(COPY_FROM)]
    # Text COPY must escape (backslashes, a tab, the text of its NULL) in every free column.
    copied[0].trace_parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\\"
    copied[0].key_id, copied[0].key_cap = "key\\1\t", 3
    copied[0].idempotency_key = "\\N"
    single = new(spec)
    single.trace_parent, single.key_id, single.key_cap = copied[0].trace_parent, "key\\1\t", 3
    single.idempotency_key = "\\N\\"
    assert await store.insert(copied, all_or_nothing=True) == copied
    assert await store.insert([single], all_or_nothing=True) == [single]
    stored, alone = await store.get(copied[0].id), await store.get(single.id)
    assert stored is not None and alone is not None
    differ = {"id", "create_time", "run_at", "idempotency_key"}
    assert {k: v for k, v in vars_of(stored).items() if k not in differ} == {
        k: v for k, v in vars_of(alone).items() if k not in differ
    }
    assert vars_of(stored) == vars_of(copied[0])
    assert len(await store.list_jobs("alice", limit=1000)) == COPY_FROM + 1


def vars_of(job: Job) -> dict[str, object]:
    return {name: getattr(job, name) for name in Job.__slots__}


async def test_a_large_batch_with_a_reused_key_resolves_it_like_a_small_one(
    db: Database,
) -> None:
    """A large batch (copied in) holding a key already used: with the same request it
    returns the earlier job for it and stores the rest; with another request it is
    ALREADY_EXISTS for that job alone, or, all or nothing, stores none of the batch."""
    store = JobStore(db)
    spec = JobSpec(type="noop", payload={"n": 1}, idempotency_key="reused")
    [first] = await store.insert([new(spec)])
    batch = big_batch(spec)
    results = await store.insert(batch, all_or_nothing=True)
    middle = COPY_FROM // 2
    assert isinstance(first, Job)
    assert [r.id if isinstance(r, Job) else r for r in results] == [
        first.id if i == middle else job.id for i, job in enumerate(batch)
    ]
    assert len(await store.list_jobs("alice", limit=1000)) == COPY_FROM

    other = JobSpec(type="noop", payload={"n": 2}, idempotency_key="reused")
    refused = await store.insert(big_batch(other), all_or_nothing=True)
    assert isinstance(refused[middle], AlreadyExists)
    assert len(await store.list_jobs("alice", limit=1000)) == COPY_FROM

    fresh = big_batch(other)
    for i, job in enumerate(fresh):
        job.idempotency_key = f"fresh-{i}" if i != middle else "reused"
    per_item = await store.insert(fresh)
    assert isinstance(per_item[middle], AlreadyExists)
    assert sum(isinstance(r, Job) for r in per_item) == COPY_FROM - 1
    assert len(await store.list_jobs("alice", limit=1000)) == 2 * COPY_FROM - 1


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
