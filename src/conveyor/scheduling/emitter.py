"""The scheduler's emitter: turns each due bucket of each schedule into one job.

Every scheduler replica runs one, and they all race: there is no leader to elect or lose.
A replica reads the schedules whose next bucket is due, submits each due bucket's job
through `JobOperations.submit` (the path of any submit, with the idempotency key
`schedule:<id>:<bucket>` and `run_at` = the bucket), then moves the schedule on with a
compare-and-set. Two replicas that emit the same bucket make one job: the second submit
finds the key and gets the same job back. A replica killed between its submit and its
compare-and-set leaves the bucket to the next replica, which makes no second job either.
A replica whose clock runs ahead emits a bucket early, but its job waits in the delayed
set until the bucket by the Redis clock; one whose clock runs behind merely leaves the
bucket to the others.

What counts as missed (and so follows the schedule's catch-up policy) is a bucket more
than `CONVEYOR_SCHEDULE_MISFIRE_SECONDS` old when a replica first looks at it; see
`conveyor.jobs.timetable.due`.

Between looks a replica sleeps until the earliest next bucket of any schedule, or until a
schedule changes (`cv:schedules`, published by the API), whichever is first: no polling.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from conveyor.api.jobs import JobOperations
from conveyor.config import Settings
from conveyor.db.schedules import Advance, ScheduleStore
from conveyor.errors import AlreadyExists, InvalidArgument, Unavailable
from conveyor.jobs.model import now_ms
from conveyor.jobs.schedules import Schedule
from conveyor.jobs.timetable import due
from conveyor.redis import EventHub
from conveyor.redis.keys import SCHEDULES_CHANNEL
from conveyor.server.auth import Principal, Role
from conveyor.telemetry import tracing

log = logging.getLogger(__name__)

DUE_PER_LOOK = 500
# The longest a replica sleeps without looking, in case it missed an announcement.
MAX_IDLE_SECONDS = 30.0


@dataclass(slots=True)
class EmitterStats:
    """What the scheduler's metrics read (`conveyor_schedule_fires_total`,
    `conveyor_schedule_buckets_skipped_total`)."""

    emitted: int = 0  # jobs this replica's submits created or found (one per bucket)
    skipped: int = 0  # missed buckets the catch-up policy left out


class Emitter:
    def __init__(
        self,
        schedules: ScheduleStore,
        jobs: JobOperations,
        hub: EventHub,
        settings: Settings,
    ) -> None:
        self.schedules = schedules
        self.jobs = jobs
        self.hub = hub
        self.grace_ms = int(settings.schedule_misfire_seconds * 1000)
        self.offset_ms = int(settings.scheduler_clock_offset_seconds * 1000)
        self.max_payload = settings.max_payload_bytes
        self.stats = EmitterStats()

    def now(self) -> int:
        """This replica's clock (offset only to test clock skew)."""
        return now_ms() + self.offset_ms

    async def run(self) -> None:
        """Emit until cancelled; an outage of either store only delays it."""
        changes = await self.hub.subscribe(SCHEDULES_CHANNEL)
        try:
            while True:
                try:
                    wait = await self.look()
                except Unavailable as exc:
                    log.warning("emitter: %s; trying again", exc)
                    wait = 1.0
                await changes.get(wait)
        finally:
            await self.hub.unsubscribe(changes)

    async def look(self) -> float:
        """Handle every due schedule; seconds until the next bucket of any schedule."""
        while True:
            found = await self.schedules.due(self.now(), DUE_PER_LOOK)
            if found:
                await self.handle(found)
            if len(found) < DUE_PER_LOOK:
                break
        upcoming = await self.schedules.next_due()
        if upcoming is None:
            return MAX_IDLE_SECONDS
        return min(max((upcoming - self.now()) / 1000, 0.001), MAX_IDLE_SECONDS)

    async def handle(self, found: list[Schedule]) -> None:
        """Emit the due buckets of these schedules (as each one's catch-up policy says),
        all at once so that their submits share commits, then move them on together."""
        started, now = time.perf_counter(), self.now()
        # What each schedule's next_run was when read: the compare-and-set's expectation.
        read = [s.next_run if s.next_run is not None else now for s in found]
        plans = [
            due(
                s.timetable,
                expected,
                now,
                grace_ms=self.grace_ms,
                policy=s.catch_up,
                limit=s.catch_up_limit,
            )
            for s, expected in zip(found, read, strict=True)
        ]
        outcomes = await asyncio.gather(
            *(self._emit_all(s, plan.emit) for s, plan in zip(found, plans, strict=True))
        )
        moves = [
            Advance(
                id=s.id,
                expected=expected,
                next_run=plan.next_run,
                last_run=plan.emit[-1] if plan.emit else None,
                last_job_id=last_job,
                last_error=error,
            )
            for s, expected, plan, (last_job, error) in zip(
                found, read, plans, outcomes, strict=True
            )
        ]
        moved = await self.schedules.advance(moves)
        buckets = sum(len(plan.emit) for plan in plans)
        skipped = sum(plan.skipped for plan in plans)
        self.stats.skipped += skipped
        log.info(
            "emitter: %d schedule(s), %d bucket(s) emitted, %d missed skipped, %d moved on "
            "by another scheduler first (%.1f ms)",
            len(found),
            buckets,
            skipped,
            len(found) - len(moved),
            (time.perf_counter() - started) * 1000,
        )

    async def _emit_all(self, schedule: Schedule, buckets: list[int]) -> tuple[str, str]:
        """Submit the buckets' jobs; the last one's id ("" if none was made) and, if the
        last bucket made none, why."""
        owner = Principal(schedule.owner, Role.USER, submit_limit=(0.0, 0.0))  # no rate limit
        made = await asyncio.gather(*(self._emit(schedule, owner, b) for b in buckets))
        last_job = next((job_id for job_id, _ in reversed(made) if job_id), "")
        return last_job, made[-1][1] if made else ""

    async def _emit(
        self, schedule: Schedule, owner: Principal, bucket: int
    ) -> tuple[str | None, str]:
        """Submit the bucket's job: its id, or None and why the template made none."""
        try:
            spec = schedule.job_spec(
                key=schedule.bucket_key(bucket), run_at=bucket, max_payload_bytes=self.max_payload
            )
            # The bucket's job starts a trace of its own (when tracing).
            with tracing.span("schedule.fire", {"conveyor.schedule.id": schedule.id}):
                job = await self.jobs.submit(owner, spec)
        except AlreadyExists:
            return None, ""  # made by an earlier version of the template: the bucket has one
        except InvalidArgument as exc:
            log.error("schedule %s: bucket %d makes no job: %s", schedule.id, bucket, exc.message)
            return None, f"bucket {bucket} made no job: {exc.message}"
        self.stats.emitted += 1
        return job.id, ""
