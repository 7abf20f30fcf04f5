"""ArtifactStore: the `job_artifacts` rows (what each job made, and where it is kept) and
the deletion of expired jobs that the retention sweeper drives."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Delete, Select, Table, and_, delete, exists, select

from conveyor.db.database import Database
from conveyor.db.jobs import unavailable_on_db_errors
from conveyor.db.models import ArtifactRow, BatchRow, ExpiryRow, JobRow
from conveyor.jobs.artifacts import Artifact
from conveyor.jobs.model import TERMINAL_STATES
from conveyor.jobs.shards import placement

_ARTIFACTS = cast(Table, ArtifactRow.__table__)
_JOBS = cast(Table, JobRow.__table__)
_EXPIRY = cast(Table, ExpiryRow.__table__)
_BATCHES = cast(Table, BatchRow.__table__)
_TERMINAL = [int(s) for s in TERMINAL_STATES]


def _artifact(row: Any) -> Artifact:
    return Artifact(
        job_id=row.job_id,
        name=row.name,
        key=row.object_key,
        size=row.size,
        content_type=row.content_type,
        sha256=row.sha256,
        create_time=row.create_time,
    )


class ArtifactStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, artifact: Artifact) -> None:
        """Remember an artifact (replacing one of the same job and name)."""
        values = {
            "job_id": artifact.job_id,
            "name": artifact.name,
            "object_key": artifact.key,
            "size": artifact.size,
            "content_type": artifact.content_type,
            "sha256": artifact.sha256,
            "create_time": artifact.create_time,
        }
        stmt = self.db.upsert(_ARTIFACTS, values, ["job_id", "name"])
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            await conn.execute(stmt)

    async def find(self, owner: str, job_id: str, name: str) -> Artifact | None:
        """An artifact of `owner`'s job (None: no such artifact, or another owner's job)."""
        stmt = (
            select(_ARTIFACTS)
            .join(_JOBS, _JOBS.c.id == _ARTIFACTS.c.job_id)
            .where(
                _ARTIFACTS.c.job_id == job_id,
                _ARTIFACTS.c.name == name,
                _JOBS.c.owner == owner,
            )
        )
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return _artifact(row) if row is not None else None

    async def of_job(self, job_id: str) -> list[Artifact]:
        """A job's artifacts by name."""
        stmt = select(_ARTIFACTS).where(_ARTIFACTS.c.job_id == job_id).order_by(_ARTIFACTS.c.name)
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            return [_artifact(r) for r in await conn.execute(stmt)]

    async def result_ref(self, job_id: str) -> str | None:
        stmt = select(_JOBS.c.result_ref).where(_JOBS.c.id == job_id)
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            return cast(str | None, (await conn.execute(stmt)).scalar())

    # -- retention -------------------------------------------------------------------------
    async def expired(self, now: int, limit: int) -> list[tuple[str, str, list[str]]]:
        """Finished jobs past their retention, oldest expiry first: (id, placement (the
        physical queue whose keys hold its hot state: `Job.placement`), the object
        keys they hold: artifacts and a stored result). Read through `job_expiry`'s index,
        so a sweep reads only what it deletes."""
        stmt = (
            select(_JOBS.c.id, _JOBS.c.queue, _JOBS.c.shard, _JOBS.c.result_ref)
            .join(_EXPIRY, _EXPIRY.c.job_id == _JOBS.c.id)
            .where(_EXPIRY.c.expire_time <= now, _JOBS.c.state.in_(_TERMINAL))
            .order_by(_EXPIRY.c.expire_time)
            .limit(limit)
        )
        return await self._holding(stmt)

    async def finished_holding(self, ids: Sequence[str]) -> list[tuple[str, str, list[str]]]:
        """Those of these jobs that have finished, as `expired` answers them (for
        DeleteJobs, which deletes them as the sweeper does)."""
        stmt = select(_JOBS.c.id, _JOBS.c.queue, _JOBS.c.shard, _JOBS.c.result_ref).where(
            _JOBS.c.id.in_(list(ids)), _JOBS.c.state.in_(_TERMINAL)
        )
        return await self._holding(stmt)

    async def _holding(self, stmt: Select[Any]) -> list[tuple[str, str, list[str]]]:
        """The jobs `stmt` selects (id, queue, shard, result_ref), each with the object
        keys it holds."""
        async with unavailable_on_db_errors(), self.db.engine.connect() as conn:
            jobs = (await conn.execute(stmt)).all()
            if not jobs:
                return []
            ids = [j.id for j in jobs]
            keys = {j.id: [j.result_ref] if j.result_ref else [] for j in jobs}
            found = select(_ARTIFACTS.c.job_id, _ARTIFACTS.c.object_key).where(
                _ARTIFACTS.c.job_id.in_(ids)
            )
            for row in await conn.execute(found):
                keys[row.job_id].append(row.object_key)
        return [(j.id, placement(j.queue, j.shard), keys[j.id]) for j in jobs]

    async def delete_finished(self, ids: Sequence[str]) -> int:
        """Delete those of these jobs that are finished (a job replayed since it was read
        stays), as `delete_jobs` does."""
        if not ids:
            return 0
        stmt = delete(_JOBS).where(_JOBS.c.id.in_(list(ids)), _JOBS.c.state.in_(_TERMINAL))
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            result = await conn.execute(stmt)
            await conn.execute(_batches_of_deleted(ids))
        return int(result.rowcount or 0)

    async def delete_jobs(self, ids: Sequence[str], now: int) -> int:
        """Delete these jobs (their attempts, once-markers and artifact rows go with them),
        unless one was replayed since it was found: only still-expired rows go."""
        if not ids:
            return 0
        still_expired = select(_EXPIRY.c.job_id).where(
            _EXPIRY.c.job_id.in_(list(ids)), _EXPIRY.c.expire_time <= now
        )
        stmt = delete(_JOBS).where(
            and_(_JOBS.c.id.in_(still_expired), _JOBS.c.state.in_(_TERMINAL))
        )
        async with unavailable_on_db_errors(), self.db.engine.begin() as conn:
            result = await conn.execute(stmt)
            await conn.execute(_batches_of_deleted(ids))
        return int(result.rowcount or 0)


def _batches_of_deleted(ids: Sequence[str]) -> Delete:
    """The batches whose callback was among the jobs just deleted (a batch lives as long as
    its callback, which ends after all of its jobs)."""
    gone = ~exists(select(_JOBS.c.id).where(_JOBS.c.id == _BATCHES.c.callback_job_id))
    return delete(_BATCHES).where(_BATCHES.c.callback_job_id.in_(list(ids)), gone)
