"""DependencyStore against real PostgreSQL and SQLite (dev mode's path): a job waits for
every dependency, each end is counted once however many resolve it, failures cancel
transitively or count as met under RUN_ANYWAY, an end nobody resolved is found, a replay
revives what a failure cancelled, and a released batch callback carries its counts."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.db import Database, JobStore
from conveyor.db.artifacts import ArtifactStore
from conveyor.db.dependencies import DependencyStore, Submission
from conveyor.errors import InvalidArgument, NotFound
from conveyor.jobs.dependencies import Policy
from conveyor.jobs.model import FALLBACK_RETRY, Job, JobDefaults, JobSpec, JobState, now_ms
from tests.builders import ended

pytestmark = pytest.mark.usefixtures("clean")


def job(owner: str = "alice", **fields: object) -> Job:
    made = JobSpec(type="noop").new_job(
        owner, defaults=JobDefaults(3, 1000, FALLBACK_RETRY), now=now_ms()
    )
    for name, value in fields.items():
        setattr(made, name, value)
    return made


async def submit(db: Database, *subs: Submission, batch_id: str = "") -> list[Job]:
    return await DependencyStore(db).insert(list(subs), batch_id=batch_id)


async def end(db: Database, job_id: str, state: JobState) -> None:
    [written] = await JobStore(db).write_outcomes([ended(job_id, state)])
    assert written.applied


async def stored(db: Database, job_id: str) -> Job:
    found = await JobStore(db).get(job_id)
    assert found is not None
    return found


async def test_a_job_waits_for_every_dependency_and_is_released_by_the_last(db: Database) -> None:
    """Guards the count: with two dependencies the job is SCHEDULED with 2 pending; the
    first end releases nothing, the second releases it QUEUED."""
    deps = DependencyStore(db)
    a, b = await submit(db, Submission(job()), Submission(job()))
    [child] = await submit(db, Submission(job(depends_on=[a.id, b.id])))
    assert (child.state, child.dependencies_pending) == (JobState.SCHEDULED, 2)
    assert await deps.waiting_for(child.id) == tuple(sorted([a.id, b.id]))
    await end(db, a.id, JobState.SUCCEEDED)
    assert (await deps.resolve([a.id])).released == []
    await end(db, b.id, JobState.SUCCEEDED)
    [released] = (await deps.resolve([b.id])).released
    assert (released.id, released.state) == (child.id, JobState.QUEUED)
    assert (await stored(db, child.id)).dependencies_pending == 0


async def test_an_end_resolved_by_two_at_once_is_counted_once(db: Database) -> None:
    """Guards exactly-once: the writer and the reconciler resolving the same end at the
    same moment release the dependent once, and a later resolve finds nothing."""
    deps = DependencyStore(db)
    [parent] = await submit(db, Submission(job()))
    [other] = await submit(db, Submission(job()))
    [child] = await submit(db, Submission(job(depends_on=[parent.id, other.id])))
    await end(db, parent.id, JobState.SUCCEEDED)
    first, second = await asyncio.gather(deps.resolve([parent.id]), deps.resolve([parent.id]))
    assert first.released == second.released == []
    assert (await stored(db, child.id)).dependencies_pending == 1  # not 0: counted once
    await end(db, other.id, JobState.SUCCEEDED)
    results = await asyncio.gather(*(deps.resolve([other.id]) for _ in range(3)))
    assert [j.id for r in results for j in r.released] == [child.id]


async def test_a_failed_dependency_cancels_transitively_unless_run_anyway(db: Database) -> None:
    """Guards the failure rule: A DEAD cancels B (waits for A) and C (waits for B), each
    naming its own dependency; D (RUN_ANYWAY on A) is released instead."""
    deps = DependencyStore(db)
    a, b, c, d = await submit(
        db,
        Submission(job()),
        Submission(job(), requests=(0,)),
        Submission(job(), requests=(1,)),
        Submission(job(dependency_policy=int(Policy.RUN_ANYWAY)), requests=(0,)),
    )
    await end(db, a.id, JobState.DEAD)
    done = await deps.resolve([a.id])
    assert sorted(j.id for j in done.cancelled) == sorted([b.id, c.id])
    assert [j.id for j in done.released] == [d.id]
    assert (await stored(db, b.id)).error == f"cancelled: dependency {a.id} ended DEAD"
    assert (await stored(db, c.id)).error == f"cancelled: dependency {b.id} ended CANCELLED"


async def test_an_end_nobody_resolved_is_found_as_stranded(db: Database) -> None:
    """Guards the reconciler's net: a dependency whose end was committed but not resolved
    (its writer died in between) is listed until it is resolved."""
    deps = DependencyStore(db)
    [parent] = await submit(db, Submission(job()))
    await submit(db, Submission(job(depends_on=[parent.id])))
    assert await deps.stranded() == []
    await end(db, parent.id, JobState.SUCCEEDED)
    assert await deps.stranded() == [parent.id]
    await deps.resolve([parent.id])
    assert await deps.stranded() == []


async def test_a_dependency_is_locked_until_the_dependent_is_committed(db: Database) -> None:
    """Guards the race between a submit and its dependency's end: marked as depended on
    in the submit's transaction, so the end's write says there is something to resolve."""
    [parent] = await submit(db, Submission(job()))
    await submit(db, Submission(job(depends_on=[parent.id])))
    [written] = await JobStore(db).write_outcomes([ended(parent.id, JobState.SUCCEEDED)])
    assert written.has_dependents


async def test_unknown_and_foreign_dependencies_are_refused_and_nothing_is_written(
    db: Database,
) -> None:
    """Guards validation in the store: another owner's job reads as unknown, and the
    submit's other jobs are not written."""
    [bobs] = await submit(db, Submission(job(owner="bob")))
    first = job()
    with pytest.raises(InvalidArgument) as refused:
        await submit(db, Submission(first), Submission(job(depends_on=[bobs.id])))
    assert [v.field for v in refused.value.violations] == ["requests[1].depends_on[0]"]
    assert await JobStore(db).get(first.id) is None


