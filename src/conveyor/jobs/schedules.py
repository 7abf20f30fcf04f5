"""Schedules: recurring jobs, as ScheduleService takes them and the scheduler emits them.

A schedule has a timetable (`conveyor.jobs.timetable`: a cron expression in a time zone, or a
fixed interval, within optional start and end times), a job template (`JobTemplate`: a
SubmitJobRequest without idempotency key and run time, stored as SubmitJobRequest JSON) and
a catch-up policy for buckets missed while no scheduler ran. Each bucket becomes one job,
submitted through the same path as any other submit with the idempotency key
`schedule:<id>:<bucket ms>` and `run_at` = the bucket: so however many schedulers emit the
same bucket, and however their clocks disagree, the database holds one job for it, and that
job does not start before its bucket (the queue's Redis clock decides).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from google.protobuf import json_format

from conveyor.errors import FieldViolation, InvalidArgument
from conveyor.jobs.model import JobSpec, duration_ms, new_job_id, spec_from_proto, timestamp_ms
from conveyor.jobs.timetable import CatchUp, Timetable
from conveyor.v1 import job_service_pb2, schedule_service_pb2

DEFAULT_CATCH_UP_LIMIT = 100
MAX_CATCH_UP_LIMIT = 1000
MAX_DESCRIPTION = 256
MAX_CRON = 256
UPCOMING = 5


@dataclass(frozen=True, slots=True)
class Schedule:
    id: str
    owner: str
    timetable: Timetable
    # The job template: a SubmitJobRequest as protobuf JSON (validated when stored).
    template: dict[str, Any]
    description: str = ""
    catch_up: CatchUp = CatchUp.SKIP
    catch_up_limit: int = DEFAULT_CATCH_UP_LIMIT
    paused: bool = False
    # The first bucket not yet handled; None once the schedule is over.
    next_run: int | None = None
    last_run: int | None = None
    last_job_id: str = ""
    last_error: str = ""
    create_time: int = 0

    def bucket_key(self, bucket: int) -> str:
        """The idempotency key of the bucket's job: the same from every scheduler."""
        return f"schedule:{self.id}:{bucket}"

    def job_spec(self, *, key: str, run_at: int | None, max_payload_bytes: int) -> JobSpec:
        """The template as a validated JobSpec with this idempotency key and run time."""
        request = job_service_pb2.SubmitJobRequest()
        json_format.ParseDict(self.template, request)
        request.idempotency_key = key
        if run_at is not None:
            request.run_at.FromMilliseconds(run_at)
        return spec_from_proto(request, max_payload_bytes=max_payload_bytes, prefix="job.")

    def resumed(self, now: int) -> Schedule:
        """Running again from the first bucket after `now` (a pause is not caught up)."""
        return replace(self, paused=False, next_run=self.timetable.next_after(now))

    def to_proto(self) -> schedule_service_pb2.Schedule:
        tt = self.timetable
        msg = schedule_service_pb2.Schedule(
            id=self.id,
            owner=self.owner,
            description=self.description,
            time_zone=tt.time_zone,
            catch_up=int(self.catch_up),  # type: ignore[arg-type]
            catch_up_limit=self.catch_up_limit,
            paused=self.paused,
            last_job_id=self.last_job_id,
            last_error=self.last_error,
        )
        if tt.cron:
            msg.cron = tt.cron
        else:
            msg.interval.FromMilliseconds(tt.interval_ms)
        json_format.ParseDict(self.template, msg.job_template, ignore_unknown_fields=True)
        msg.job.ParseFromString(msg.job_template.SerializeToString())  # for older clients
        if tt.start_ms is not None:
            msg.start_time.FromMilliseconds(tt.start_ms)
        if tt.end_ms is not None:
            msg.end_time.FromMilliseconds(tt.end_ms)
        if not self.paused and self.next_run is not None:
            for bucket in [self.next_run, *tt.upcoming(self.next_run, UPCOMING - 1)]:
                msg.next_run_times.add().FromMilliseconds(bucket)
        if self.last_run is not None:
            msg.last_run_time.FromMilliseconds(self.last_run)
        msg.create_time.FromMilliseconds(self.create_time)
        return msg


