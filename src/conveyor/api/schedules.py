"""What ScheduleService does (the API side of schedules; `conveyor.scheduling.emitter` is the
scheduler side): create, read, list, delete, pause, resume and trigger, each for the
schedule's owner or an admin (anyone else gets NOT_FOUND, as for jobs).

An owner may have up to CONVEYOR_MAX_SCHEDULES_PER_OWNER schedules: a schedule is a
standing claim on the schedulers' work and the database, so one owner cannot make them
without bound. Past the cap CreateSchedule is RESOURCE_EXHAUSTED with a QuotaFailure (the
code AIP-193 gives an exhausted per-owner quota; no RetryInfo, as only deleting helps).

A change that can bring a bucket closer (create, resume) is announced on
`cv:schedules`, so sleeping schedulers look again at once instead of at their next due
time.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import replace

from conveyor.api.jobs import JobOperations, list_owner
from conveyor.api.pagetokens import page_limit
from conveyor.api.ratelimit import Kind
from conveyor.db.schedules import ScheduleStore
from conveyor.errors import FieldViolation, InvalidArgument, NotFound, QuotaExceeded, Unavailable
from conveyor.jobs.model import Job, now_ms, valid_job_id
from conveyor.jobs.schedules import Schedule, schedule_from_proto, template_field
from conveyor.redis.keys import SCHEDULES_CHANNEL
from conveyor.redis.queue import unavailable_on_redis_errors
from conveyor.server.auth import Principal, Role
from conveyor.v1 import schedule_service_pb2 as pb


class ScheduleOperations:
    def __init__(self, store: ScheduleStore, jobs: JobOperations) -> None:
        self.store = store
        self.jobs = jobs
        self.max_payload = jobs.settings.max_payload_bytes

    async def create(self, principal: Principal, msg: pb.Schedule) -> Schedule:
        await self.jobs.charge(principal, Kind.SUBMIT)
        schedule = schedule_from_proto(
            msg, principal.owner, max_payload_bytes=self.max_payload, now=now_ms()
        )
        # A template its type refuses would fail at every bucket: refuse it now instead.
        spec = schedule.job_spec(key="check", run_at=None, max_payload_bytes=self.max_payload)
        field = f"schedule.{template_field(msg)}"
        bad = await self.jobs.type_violations(spec, f"{field}.type")
        bad = bad or self.jobs.payload_violations(spec, f"{field}.payload")
        if bad:
            raise InvalidArgument(bad)
        cap = self.jobs.settings.max_schedules_per_owner
        if not await self.store.insert(schedule, owner_cap=cap):
            raise QuotaExceeded(
                f"owner {schedule.owner!r} already has {cap} schedules, the most "
                "CONVEYOR_MAX_SCHEDULES_PER_OWNER allows: delete one first",
                subject=f"owner:{schedule.owner}",
            )
        await self._announce()
        return schedule

    async def get(self, principal: Principal, schedule_id: str) -> Schedule:
        await self.jobs.charge(principal, Kind.READ)
        return await self._visible(principal, schedule_id)

    async def list_schedules(
        self, principal: Principal, page_size: int, page_token: str, owner: str
    ) -> tuple[list[Schedule], str]:
        limit = page_limit(page_size)
        await self.jobs.charge(principal, Kind.READ)
        whose = list_owner(principal, owner or None)

        async def fetch(count: int, before: str | None) -> list[Schedule]:
            return await self.store.list_schedules(whose, limit=count, before_id=before)

        scope: list[str | int] = ["schedules", principal.owner, whose or ""]
        return await self.jobs.page_tokens.page(scope, page_token, limit, fetch)

    async def delete(self, principal: Principal, schedule_id: str) -> None:
        schedule = await self._visible(principal, schedule_id)
        await self.store.delete(schedule.id)

    async def pause(self, principal: Principal, schedule_id: str) -> Schedule:
        schedule = await self._visible(principal, schedule_id)
        if schedule.paused:
            return schedule
        paused = replace(schedule, paused=True)
        await self.store.set_state(paused)
        return paused

    async def resume(self, principal: Principal, schedule_id: str) -> Schedule:
        schedule = await self._visible(principal, schedule_id)
        if not schedule.paused:
            return schedule
        resumed = schedule.resumed(now_ms())
        await self.store.set_state(resumed)
        await self._announce()
        return resumed

    async def trigger(self, principal: Principal, schedule_id: str) -> Job:
        """One job from the template now, as the schedule's owner (a retried trigger
        makes another job: triggers have no bucket to be idempotent on)."""
        schedule = await self._visible(principal, schedule_id)
        spec = schedule.job_spec(
            key=f"schedule:{schedule.id}:manual:{uuid.uuid4()}",
            run_at=None,
            max_payload_bytes=self.max_payload,
        )
        owner = (
            principal if principal.owner == schedule.owner else Principal(schedule.owner, Role.USER)
        )
        return await self.jobs.submit(owner, spec)

    async def _visible(self, principal: Principal, schedule_id: str) -> Schedule:
        if not valid_job_id(schedule_id):
            raise InvalidArgument([FieldViolation("id", "must be a schedule id (a UUID)")])
        schedule = await self.store.get(schedule_id)
        if schedule is None or not (principal.is_admin or schedule.owner == principal.owner):
            raise NotFound(f"schedule {schedule_id} not found")
        return schedule

    async def _announce(self) -> None:
        """Wake the schedulers; if Redis is down they find the change on their next look."""
        with contextlib.suppress(Unavailable):
            async with unavailable_on_redis_errors():
                await self.jobs.queue.redis.publish(SCHEDULES_CHANNEL, "changed")
