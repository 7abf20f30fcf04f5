"""DependencyStore: the dependency DAG and batches in the database: submitting jobs that
wait for others, resolving what a job's end does to the jobs that wait for it, reviving
them on a replay, and reading a batch. The rules are conveyor.jobs.dependencies'.

Every change here is one transaction, so a dependent is counted, cancelled or released
exactly once: an edge's state leaves PENDING in the statement that counts it, and a
second resolver of the same dependency (the reconciler after a writer, two replicas) finds
nothing left to count. Plain SQLAlchemy Core, the same statements on PostgreSQL and
SQLite: these are not the hot path (a job without dependencies never comes here).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    String,
    Table,
    and_,
    any_,
    bindparam,
    case,
    delete,
    func,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from conveyor.db import bulk
from conveyor.db.database import Database
from conveyor.db.jobs import unavailable_on_db_errors
from conveyor.db.models import BatchRow, DependencyRow, ExpiryRow, JobRow
from conveyor.db.rows import job_from_row, job_to_row, key_used
from conveyor.errors import FieldViolation, InvalidArgument, NotFound, outage
from conveyor.jobs.dependencies import (
    WAITING_FOR_SHOWN,
    Edge,
    Policy,
    Resolution,
    batch_doc,
    failed_error,
)
from conveyor.jobs.model import TERMINAL_STATES, Job, JobState, now_ms
from conveyor.v1 import job_pb2

_JOBS = cast(Table, JobRow.__table__)
_EDGES = cast(Table, DependencyRow.__table__)
_BATCHES = cast(Table, BatchRow.__table__)
_EXPIRY = cast(Table, ExpiryRow.__table__)
_PARENT, _CHILD = _JOBS.alias("parent"), _JOBS.alias("child")  # made once: 38 columns each
_TERMINAL = [int(s) for s in TERMINAL_STATES]
# Ids per IN list on SQLite (its builds before 3.32 allow 999 parameters a statement);
# PostgreSQL takes one array instead (`_among`).
CHUNK = 900
# Edges counted per transaction of a resolution: few at first, so that the first dependents
# of a large fan-out are enqueued at once, then twice as many each time, up to the last
# size, so that 10,000 take about 15 transactions. Each one is exactly-once on its own.
FIRST_CHUNK = 32
LAST_CHUNK = 1024
# Tries of a resolution that PostgreSQL ended as a deadlock (two resolutions that lock
# the same dependents in different orders): the loser is rolled back whole and tried again.
DEADLOCK_TRIES = 5


@dataclass(slots=True)
class Submission:
    """One request of a submit whose jobs have dependencies: the job as the request makes
    it (`depends_on`: the ids it named) and the earlier requests of the call it names."""

    job: Job
    requests: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class BatchView:
    """A batch as GetBatch shows it: its jobs counted by state (the callback not counted)."""

    id: str
    owner: str
    job_count: int
    callback_job_id: str
    create_time: int
    counts: dict[JobState, int]

    @property
    def unfinished(self) -> int:
        ended = sum(self.counts.get(s, 0) for s in TERMINAL_STATES)
        return max(self.job_count - ended, 0)

    def to_proto(self) -> job_pb2.Batch:
        msg = job_pb2.Batch(
            id=self.id,
            owner=self.owner,
            job_count=self.job_count,
            succeeded=self.counts.get(JobState.SUCCEEDED, 0),
            dead=self.counts.get(JobState.DEAD, 0),
            cancelled=self.counts.get(JobState.CANCELLED, 0),
            unfinished=self.unfinished,
            callback_job_id=self.callback_job_id,
        )
        msg.create_time.FromMilliseconds(self.create_time)
        return msg


class _Raced(Exception):
    """Another submit took one of the call's idempotency keys meanwhile: try again."""


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK]


def _deadlocked(exc: OperationalError) -> bool:
    return type(exc.orig).__name__ == "DeadlockDetected"


class DependencyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            yield conn

    # -- submit ----------------------------------------------------------------------------
    async def insert(self, subs: Sequence[Submission], *, batch_id: str = "") -> list[Job]:
        """Commit a submit's jobs with their edges, all or none; per request, the job it
        made or, for a reused idempotency key, the key's job. With `batch_id`, the last
        submission is the batch's callback. Unknown or another owner's dependencies are
        INVALID_ARGUMENT; a reused key whose request differs, ALREADY_EXISTS."""
        for _ in range(3):
            try:
                async with self._transaction() as conn:
                    return await _Insert(conn, subs, batch_id).run()
            except _Raced:
                continue
        raise outage("database")  # pragma: no cover - three races for one call's keys

    # -- resolve ---------------------------------------------------------------------------
    async def resolve(self, ended: Sequence[str]) -> Resolution:
        """Count the end of these jobs (each one ended) off their dependents: cancel,
        count down and release them, transitively for the cancelled; all of it. The caller
        enqueues `released`; should it fail to, the reconciler does."""
        total = Resolution()
        async for done in self.resolving(ended):
            total.released += done.released
            total.cancelled += done.cancelled
        return total

    async def resolving(self, ended: Sequence[str]) -> AsyncIterator[Resolution]:
        """`resolve`, a committed chunk at a time (see FIRST_CHUNK): what each did, for
        the caller to enqueue while the next is counted. In waves: the ended jobs'
        dependents, then those of the dependents this cancelled, until none is."""
        frontier, size = sorted(set(ended)), FIRST_CHUNK
        while frontier:
            cancelled: list[str] = []
            while True:
                done, counted = await self._chunk(frontier, size)
                if done.released or done.cancelled:
                    yield done
                cancelled += [j.id for j in done.cancelled]
                if counted < size:
                    break
                size = min(size * 2, LAST_CHUNK)
            frontier = sorted(cancelled)

    async def _chunk(self, parents: Sequence[str], size: int) -> tuple[Resolution, int]:
        """One transaction: count up to `size` pending edges of `parents`; what that did,
        and how many edges it counted."""
        for tries in range(1, DEADLOCK_TRIES + 1):
            try:
                async with self._transaction() as conn:
                    await _commit_without_waiting(conn)
                    counted = await _claim_edges(conn, parents, size)
                    cancelled = await _cancel_dependents(conn, counted)
                    released = await _count_down(conn, counted, {j.id for j in cancelled})
                    await _fill_batches(conn, [j for j in released if j.batch_id])
                    return Resolution(released, cancelled), len(counted)
            except OperationalError as exc:  # pragma: no cover - timing-dependent
                if not _deadlocked(exc) or tries == DEADLOCK_TRIES:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def stranded(self, limit: int = 1000) -> list[str]:
        """Ended jobs whose dependents have not counted their end yet: their writer died
        between the two transactions (the reconciler resolves them)."""
        stmt = (
            select(_EDGES.c.depends_on)
            .distinct()
            .join(_JOBS, _JOBS.c.id == _EDGES.c.depends_on)
            .where(_EDGES.c.state == int(Edge.PENDING), _JOBS.c.state.in_(_TERMINAL))
            .limit(limit)
        )
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            return [r.depends_on for r in await conn.execute(stmt)]

    # -- read ------------------------------------------------------------------------------
    async def waiting_for(self, job_id: str, limit: int = WAITING_FOR_SHOWN) -> tuple[str, ...]:
        """Some of the dependencies a job still waits for."""
        stmt = (
            select(_EDGES.c.depends_on)
            .where(_EDGES.c.job_id == job_id, _EDGES.c.state == int(Edge.PENDING))
            .order_by(_EDGES.c.depends_on)
            .limit(limit)
        )
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            return tuple(r.depends_on for r in await conn.execute(stmt))

    async def results(self, ids: Sequence[str]) -> dict[str, tuple[JobState, Any, str | None]]:
        """The state, result and result_ref of each of these jobs that still exists."""
        found: dict[str, tuple[JobState, Any, str | None]] = {}
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            for chunk in _chunks(ids):
                stmt = select(_JOBS.c.id, _JOBS.c.state, _JOBS.c.result, _JOBS.c.result_ref)
                for r in await conn.execute(stmt.where(_JOBS.c.id.in_(chunk))):
                    found[r.id] = (JobState(r.state), r.result, r.result_ref)
        return found

    async def batch(self, batch_id: str, owner: str | None) -> BatchView:
        """A batch and its jobs' states; NOT_FOUND for another owner's (`owner` None: an
        admin's call, any owner's)."""
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            row = (await conn.execute(select(_BATCHES).where(_BATCHES.c.id == batch_id))).first()
            if row is None or (owner is not None and row.owner != owner):
                raise NotFound(f"batch {batch_id} not found")
            counts = await _batch_counts(conn, batch_id, row.callback_job_id)
        return BatchView(
            id=row.id,
            owner=row.owner,
            job_count=row.job_count,
            callback_job_id=row.callback_job_id,
            create_time=row.create_time,
            counts=counts,
        )

    # -- replay ----------------------------------------------------------------------------
    async def revive(self, job_id: str) -> list[Job]:
        """After a replay of `job_id`: the dependents its end cancelled wait for it again,
        and so, transitively, do theirs. A dependent that a dependency not replayed also
        cancelled, or that has ended otherwise since, stays as it is. Returns the revived."""
        revived: list[Job] = []
        async with self._transaction() as conn:
            frontier, seen = [job_id], {job_id}
            while frontier:
                edges = select(_EDGES.c.job_id, _EDGES.c.depends_on).where(
                    _EDGES.c.depends_on.in_(frontier),
                    _EDGES.c.state == int(Edge.CANCELLED_DEPENDENT),
                )
                children = sorted({r.job_id for r in await conn.execute(edges)} - seen)
                waking = await _revivable(conn, children, seen | set(children))
                for job in waking:
                    revived.append(await _wait_again(conn, job, seen | set(children)))
                seen.update(children)
                frontier = [j.id for j in waking]
        return revived


