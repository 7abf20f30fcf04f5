"""JobStore: every read and write of job rows. Writes are grouped: one transaction, one commit,
for many jobs, because the commit (fsync) is what a durable job system pays for."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    Select,
    Table,
    delete,
    exists,
    func,
    insert,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from conveyor.db.database import Database
from conveyor.db.job_filters import compile_filter, create_time_range
from conveyor.db.models import AttemptRow, EffectRow, ExpiryRow, JobRow
from conveyor.db.rows import (
    RolledBack,
    WriteResult,
    job_from_row,
    job_to_row,
    key_used,
    resolve_conflicts,
)
from conveyor.errors import ConveyorError, FailedPrecondition, NotFound, outage
from conveyor.jobs.attempts import Attempt, AttemptEnd, AttemptOutcome
from conveyor.jobs.filters import Filter, Restriction
from conveyor.jobs.model import TERMINAL_STATES, Job, JobState, now_ms
from conveyor.jobs.shards import placement
from conveyor.jobs.unique import Hold, holding, replaced

if TYPE_CHECKING:
    from conveyor.db.bulk import BulkStatements

log = logging.getLogger(__name__)

_JOBS = cast(Table, JobRow.__table__)
_ATTEMPTS = cast(Table, AttemptRow.__table__)
_EFFECTS = cast(Table, EffectRow.__table__)
_EXPIRY = cast(Table, ExpiryRow.__table__)
_TERMINAL = [int(s) for s in TERMINAL_STATES]
MAX_ATTEMPTS_LISTED = 1000
# How far a job's id time (UUIDv7: the millisecond new_job_id read the clock at) may be
# from its create_time (read by the API a moment before, once for a whole bulk submit).
# Normally 0-1 ms, or as long as making a bulk's jobs takes; more only if the clock is
# stepped back while jobs are made. A time-bounded listing scans this much beyond its
# bounds by id and filters by create_time, so it misses no job within the slack.
ID_CLOCK_SLACK_MS = 60_000
_UUID_TIME_MAX = (1 << 48) - 1
# A label or payload filter on PostgreSQL looks for a page of matches among this many
# newest jobs by id before it asks the GIN index (see JobStore._recent_then_indexed).
SCAN_WINDOW = 20_000
_DOCUMENTS = frozenset({"labels", "payload"})


def _first_id_at(ms: int) -> str:
    """The smallest job id whose time is `ms` or later: UUIDv7 ids (lowercase hex, as
    stored) sort by their leading 48-bit millisecond time first."""
    stamp = f"{min(max(ms, 0), _UUID_TIME_MAX):012x}"
    return f"{stamp[:8]}-{stamp[8:]}-0000-0000-000000000000"


def _ids_created_within(start: int | None, end: int | None) -> list[Any]:
    """Id bounds for jobs created in [start, end): wider by ID_CLOCK_SLACK_MS each way, as
    the caller also compares create_time itself."""
    bounds = []
    if start is not None:
        bounds.append(_JOBS.c.id >= _first_id_at(start - ID_CLOCK_SLACK_MS))
    if end is not None:
        bounds.append(_JOBS.c.id < _first_id_at(end + ID_CLOCK_SLACK_MS))
    return bounds


async def _put_back(replace: Callable[[Job], Awaitable[bool]], prior: Job) -> None:
    """Undo a debounce's rewrite of Redis whose row update failed: the job's earlier values
    back, if it still waits (if a worker took it meanwhile, it runs with the new ones and
    its row keeps the old: see `JobStore.insert_keyed`). Best effort: the submit fails
    with the error that made it fail, whatever this meets."""
    try:
        await replace(replaced(prior, prior))
    except Exception:
        log.warning("debounced job %s: its earlier payload could not be put back", prior.id)


@contextlib.asynccontextmanager
async def unavailable_on_db_errors() -> AsyncIterator[None]:
    """A database that cannot be reached is UNAVAILABLE to clients, not an internal error."""
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        raise outage("database") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise outage("database") from exc
        raise
    except OSError as exc:
        raise outage("database") from exc


class JobStore:
    """Job rows. On PostgreSQL the two hot paths (inserting submit batches, recording
    attempt outcomes) use `BulkStatements`; everything else, and SQLite, goes through
    SQLAlchemy Core."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.scan_window = SCAN_WINDOW
        self._bulk: BulkStatements | None = None
        if not db.is_sqlite:
            from conveyor.db.bulk import BulkStatements

            self._bulk = BulkStatements(db.url)

    async def close(self) -> None:
        if self._bulk is not None:
            await self._bulk.close()

    def _upsert(self, table: Table) -> Any:
        """INSERT … ON CONFLICT DO NOTHING in this database's dialect."""
        return self.db.insert(table).on_conflict_do_nothing()

    async def insert(
        self, jobs: Sequence[Job], *, all_or_nothing: bool = False
    ) -> list[Job | ConveyorError]:
        """Commit new jobs at once; per job, the job stored or why it was refused.

        A job whose (owner, idempotency_key) already exists is not inserted: it resolves to
        the existing job when the request fingerprint matches, else to AlreadyExists. With
        `all_or_nothing`, any AlreadyExists rolls the whole insert back.
        """
        if self._bulk is not None:
            return await self._bulk.insert(jobs, all_or_nothing=all_or_nothing)
        try:
            async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
                stmt = self._upsert(_JOBS).returning(_JOBS.c.id)
                rows = [job_to_row(job) for job in jobs]
                inserted = {r.id for r in await conn.execute(stmt, rows)}
                existing = await self._existing(conn, [j for j in jobs if j.id not in inserted])
                results = resolve_conflicts(jobs, inserted, existing, all_or_nothing=all_or_nothing)
        except RolledBack as rollback:
            return rollback.results
        return results

    async def insert_keyed(
        self, job: Job, now: int, replace: Callable[[Job], Awaitable[bool]]
    ) -> tuple[Job, bool]:
        """Commit a unique or debounced job (conveyor.jobs.unique): the job the submit
        answers, and whether it is `job`, new (to enqueue), rather than the key's holder.

        One transaction per try: insert; on the key's conflict, lock the row holding it and
        ask `holding` what to do. A row that gave its key up while this waited for its
        lock is gone from the lookup: the next try meets the job that took the key.
        REPLACE calls `replace` (debounce.lua, under the row's lock) with the job as the
        submit would make it; True (Redis has it so now) updates the row to match, False
        (it is due, started or ended) moves the key. Redis failing raises, which rolls the
        transaction back: the submit fails and nothing changed.

        Should the row's update or the commit fail after `replace`, the job's earlier values
        are put back in Redis (`_put_back`), so both stores keep them and the submit fails.
        Only a crash of this process between `replace` and the commit (or a claim between
        the failure and the put-back) leaves Redis with this submit's payload and the row
        with the previous one's: the job runs with the payload of a submit that was not
        answered OK, its row keeping the one before until a later submit of the burst
        rewrites both (a client retries a failed submit). Redis lost as well, the row's is
        the one restored and run."""
        for _ in range(5):
            rewrote: list[Job] = []  # the job as it was, once `replace` rewrote Redis's copy
            try:
                async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
                    outcome = await self._keyed_once(conn, job, now, replace, rewrote)
            except BaseException:
                if rewrote:  # the row stays as it was: so should Redis's copy, if it can
                    await _put_back(replace, rewrote[0])
                raise
            if outcome is not None:
                return outcome
        raise outage("database")  # pragma: no cover - five keys given up under one submit

    async def _keyed_once(
        self,
        conn: AsyncConnection,
        job: Job,
        now: int,
        replace: Callable[[Job], Awaitable[bool]],
        rewrote: list[Job],
    ) -> tuple[Job, bool] | None:
        """One try of `insert_keyed` in the transaction `conn`; None: the key's holder gave
        it up while this waited for its lock (try again)."""
        stmt = self._upsert(_JOBS).returning(_JOBS.c.id)
        if (await conn.execute(stmt, [job_to_row(job)])).first() is not None:
            return job, True
        prior = await self._holder(conn, job)
        if prior is None:
            return None
        hold = holding(prior, job, now)
        if hold is Hold.PLAIN:
            if prior.request_hash == job.request_hash:
                return prior, False
            raise key_used(job)
        if hold is Hold.HELD:
            return prior, False
        if hold is Hold.REPLACE:
            updated = replaced(prior, job)
            if await replace(updated):
                rewrote.append(prior)
                values = {
                    "payload": updated.payload,
                    "labels": updated.labels,
                    "request_hash": updated.request_hash,
                    "run_at": updated.run_at,
                }
                await conn.execute(update(_JOBS).where(_JOBS.c.id == prior.id).values(**values))
                return updated, False
        await conn.execute(update(_JOBS).where(_JOBS.c.id == prior.id).values(idempotency_key=None))
        await conn.execute(insert(_JOBS), [job_to_row(job)])
        return job, True

    async def _holder(self, conn: AsyncConnection, job: Job) -> Job | None:
        """The job holding `job`'s key, its row locked until the transaction ends."""
        stmt = (
            select(_JOBS)
            .where(_JOBS.c.owner == job.owner, _JOBS.c.idempotency_key == job.idempotency_key)
            .with_for_update()
        )
        row = (await conn.execute(stmt)).first()
        return job_from_row(row._mapping) if row is not None else None

    async def _existing(
        self, conn: AsyncConnection, jobs: Sequence[Job]
    ) -> dict[tuple[str, str], Job]:
        keys = {(j.owner, j.idempotency_key) for j in jobs if j.idempotency_key}
        if not keys:
            return {}
        stmt = select(_JOBS).where(tuple_(_JOBS.c.owner, _JOBS.c.idempotency_key).in_(keys))
        found = [job_from_row(r._mapping) for r in await conn.execute(stmt)]
        return {(j.owner, j.idempotency_key or ""): j for j in found}

    async def get(self, job_id: str, *, owner: str | None = None) -> Job | None:
        """The job, or None; with `owner`, None also when it is another owner's (the same
        statement either way, so both answers cost the same)."""
        stmt = select(_JOBS).where(_JOBS.c.id == job_id)
        if owner is not None:
            stmt = stmt.where(_JOBS.c.owner == owner)
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return job_from_row(row._mapping) if row is not None else None

    async def list_jobs(
        self,
        owner: str | None,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        type: str | None = None,
        limit: int = 100,
        before_id: str | None = None,
        create_time_start: int | None = None,
        create_time_end: int | None = None,
        filter: Filter | None = None,
        running: Collection[str] = (),
    ) -> list[Job]:
        """An owner's jobs (None: every owner's), newest first (UUIDv7 ids sort by time),
        after a keyset cursor; created in [create_time_start, create_time_end) when given;
        matching `filter` (an AIP-160 filter, see conveyor.db.job_filters), where `running`
        holds the ids of the jobs running now (rows never say RUNNING).

        The time bounds are exact on `create_time`, and also bound the id (see
        `ID_CLOCK_SLACK_MS`), so that the scan is a range of the index the listing already
        walks ((owner, id), or the primary key) rather than every newer job; so do the
        create_time comparisons a filter requires (`create_time_range`). No index on
        `create_time`: it would cost every submit an index write for a filter only reads
        use."""
        stmt = select(_JOBS)
        if owner is not None:
            stmt = stmt.where(_JOBS.c.owner == owner)
        dialect = self.db.engine.dialect.name
        if state is not None:  # as a filter's `state = S`: RUNNING is the running ids
            same = Restriction(("state",), "=", state, 0)
            stmt = stmt.where(compile_filter(same, dialect=dialect, running=running))
        if queue:
            stmt = stmt.where(_JOBS.c.queue == queue)
        if type:
            stmt = stmt.where(_JOBS.c.type == type)
        if before_id:
            stmt = stmt.where(_JOBS.c.id < before_id)
        if filter is not None:
            stmt = stmt.where(compile_filter(filter, dialect=dialect, running=running))
            stmt = stmt.where(*_ids_created_within(*create_time_range(filter)))
        if create_time_start is not None:
            stmt = stmt.where(_JOBS.c.create_time >= create_time_start)
        if create_time_end is not None:
            stmt = stmt.where(_JOBS.c.create_time < create_time_end)
        stmt = stmt.where(*_ids_created_within(create_time_start, create_time_end))
        stmt = stmt.order_by(_JOBS.c.id.desc()).limit(limit)
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            if self._bulk is not None and filter is not None and filter.fields() & _DOCUMENTS:
                rows = await self._recent_then_indexed(conn, stmt, owner, before_id, limit)
            else:
                rows = list(await conn.execute(stmt))
        return [job_from_row(r._mapping) for r in rows]

    async def _recent_then_indexed(
        self,
        conn: AsyncConnection,
        stmt: Select[Any],
        owner: str | None,
        before_id: str | None,
        limit: int,
    ) -> list[Any]:
        """A label or payload filter on PostgreSQL: the newest `scan_window` jobs in id
        order first, then, only if they hold fewer than a page of matches, the older ones
        through the GIN index (bitmap scan, then sort).

        The planner alone picks badly here: its estimate of how many rows a JSONB `@>`
        matches comes from a sample of whole documents, and is often 50 times too high
        for a rare value, so it walks the id index from the newest job looking for a page
        of matches it may only find after most of the table (0.25 s on 1,000,000 jobs).
        A common value fills the page from the window (one short index range); a rare one
        costs the window, then a bitmap of its few rows. See bench `search_latency`."""
        edge = select(_JOBS.c.id)
        if owner is not None:
            edge = edge.where(_JOBS.c.owner == owner)
        if before_id:
            edge = edge.where(_JOBS.c.id < before_id)
        edge = edge.order_by(_JOBS.c.id.desc()).offset(self.scan_window - 1).limit(1)
        boundary = (await conn.execute(edge)).scalar()
        if boundary is None:  # fewer jobs than the window: one ordinary statement
            return list(await conn.execute(stmt))
        recent = list(await conn.execute(stmt.where(_JOBS.c.id >= boundary)))
        if len(recent) >= limit:
            return recent
        # This transaction only: no plain index scan, so the id order comes from a sort.
        await conn.exec_driver_sql("SET LOCAL enable_indexscan = off")
        older = await conn.execute(stmt.where(_JOBS.c.id < boundary).limit(limit - len(recent)))
        return recent + list(older)

    async def newest_id(self) -> str | None:
        """The greatest job id (the newest job), None with no jobs: where a bulk operation
        starts walking down from."""
        stmt = select(_JOBS.c.id).order_by(_JOBS.c.id.desc()).limit(1)
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            return cast(str | None, (await conn.execute(stmt)).scalar())

    def _matching(
        self,
        owner: str | None,
        filter: Filter,
        states: Collection[JobState],
        top_id: str,
        running: Collection[str],
    ) -> list[Any]:
        """The where-clause of a bulk operation's jobs: the owner's (None: any), matching
        the filter, in one of `states`, no newer than `top_id`."""
        dialect = self.db.engine.dialect.name
        where = [
            _JOBS.c.id <= top_id,
            _JOBS.c.state.in_([int(s) for s in states]),
            compile_filter(filter, dialect=dialect, running=running),
            *_ids_created_within(*create_time_range(filter)),
        ]
        if owner is not None:
            where.append(_JOBS.c.owner == owner)
        return where

    async def count_matching(
        self,
        owner: str | None,
        filter: Filter,
        states: Collection[JobState],
        top_id: str,
        running: Collection[str] = (),
    ) -> int:
        """How many jobs a bulk operation would act on (its dry run's count)."""
        where = self._matching(owner, filter, states, top_id, running)
        stmt = select(func.count()).select_from(_JOBS).where(*where)
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar() or 0)

    async def matching_ids(
        self,
        owner: str | None,
        filter: Filter,
        states: Collection[JobState],
        top_id: str,
        *,
        below: str = "",
        limit: int,
        running: Collection[str] = (),
    ) -> list[tuple[str, str]]:
        """A page of a bulk operation's jobs as (id, owner), newest first, with ids below
        `below` ("" from `top_id` down)."""
        where = self._matching(owner, filter, states, top_id, running)
        if below:
            where.append(_JOBS.c.id < below)
        stmt = (
            select(_JOBS.c.id, _JOBS.c.owner).where(*where).order_by(_JOBS.c.id.desc()).limit(limit)
        )
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            return [(r.id, r.owner) for r in await conn.execute(stmt)]

    async def result(self, job_id: str) -> tuple[dict[str, Any] | None, str | None]:
        """What the job's handler returned (None: nothing, or not yet), or the object key
        of a result too large for the row."""
        stmt = select(_JOBS.c.result, _JOBS.c.result_ref).where(_JOBS.c.id == job_id)
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            return None, None
        return cast(dict[str, Any] | None, row.result), row.result_ref

    async def write_outcomes(self, writes: Sequence[AttemptEnd]) -> list[WriteResult]:
        """Record attempt outcomes at once, each fenced (see `AttemptEnd`), with their
        attempt records; a refused write comes back with the job's row as it stands."""
        if self._bulk is not None:
            done = await self._bulk.write_outcomes(writes)
        else:
            done = await self._write_outcomes_one_by_one(writes)
        missed = [w.id for w in writes if w.id not in done]
        current: dict[str, Job] = {}
        if missed:
            stmt = select(_JOBS).where(_JOBS.c.id.in_(missed))
            async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
                current = {r.id: job_from_row(r._mapping) for r in await conn.execute(stmt)}
        return [
            WriteResult(True, has_dependents=done[w.id])
            if w.id in done
            else WriteResult(False, current.get(w.id))
            for w in writes
        ]

    async def _write_outcomes_one_by_one(self, writes: Sequence[AttemptEnd]) -> dict[str, bool]:
        """SQLite's path: one fenced UPDATE per write, all in one transaction."""
        applied: dict[str, bool] = {}
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            for w in writes:
                values: dict[str, Any] = {
                    "state": int(w.state),
                    "attempt": w.attempt,
                    "error": w.error,
                    "progress": w.progress,
                    "progress_message": w.progress_message,
                    "start_time": w.start_time,
                    "finish_time": w.finish_time,
                    "result": w.result,
                    "result_ref": w.result_ref,
                }
                if w.run_at is not None:
                    values["run_at"] = w.run_at
                stmt = (
                    update(_JOBS)
                    .where(
                        _JOBS.c.id == w.id,
                        _JOBS.c.fence == w.fence,
                        _JOBS.c.attempt < w.attempt,
                        _JOBS.c.state.not_in(_TERMINAL),
                    )
                    .values(**values)
                    .returning(_JOBS.c.id, _JOBS.c.retention_ms, _JOBS.c.has_dependents)
                )
                row = (await conn.execute(stmt)).first()
                if row is not None:
                    applied[w.id] = bool(row.has_dependents)
                    await conn.execute(self._upsert(_ATTEMPTS), [_attempt_row(w.record)])
                    await self._expires(conn, w.id, w.finish_time, row.retention_ms)
        return applied

    async def _expires(
        self, conn: AsyncConnection, job_id: str, finish_time: int | None, retention: int | None
    ) -> None:
        """Record when a job that just finished expires (nothing while it is unfinished or
        kept forever); the statement that finished it is still open."""
        if finish_time is None or retention is None:
            return
        values = {"job_id": job_id, "expire_time": finish_time + retention}
        await conn.execute(self.db.upsert(_EXPIRY, values, ["job_id"]))

    async def fence(self, job_id: str, lost: Sequence[Attempt]) -> int | None:
        """Take over a job whose previous attempts were lost: bump its fence (so their
        workers can no longer write) and record them, if the job is unfinished.

        Returns the new fence; None if the job has finished meanwhile (a lost attempt wrote
        its outcome first) and must not run again.
        """
        stmt = (
            update(_JOBS)
            .where(_JOBS.c.id == job_id, _JOBS.c.state.not_in(_TERMINAL))
            .values(fence=_JOBS.c.fence + 1)
            .returning(_JOBS.c.fence)
        )
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            row = (await conn.execute(stmt)).first()
            if row is None:
                return None
            records = [_attempt_row(a) for a in lost if a.attempt > 0]
            if records:
                await conn.execute(self._upsert(_ATTEMPTS), records)
        return int(row.fence)

    async def attempts(
        self, job_id: str, *, limit: int = MAX_ATTEMPTS_LISTED, after: int = 0
    ) -> list[Attempt]:
        """A job's recorded attempts, oldest first: the first `limit` numbered above
        `after` (a keyset cursor on the primary key (job_id, attempt))."""
        stmt = (
            select(_ATTEMPTS)
            .where(_ATTEMPTS.c.job_id == job_id, _ATTEMPTS.c.attempt > after)
            .order_by(_ATTEMPTS.c.attempt)
            .limit(limit)
        )
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            rows = list(await conn.execute(stmt))
        return [Attempt(**{**r._mapping, "outcome": AttemptOutcome(r.outcome)}) for r in rows]

    async def claim_effect(self, job_id: str, key: str, attempt: int, fence: int) -> bool:
        """Claim side effect `key` of a job for the attempt holding `fence`: True exactly
        once per (job, key), and never for a stale attempt or a finished job."""
        current = exists().where(
            _JOBS.c.id == job_id, _JOBS.c.fence == fence, _JOBS.c.state.not_in(_TERMINAL)
        )
        source = select(literal(job_id), literal(key), literal(attempt), literal(now_ms())).where(
            current
        )
        stmt = (
            self._upsert(_EFFECTS)
            .from_select(["job_id", "key", "attempt", "create_time"], source)
            .returning(_EFFECTS.c.job_id)
        )
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            return (await conn.execute(stmt)).first() is not None

    async def unfinished(
        self, after_id: str, limit: int
    ) -> tuple[list[tuple[str, str, int]], str | None]:
        """One page of the reconciler's walk over all jobs in id order: the unfinished jobs
        among the next `limit` ids after `after_id` as (id, queue, fence), and the last id
        looked at (None: the walk is done). The queue is the job's physical one
        (`Job.placement`: its shard's, for a sharded queue).

        A walk by primary key instead of an index on state keeps outcome updates HOT (no
        index covers the columns they change); the cost is reading finished rows too.
        """
        page = (
            select(
                _JOBS.c.id,
                _JOBS.c.state,
                _JOBS.c.queue,
                _JOBS.c.shard,
                _JOBS.c.fence,
                _JOBS.c.dependencies_pending,
            )
            .where(_JOBS.c.id > after_id)
            .order_by(_JOBS.c.id)
            .limit(limit)
        )
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            rows = list(await conn.execute(page))
        refs = [
            (r.id, placement(r.queue, r.shard), r.fence)
            for r in rows
            if r.state not in _TERMINAL and not r.dependencies_pending  # waiting: not Redis's
        ]
        return refs, rows[-1].id if len(rows) == limit else None

    async def get_many(self, ids: Sequence[str]) -> list[Job]:
        if not ids:
            return []
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            found = await conn.execute(select(_JOBS).where(_JOBS.c.id.in_(ids)))
            return [job_from_row(r._mapping) for r in found]

    async def cancel(self, job_id: str, owner: str | None) -> Job:
        """Mark a job CANCELLED if it has not ended; NOT_FOUND for another owner's job.
        `owner` None: any owner's (an admin's call)."""
        now = now_ms()
        mine = [_JOBS.c.id == job_id] + ([_JOBS.c.owner == owner] if owner is not None else [])
        stmt = (
            update(_JOBS)
            .where(*mine, _JOBS.c.state.not_in(_TERMINAL))
            .values(state=int(JobState.CANCELLED), finish_time=now)
            .returning(*_JOBS.c)
        )
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            row = (await conn.execute(stmt)).first()
            if row is not None:
                await self._expires(conn, job_id, now, row.retention_ms)
                return job_from_row(row._mapping)
            current = (await conn.execute(select(_JOBS).where(_JOBS.c.id == job_id))).first()
        if current is None or (owner is not None and current.owner != owner):
            raise NotFound(f"job {job_id} not found")
        raise FailedPrecondition(
            f"job {job_id} is already {JobState(current.state).label} and cannot be cancelled"
        )

    async def record_cancelled(self, stopped: Attempt, *, replace: bool = False) -> None:
        """Record the attempt a cancel stopped (outcome CANCELLED), once the cancel is
        committed, and make the job's row say that attempt ran (its number and start).

        Two writers may know of it: the API, which learns from Redis that the cancel
        stopped a running attempt, and the attempt's worker, when its handler had already
        returned and its outcome was refused (`replace`: its record, which says so, wins
        over the API's; the API's never replaces one). Only a job still CANCELLED whose row
        records no later attempt is touched, so a replay that ran since is left alone."""
        job = (
            update(_JOBS)
            .where(
                _JOBS.c.id == stopped.job_id,
                _JOBS.c.state == int(JobState.CANCELLED),
                _JOBS.c.attempt <= stopped.attempt,
            )
            .values(attempt=stopped.attempt, start_time=stopped.start_time)
            .returning(_JOBS.c.id)
        )
        row = _attempt_row(stopped)
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            if (await conn.execute(job)).first() is None:
                return
            if replace:
                await conn.execute(self.db.upsert(_ATTEMPTS, row, ["job_id", "attempt"]))
            else:
                await conn.execute(self._upsert(_ATTEMPTS), [row])

    async def replay(self, job_id: str, owner: str | None, max_attempts: int) -> Job:
        """Make a DEAD or CANCELLED job QUEUED again with `max_attempts` more attempts.

        The fence moves on, so a worker still holding an attempt from before cannot write
        over the replay. `owner` None: any owner (admin)."""
        conditions = [_JOBS.c.id == job_id]
        if owner is not None:
            conditions.append(_JOBS.c.owner == owner)
        now = now_ms()
        stmt = (
            update(_JOBS)
            .where(
                *conditions,
                _JOBS.c.state.in_([int(JobState.DEAD), int(JobState.CANCELLED)]),
            )
            .values(
                state=int(JobState.QUEUED),
                fence=_JOBS.c.fence + 1,
                max_attempts=_JOBS.c.attempt + max_attempts,
                error="",
                progress=0.0,
                progress_message="",
                run_at=now,
                finish_time=None,
            )
            .returning(*_JOBS.c)
        )
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            row = (await conn.execute(stmt)).first()
            if row is not None:
                # Unfinished again: not to be swept (it gets a new expiry when it ends).
                await conn.execute(delete(_EXPIRY).where(_EXPIRY.c.job_id == job_id))
                return job_from_row(row._mapping)
            current = (await conn.execute(select(_JOBS).where(*conditions))).first()
        if current is None:
            raise NotFound(f"job {job_id} not found")
        raise FailedPrecondition(
            f"job {job_id} is {JobState(current.state).label}; only DEAD or CANCELLED jobs "
            "can be retried"
        )


def _attempt_row(attempt: Attempt) -> dict[str, Any]:
    return {
        "job_id": attempt.job_id,
        "attempt": attempt.attempt,
        "outcome": int(attempt.outcome),
        "worker_id": attempt.worker_id,
        "start_time": attempt.start_time,
        "finish_time": attempt.finish_time,
        "error": attempt.error,
        "traceback": attempt.traceback,
    }