def schedule_from_proto(
    msg: schedule_service_pb2.Schedule, owner: str, *, max_payload_bytes: int, now: int
) -> Schedule:
    """A new schedule from a CreateSchedule request: every problem is reported at once as
    a field violation (`schedule.…`), the job template checked as a submit would be."""
    bad: list[FieldViolation] = []

    def violation(name: str, why: str) -> None:
        bad.append(FieldViolation(f"schedule.{name}", why))

    if len(msg.description) > MAX_DESCRIPTION or not msg.description.isprintable():
        violation("description", f"printable, at most {MAX_DESCRIPTION} characters")
    timing = msg.WhichOneof("timing")
    if timing == "cron" and (len(msg.cron) > MAX_CRON or not msg.cron.isprintable()):
        violation("cron", f"printable, at most {MAX_CRON} characters")
    if not msg.time_zone.isprintable():
        violation("time_zone", "is not a time zone name")
    start = _time_ms(msg, "start_time", violation)
    end = _time_ms(msg, "end_time", violation)
    interval_ms = duration_ms(msg.interval) if timing == "interval" else 0
    if interval_ms is None:
        violation("interval", "is not a valid duration")
    timetable = Timetable(
        cron=msg.cron if timing == "cron" else "",
        time_zone=msg.time_zone or "UTC",
        interval_ms=interval_ms or 0,
        start_ms=start,
        end_ms=end,
    )
    if timing is None:
        violation("timing", "set cron or interval")
    elif not bad:
        for name, why in timetable.problems():
            violation(name, why)
    if msg.catch_up not in schedule_service_pb2.CatchUpPolicy.values():
        violation("catch_up", "is not a CatchUpPolicy")
    if not 0 <= msg.catch_up_limit <= MAX_CATCH_UP_LIMIT:
        violation("catch_up_limit", f"must be 0-{MAX_CATCH_UP_LIMIT}")
    template = _template(msg, max_payload_bytes, bad)
    if bad:
        raise InvalidArgument(bad)
    first = timetable.next_after(max(now, start - 1) if start is not None else now)
    return Schedule(
        id=new_job_id(),
        owner=owner,
        timetable=timetable,
        template=template,
        description=msg.description,
        catch_up=CatchUp(msg.catch_up) if msg.catch_up else CatchUp.SKIP,
        catch_up_limit=msg.catch_up_limit or DEFAULT_CATCH_UP_LIMIT,
        next_run=first,
        create_time=now,
    )


def template_field(msg: schedule_service_pb2.Schedule) -> str:
    """The field that carries a request's job template: `job_template`, or the deprecated
    `job` of clients written before it (so violations name the field the caller set)."""
    return "job" if msg.HasField("job") and not msg.HasField("job_template") else "job_template"


def _template(
    msg: schedule_service_pb2.Schedule, max_payload_bytes: int, bad: list[FieldViolation]
) -> dict[str, Any]:
    """The job template as stored (a SubmitJobRequest as protobuf JSON), after checking it
    as the submits it will make."""
    if msg.HasField("job") and msg.HasField("job_template"):
        bad.append(
            FieldViolation("schedule.job", "set job_template, or the deprecated job; not both")
        )
        return {}
    field = template_field(msg)
    if field == "job":
        job = msg.job
        bad += _per_bucket_violations(job)
    else:
        job = _as_submit_request(msg.job_template)
    try:
        spec_from_proto(job, max_payload_bytes=max_payload_bytes, prefix=f"schedule.{field}.")
    except InvalidArgument as invalid:
        bad += invalid.violations
        return {}
    return json_format.MessageToDict(job)


def _as_submit_request(
    template: schedule_service_pb2.JobTemplate,
) -> job_service_pb2.SubmitJobRequest:
    """The template as the SubmitJobRequest it is on the wire (the same field numbers).
    Fields unknown to JobTemplate are dropped first: a client sending the bytes of a
    SubmitJobRequest must not smuggle in an idempotency key or run time through them."""
    known = schedule_service_pb2.JobTemplate()
    known.CopyFrom(template)
    known.DiscardUnknownFields()
    return job_service_pb2.SubmitJobRequest.FromString(known.SerializeToString())


def _per_bucket_violations(job: job_service_pb2.SubmitJobRequest) -> list[FieldViolation]:
    """What a (deprecated) `Schedule.job` sets that the scheduler sets per bucket."""
    bad = []
    if job.idempotency_key:
        bad.append(FieldViolation("schedule.job.idempotency_key", "is set per bucket; leave it"))
    if job.HasField("run_at"):
        bad.append(FieldViolation("schedule.job.run_at", "is the bucket time; leave it"))
    if job.HasField("delay"):
        bad.append(FieldViolation("schedule.job.delay", "is the bucket time; leave it"))
    return bad


def _time_ms(msg: schedule_service_pb2.Schedule, name: str, violation: Any) -> int | None:
    if not msg.HasField(name):
        return None
    value = timestamp_ms(getattr(msg, name))
    if value is None:
        violation(name, "is not a valid time")
    return value