async def _batch_counts(conn: AsyncConnection, batch_id: str, callback: str) -> dict[JobState, int]:
    stmt = (
        select(_JOBS.c.state, func.count())
        .where(_JOBS.c.batch_id == batch_id, _JOBS.c.id != callback)
        .group_by(_JOBS.c.state)
    )
    return {JobState(state): int(n) for state, n in await conn.execute(stmt)}


class _Insert:
    """One try of `DependencyStore.insert` in its transaction."""

    def __init__(self, conn: AsyncConnection, subs: Sequence[Submission], batch_id: str) -> None:
        self.conn = conn
        self.subs = subs
        self.batch_id = batch_id
        self.owner = subs[0].job.owner
        self.now = now_ms()
        self.states: dict[str, JobState] = {}  # every dependency's state, by id
        self.referenced: set[str] = set()  # new jobs another new job of the call names

    async def run(self) -> list[Job]:
        priors = await self._priors()
        answers = {**priors, **self._repeats(priors)}
        final = [answers[i].id if i in answers else s.job.id for i, s in enumerate(self.subs)]
        new = [s for i, s in enumerate(self.subs) if i not in answers]
        for i, sub in enumerate(self.subs):
            if i in priors:
                self.states[final[i]] = priors[i].state
            elif i not in answers:
                sub.job.depends_on = list(sub.job.depends_on) + [final[r] for r in sub.requests]
        await self._lock_existing(new)
        edges: list[dict[str, Any]] = []
        for sub in new:
            edges += self._settle(sub.job)
        await self._write(new, edges)
        return [answers.get(i, s.job) for i, s in enumerate(self.subs)]

    def _repeats(self, priors: dict[int, Job]) -> dict[int, Job]:
        """Requests that repeat an earlier request's key in the same call: answered with
        that request's job, as the group-committed path does (a different request under
        the key is ALREADY_EXISTS)."""
        first: dict[str, Submission] = {}
        repeats: dict[int, Job] = {}
        for i, sub in enumerate(self.subs):
            key = sub.job.idempotency_key
            if not key or i in priors:
                continue
            if key not in first:
                first[key] = sub
            elif first[key].job.request_hash != sub.job.request_hash:
                raise key_used(sub.job)
            else:
                repeats[i] = first[key].job
        return repeats

    async def _priors(self) -> dict[int, Job]:
        """The jobs that already hold the call's idempotency keys, by request index; a key
        reused for a different request is ALREADY_EXISTS."""
        keyed: dict[str, list[int]] = {}
        for i, sub in enumerate(self.subs):
            if sub.job.idempotency_key:
                keyed.setdefault(sub.job.idempotency_key, []).append(i)
        if not keyed:
            return {}
        stmt = select(_JOBS).where(
            _JOBS.c.owner == self.owner, _JOBS.c.idempotency_key.in_(list(keyed))
        )
        priors: dict[int, Job] = {}
        for row in await self.conn.execute(stmt):
            prior = job_from_row(row._mapping)
            for i in keyed[prior.idempotency_key or ""]:
                if prior.request_hash != self.subs[i].job.request_hash:
                    raise key_used(self.subs[i].job)
                priors[i] = prior
        return priors

    async def _lock_existing(self, new: Sequence[Submission]) -> None:
        """Lock the stored jobs the new ones depend on (so none ends unseen before this
        commits), mark them as depended on, and learn their states; any that is not the
        caller's is INVALID_ARGUMENT."""
        made = {s.job.id for s in new}
        wanted = sorted({d for s in new for d in s.job.depends_on if d not in made})
        for chunk in _chunks(wanted):
            # Marked first, then read: on SQLite the write is what begins the transaction
            # and takes its one writer's lock (a read before it sees a state an outcome
            # may change before this commits, and that outcome would not know to resolve).
            mark = (
                update(_JOBS)
                .where(_JOBS.c.id.in_(chunk), _JOBS.c.has_dependents.is_(False))
                .values(has_dependents=True)
            )
            await self.conn.execute(mark)
            stmt = (
                select(_JOBS.c.id, _JOBS.c.state)
                .where(_JOBS.c.id.in_(chunk), _JOBS.c.owner == self.owner)
                .with_for_update(read=True)
            )
            for r in await self.conn.execute(stmt):
                self.states[r.id] = JobState(r.state)
        missing = [d for d in wanted if d not in self.states]
        if missing:
            raise InvalidArgument(list(_unknown(new, set(missing))))

    def _settle(self, job: Job) -> list[dict[str, Any]]:
        """The new job's edges, its count of pending dependencies and its state: waiting
        (SCHEDULED), ready as submitted, or CANCELLED at once by a failed dependency."""
        edges, pending, failed = [], 0, None
        run_anyway = job.dependency_policy == Policy.RUN_ANYWAY
        for dep in job.depends_on:
            state = self.states[dep]
            edge = Edge.MET
            if not state.terminal:
                edge, pending = Edge.PENDING, pending + 1
            elif state is not JobState.SUCCEEDED and not run_anyway and failed is None:
                edge, failed = Edge.CANCELLED_DEPENDENT, (dep, state)
            elif state is not JobState.SUCCEEDED and not run_anyway:
                edge = Edge.FAILED
            edges.append({"job_id": job.id, "depends_on": dep, "state": int(edge)})
            if not state.terminal:
                self.referenced.add(dep)
        job.dependencies_pending = pending
        if failed is not None:
            job.state, job.finish_time = JobState.CANCELLED, self.now
            job.error = failed_error(failed[0], failed[1].name)
        elif pending:
            job.state = JobState.SCHEDULED
        self.states[job.id] = job.state
        return edges

    async def _write(self, new: Sequence[Submission], edges: list[dict[str, Any]]) -> None:
        jobs = [s.job for s in new]
        if self.conn.dialect.name == "postgresql":
            inserted = await _write_postgresql(self.conn, jobs, edges, self.referenced)
        else:
            rows = [job_to_row(j) | {"has_dependents": j.id in self.referenced} for j in jobs]
            stmt = _insert(self.conn, _JOBS).on_conflict_do_nothing().returning(_JOBS.c.id)
            inserted = len(list(await self.conn.execute(stmt, rows))) if rows else 0
            if edges:
                await self.conn.execute(insert(_EDGES), edges)
        if inserted != len(jobs):
            raise _Raced()
        for s in new:
            job = s.job
            if job.state is JobState.CANCELLED and job.retention_ms is not None:
                await _expires(self.conn, job.id, self.now + job.retention_ms)
        callback = new[-1].job if new and self.batch_id else None
        if callback is not None and callback.id == self.subs[-1].job.id:
            values = {
                "id": self.batch_id,
                "owner": self.owner,
                "job_count": len(self.subs) - 1,
                "callback_job_id": callback.id,
                "create_time": self.now,
            }
            await self.conn.execute(insert(_BATCHES), [values])
            if callback.dependencies_pending == 0:
                await _fill_batches(self.conn, [callback])