async def test_a_replay_revives_the_dependents_its_failure_cancelled(db: Database) -> None:
    """Guards include_dependents: after A (DEAD) is replayed, B and C (cancelled through
    it) wait again; E, also cancelled by another dependency that stays DEAD, does not."""
    deps = DependencyStore(db)
    a, x = await submit(db, Submission(job()), Submission(job()))
    b, c, e = await submit(
        db,
        Submission(job(depends_on=[a.id])),
        Submission(job(), requests=(0,)),
        Submission(job(depends_on=[a.id, x.id])),
    )
    await end(db, x.id, JobState.DEAD)
    await deps.resolve([x.id])
    await end(db, a.id, JobState.DEAD)
    await deps.resolve([a.id])
    await JobStore(db).replay(a.id, None, 3)
    revived = await deps.revive(a.id)
    assert sorted(j.id for j in revived) == sorted([b.id, c.id])
    assert all(j.state is JobState.SCHEDULED and j.dependencies_pending == 1 for j in revived)
    assert (await stored(db, e.id)).state is JobState.CANCELLED


async def test_a_released_batch_callback_carries_the_batch(db: Database) -> None:
    """Guards the callback's payload: counts by final state and the job ids, written in
    the transaction that releases it."""
    deps = DependencyStore(db)
    batch_id = job().id
    members = [job(batch_id=batch_id) for _ in range(3)]
    callback = job(batch_id=batch_id, dependency_policy=int(Policy.RUN_ANYWAY))
    await submit(
        db,
        *(Submission(m) for m in members),
        Submission(callback, requests=(0, 1, 2)),
        batch_id=batch_id,
    )
    outcomes = [JobState.SUCCEEDED, JobState.DEAD, JobState.SUCCEEDED]
    for member, state in zip(members, outcomes, strict=True):
        await end(db, member.id, state)
    done = await deps.resolve([m.id for m in members])
    [released] = done.released
    expected = {
        "id": batch_id,
        "counts": {"succeeded": 2, "dead": 1, "cancelled": 0},
        "job_ids": sorted(m.id for m in members),
    }
    assert released.payload["batch"] == expected
    assert (await stored(db, callback.id)).payload["batch"] == expected
    view = await deps.batch(batch_id, "alice")
    assert (view.job_count, view.unfinished) == (3, 0)


async def test_a_batch_goes_with_its_callback(db: Database) -> None:
    """Guards against batches outliving their jobs: deleting the finished callback (as
    retention and DeleteJobs do) deletes the batch, which GetBatch then does not find."""
    deps = DependencyStore(db)
    batch_id = job().id
    member = job(batch_id=batch_id)
    callback = job(batch_id=batch_id, dependency_policy=int(Policy.RUN_ANYWAY))
    await submit(db, Submission(member), Submission(callback, requests=(0,)), batch_id=batch_id)
    await end(db, member.id, JobState.SUCCEEDED)
    await deps.resolve([member.id])
    await end(db, callback.id, JobState.SUCCEEDED)
    assert (await deps.batch(batch_id, None)).unfinished == 0
    assert await ArtifactStore(db).delete_finished([member.id, callback.id]) == 2
    with pytest.raises(NotFound):
        await deps.batch(batch_id, None)