# The dependency columns of jobs `bulk.INSERT` has just inserted (it leaves them at their
# defaults), and a submit's edges, as arrays: one parameter each on psycopg's side.
_WAITING = """
UPDATE jobs SET depends_on = v.depends_on, dependency_policy = v.dependency_policy,
       dependencies_pending = v.dependencies_pending, has_dependents = v.has_dependents,
       batch_id = v.batch_id, error = v.error, finish_time = v.finish_time
FROM jsonb_to_recordset(%s::jsonb)
  AS v(id text, depends_on jsonb, dependency_policy smallint, dependencies_pending integer,
       has_dependents boolean, batch_id text, error text, finish_time bigint)
WHERE jobs.id = v.id
"""
_EDGES_IN = """
INSERT INTO job_dependencies (job_id, depends_on, state)
SELECT * FROM unnest(%s::text[], %s::text[], %s::smallint[])
"""


async def _write_postgresql(
    conn: AsyncConnection, jobs: Sequence[Job], edges: list[dict[str, Any]], referenced: set[str]
) -> int:
    """PostgreSQL's writes of a submit, on the transaction's own psycopg connection: the
    rows in one statement (the hot path's, `bulk.INSERT`: SQLAlchemy's many-row insert
    spends most of its time having psycopg parse tens of thousands of placeholders), their
    dependency columns in a second, the edges in a third. How many rows were inserted."""
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    inserted = 0
    async with raw.cursor() as cur:
        if jobs:
            await cur.execute(bulk.INSERT, bulk.records(bulk.insert_rows(jobs)))
            inserted = len(await cur.fetchall())
            waiting = [
                {
                    "id": j.id, "depends_on": j.depends_on or None,
                    "dependency_policy": j.dependency_policy,
                    "dependencies_pending": j.dependencies_pending,
                    "has_dependents": j.id in referenced, "batch_id": j.batch_id or None,
                    "error": j.error, "finish_time": j.finish_time,
                }
                for j in jobs
            ]  # fmt: skip
            await cur.execute(_WAITING, bulk.records(waiting))
        if edges:
            columns = [[e["job_id"] for e in edges], [e["depends_on"] for e in edges],
                       [e["state"] for e in edges]]  # fmt: skip
            await cur.execute(_EDGES_IN, columns)
    return inserted


def _unknown(new: Sequence[Submission], missing: set[str]) -> Iterator[FieldViolation]:
    """A violation per request naming a dependency that is not the caller's job."""
    shown = 0
    for i, sub in enumerate(new):
        for k, dep in enumerate(sub.job.depends_on):
            if dep in missing and shown < 10:
                shown += 1
                prefix = f"requests[{i}]." if len(new) > 1 else ""
                yield FieldViolation(
                    f"{prefix}depends_on[{k}]", f"no job {dep} of yours (unknown id)"
                )


def _insert(conn: AsyncConnection, table: Table) -> Any:
    """INSERT in the connection's dialect (for its ON CONFLICT clauses)."""
    return (sqlite if conn.dialect.name == "sqlite" else postgresql).insert(table)


async def _expires(conn: AsyncConnection, job_id: str, when: int) -> None:
    """Record when a job this cancelled expires (see conveyor.jobs.retention)."""
    stmt = _insert(conn, _EXPIRY).values(job_id=job_id, expire_time=when)
    await conn.execute(
        stmt.on_conflict_do_update(index_elements=["job_id"], set_={"expire_time": when})
    )


async def _commit_without_waiting(conn: AsyncConnection) -> None:
    """Let this resolution's commit return before its WAL reaches the disk (PostgreSQL's
    `synchronous_commit = off`, for this transaction alone): a fan-in's resolutions all
    lock its one dependent's row, and waiting for each fsync with the lock held made them
    queue. Safe because a resolution is only ever a consequence of an end that was
    committed durably: should PostgreSQL crash before this commit is on disk, the end is
    there with its edges pending, and the reconciler resolves it again (a dependent that
    was released and has run meanwhile is not released twice: only unfinished jobs are,
    and Redis keeps the copy it has)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SET LOCAL synchronous_commit = off"))


def _among(conn: AsyncConnection, column: Any, ids: Sequence[str]) -> Any:
    """`column IN ids`: one array parameter on PostgreSQL (a list of 1,000 parameters
    costs psycopg more to parse than the statement costs to run), a list on SQLite."""
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam(None, list(ids), type_=postgresql.ARRAY(String)))
    return column.in_(list(ids))


async def _claim_edges(
    conn: AsyncConnection, parents: Sequence[str], size: int
) -> list[tuple[str, str, Edge]]:
    """Move up to `size` pending edges of ended `parents` out of PENDING, each to what
    the end means for its dependent; the (dependent, dependency, edge) moved. An edge
    moved by another resolver, or locked by one now (SKIP LOCKED: it is counting them),
    is not moved or returned again."""
    parent, child = _PARENT, _CHILD
    met = (parent.c.state == int(JobState.SUCCEEDED)) | (
        child.c.dependency_policy == int(Policy.RUN_ANYWAY)
    )
    outcome = case(
        (met, int(Edge.MET)),
        (child.c.state.in_(_TERMINAL), int(Edge.FAILED)),
        else_=int(Edge.CANCELLED_DEPENDENT),
    )
    pending = (
        select(_EDGES.c.depends_on, _EDGES.c.job_id)
        .where(_among(conn, _EDGES.c.depends_on, parents), _EDGES.c.state == int(Edge.PENDING))
        .limit(size)
        .with_for_update(skip_locked=True)
    )
    stmt = (
        update(_EDGES)
        .where(
            tuple_(_EDGES.c.depends_on, _EDGES.c.job_id).in_(pending),
            parent.c.id == _EDGES.c.depends_on,
            parent.c.state.in_(_TERMINAL),
            child.c.id == _EDGES.c.job_id,
        )
        .values(state=outcome)
        .returning(_EDGES.c.job_id, _EDGES.c.depends_on, _EDGES.c.state)
    )
    return [(r.job_id, r.depends_on, Edge(r.state)) for r in await conn.execute(stmt)]


async def _cancel_dependents(
    conn: AsyncConnection, counted: Sequence[tuple[str, str, Edge]]
) -> list[Job]:
    """Cancel the dependents a failed dependency cancels (one statement per failed
    dependency: their error names it); the jobs cancelled."""
    by_parent: dict[str, list[str]] = {}
    for child, parent, edge in counted:
        if edge is Edge.CANCELLED_DEPENDENT:
            by_parent.setdefault(parent, []).append(child)
    if not by_parent:
        return []
    labels = await _states(conn, list(by_parent))
    now = now_ms()
    cancelled: list[Job] = []
    for parent, children in by_parent.items():
        error = failed_error(parent, labels.get(parent, JobState.CANCELLED).name)
        stmt = (
            update(_JOBS)
            .where(_among(conn, _JOBS.c.id, sorted(set(children))), _JOBS.c.state.not_in(_TERMINAL))
            .values(state=int(JobState.CANCELLED), finish_time=now, error=error)
            .returning(*_JOBS.c)
        )
        cancelled += [job_from_row(r._mapping) for r in await conn.execute(stmt)]
    for job in cancelled:
        if job.retention_ms is not None:
            await _expires(conn, job.id, now + job.retention_ms)
    return cancelled


async def _states(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, JobState]:
    found: dict[str, JobState] = {}
    for chunk in _chunks(ids):
        stmt = select(_JOBS.c.id, _JOBS.c.state).where(_JOBS.c.id.in_(chunk))
        found.update({r.id: JobState(r.state) for r in await conn.execute(stmt)})
    return found


async def _count_down(
    conn: AsyncConnection, counted: Sequence[tuple[str, str, Edge]], cancelled: set[str]
) -> list[Job]:
    """Count the moved edges off their dependents' pending counts (one statement per
    distinct count) and release those that reach 0 and have not ended: QUEUED, or
    SCHEDULED while their run_at lies ahead (a waiting job's state is SCHEDULED already).
    The released jobs, as stored (read whole only once released: a fan-in job's row holds
    the ids of all its dependencies, and each of their ends counts it down)."""
    per_child = Counter(child for child, _, _ in counted)
    by_count: dict[int, list[str]] = {}
    for child, n in per_child.items():
        by_count.setdefault(n, []).append(child)
    now = now_ms()
    ready_ids: list[str] = []
    for n, children in by_count.items():
        left = _JOBS.c.dependencies_pending - n
        ready = and_(left <= 0, _JOBS.c.state.not_in(_TERMINAL))
        state = case(
            (and_(ready, _JOBS.c.run_at <= now), int(JobState.QUEUED)),
            else_=_JOBS.c.state,
        )
        stmt = (
            update(_JOBS)
            .where(_among(conn, _JOBS.c.id, sorted(children)))
            .values(dependencies_pending=left, state=state)
            .returning(_JOBS.c.id, _JOBS.c.dependencies_pending, _JOBS.c.state)
        )
        for r in await conn.execute(stmt):
            if r.dependencies_pending <= 0 and r.state not in _TERMINAL and r.id not in cancelled:
                ready_ids.append(r.id)
    if not ready_ids:
        return []
    rows = await conn.execute(select(_JOBS).where(_among(conn, _JOBS.c.id, sorted(ready_ids))))
    return [job_from_row(r._mapping) for r in rows]


async def _fill_batches(conn: AsyncConnection, jobs: Iterable[Job]) -> None:
    """Give each released batch callback among `jobs` its `batch` document (counts and
    ids of the batch's jobs, as they ended), in the transaction that released it."""
    candidates = {j.id: j for j in jobs if j.batch_id}
    if not candidates:
        return
    stmt = select(_BATCHES).where(_BATCHES.c.callback_job_id.in_(list(candidates)))
    for batch in await conn.execute(stmt):
        job = candidates[batch.callback_job_id]
        members = (
            select(_JOBS.c.id, _JOBS.c.state)
            .where(_JOBS.c.batch_id == batch.id, _JOBS.c.id != job.id)
            .order_by(_JOBS.c.id)
        )
        rows = list(await conn.execute(members))
        ids = [r.id for r in rows]
        counts = Counter(JobState(r.state) for r in rows)
        named = {
            "succeeded": counts[JobState.SUCCEEDED],
            "dead": counts[JobState.DEAD],
            "cancelled": counts[JobState.CANCELLED],
        }
        job.payload = {**job.payload, "batch": batch_doc(batch.id, named, ids)}
        await conn.execute(update(_JOBS).where(_JOBS.c.id == job.id).values(payload=job.payload))


async def _revivable(
    conn: AsyncConnection, children: Sequence[str], reviving: set[str]
) -> list[Job]:
    """The CANCELLED dependents among `children` whose every failed edge comes from a job
    being revived (another failed dependency still cancels them)."""
    if not children:
        return []
    found: list[Job] = []
    for chunk in _chunks(children):
        rows = (
            select(_JOBS)
            .where(_JOBS.c.id.in_(chunk), _JOBS.c.state == int(JobState.CANCELLED))
            .with_for_update()
        )
        jobs = [job_from_row(r._mapping) for r in await conn.execute(rows)]
        failed = select(_EDGES.c.job_id, _EDGES.c.depends_on).where(
            _EDGES.c.job_id.in_([j.id for j in jobs]),
            _EDGES.c.state.in_([int(Edge.FAILED), int(Edge.CANCELLED_DEPENDENT)]),
        )
        blockers = {r.job_id for r in await conn.execute(failed) if r.depends_on not in reviving}
        found += [j for j in jobs if j.id not in blockers]
    return found


async def _wait_again(conn: AsyncConnection, job: Job, reviving: set[str]) -> Job:
    """Make a cancelled dependent wait again for the revived jobs it depends on."""
    reset = (
        update(_EDGES)
        .where(
            _EDGES.c.job_id == job.id,
            _EDGES.c.depends_on.in_(sorted(reviving)),
            _EDGES.c.state.in_([int(Edge.FAILED), int(Edge.CANCELLED_DEPENDENT)]),
        )
        .values(state=int(Edge.PENDING))
        .returning(_EDGES.c.depends_on)
    )
    waiting = len(list(await conn.execute(reset)))
    stmt = (
        update(_JOBS)
        .where(_JOBS.c.id == job.id)
        .values(
            state=int(JobState.SCHEDULED),
            error="",
            finish_time=None,
            fence=_JOBS.c.fence + 1,
            dependencies_pending=_JOBS.c.dependencies_pending + waiting,
        )
        .returning(*_JOBS.c)
    )
    row = (await conn.execute(stmt)).one()
    await conn.execute(delete(_EXPIRY).where(_EXPIRY.c.job_id == job.id))
    return job_from_row(row._mapping)
