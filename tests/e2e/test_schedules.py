"""ScheduleService against the real api: create, read, list, pause, resume, trigger and
delete, owner isolation, and validation of every field. (Emission by scheduler processes:
tests/faults/test_schedulers.py.)"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import descriptor_pb2

from conveyor.client import AsyncClient, schedule_request
from conveyor.errors import InvalidArgument, NotFound
from conveyor.v1 import job_service_pb2
from conveyor.v1 import schedule_service_pb2 as pb
from tests.processes import Stack


def times(schedule: pb.Schedule) -> list[datetime]:
    return [t.ToDatetime(tzinfo=UTC) for t in schedule.next_run_times]


async def test_a_schedule_shows_its_next_runs_and_can_be_paused_and_resumed(
    alice: AsyncClient,
) -> None:
    """Guards the read side: five upcoming buckets at the cron's times in its time zone
    (03:00 in Berlin is 01:00 or 02:00 UTC), none while paused, and back on resume."""
    made = await alice.create_schedule(
        schedule_request("noop", cron="0 3 * * *", time_zone="Europe/Berlin", queue="parked")
    )
    assert made.owner == "alice" and not made.paused and len(made.next_run_times) == 5
    upcoming = times(made)
    assert all(b - a == timedelta(days=1) or abs(b - a - timedelta(days=1)) == timedelta(hours=1)
               for a, b in itertools.pairwise(upcoming))  # fmt: skip
    assert all(t.hour in (1, 2) and t.minute == 0 for t in upcoming)
    got = await alice.get_schedule(made.id)
    assert got.cron == "0 3 * * *"
    assert got.job_template.type == "noop" and got.job_template.queue == "parked"
    paused = await alice.pause_schedule(made.id)
    assert paused.paused and not paused.next_run_times
    resumed = await alice.resume_schedule(made.id)
    assert not resumed.paused and times(resumed)[0] == upcoming[0]
    listed = await alice.list_schedules(page_size=1000)
    assert made.id in {s.id for s in listed.schedules}


async def test_trigger_makes_a_job_now_and_delete_leaves_it(alice: AsyncClient) -> None:
    made = await alice.create_schedule(
        schedule_request("noop", {"k": "v"}, every=3600, queue="parked", priority=7)
    )
    job = await alice.trigger_schedule(made.id)
    assert job.owner == "alice" and job.priority == 7 and dict(job.payload) == {"k": "v"}
    assert job.idempotency_key.startswith(f"schedule:{made.id}:manual:")
    await alice.delete_schedule(made.id)
    with pytest.raises(NotFound):
        await alice.get_schedule(made.id)
    assert (await alice.get(job.id)).id == job.id


async def test_other_owners_schedules_are_not_found(
    alice: AsyncClient, bob: AsyncClient, stack: Stack
) -> None:
    made = await alice.create_schedule(schedule_request("noop", every=60, queue="parked"))
    for action in (
        bob.get_schedule,
        bob.pause_schedule,
        bob.resume_schedule,
        bob.trigger_schedule,
        bob.delete_schedule,
    ):
        with pytest.raises(NotFound):
            await action(made.id)
    assert made.id not in {s.id for s in (await bob.list_schedules()).schedules}
    assert (await alice.get_schedule(made.id)).id == made.id


async def test_every_bad_field_is_reported(alice: AsyncClient) -> None:
    """Guards validation: each problem is a field violation, and nothing is stored."""
    bad = schedule_request(
        "no such type!", cron="61 * * * *", time_zone="Mars/Olympus", catch_up_limit=5000,
        max_attempts=1000, start=datetime(2030, 1, 2, tzinfo=UTC),
        end=datetime(2030, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    with pytest.raises(InvalidArgument) as refused:
        await alice.create_schedule(bad)
    fields = {v.field for v in refused.value.violations}
    assert {
        "schedule.cron",
        "schedule.time_zone",
        "schedule.catch_up_limit",
        "schedule.job_template.type",
        "schedule.job_template.max_attempts",
    } <= fields, fields
    with pytest.raises(InvalidArgument) as no_timing:
        await alice.create_schedule(schedule_request("noop"))
    assert {v.field for v in no_timing.value.violations} == {"schedule.timing"}
    with pytest.raises(InvalidArgument) as too_often:
        await alice.create_schedule(schedule_request("noop", every=0.1))
    assert {v.field for v in too_often.value.violations} == {"schedule.interval"}


async def test_an_ended_schedule_has_no_next_runs(alice: AsyncClient) -> None:
    past = datetime.now(UTC) - timedelta(days=1)
    made = await alice.create_schedule(
        schedule_request("noop", every=60, start=past - timedelta(days=1), end=past)
    )
    assert not made.next_run_times


async def test_the_deprecated_job_field_still_creates_and_reads(alice: AsyncClient) -> None:
    """Guards compatibility with clients written before JobTemplate: a schedule made from
    `Schedule.job` (a SubmitJobRequest) works, answers carry the template in both fields,
    the per-bucket fields are still refused there, and setting both fields is refused."""
    old = pb.Schedule(interval=timedelta(hours=1))
    old.job.type, old.job.queue, old.job.priority = "noop", "parked", 7
    old.job.payload.update({"k": "v"})
    made = await alice.create_schedule(old)
    for template in (made.job, made.job_template):
        assert (template.type, template.queue, template.priority) == ("noop", "parked", 7)
        assert dict(template.payload) == {"k": "v"}
    job = await alice.trigger_schedule(made.id)
    assert (job.type, job.priority, dict(job.payload)) == ("noop", 7, {"k": "v"})

    keyed = pb.Schedule(interval=timedelta(hours=1))
    keyed.job.type, keyed.job.idempotency_key = "noop", "mine"
    keyed.job.delay.FromSeconds(5)
    with pytest.raises(InvalidArgument) as per_bucket:
        await alice.create_schedule(keyed)
    assert {v.field for v in per_bucket.value.violations} == {
        "schedule.job.idempotency_key",
        "schedule.job.delay",
    }
    both = schedule_request("noop", every=3600)
    both.job.type = "noop"
    with pytest.raises(InvalidArgument) as twice:
        await alice.create_schedule(both)
    assert {v.field for v in twice.value.violations} == {"schedule.job"}


async def test_a_template_cannot_smuggle_per_bucket_fields(alice: AsyncClient) -> None:
    """Guards the wire twin: the bytes of a SubmitJobRequest parse as a JobTemplate with its
    idempotency key and run time as unknown fields. The server drops them rather than read
    them back as a key or a run time for every job the schedule makes."""
    request = job_service_pb2.SubmitJobRequest(type="noop", queue="parked", idempotency_key="k")
    request.run_at.FromSeconds(1)
    smuggling = pb.Schedule(interval=timedelta(hours=1))
    smuggling.job_template.MergeFromString(request.SerializeToString())
    made = await alice.create_schedule(smuggling)
    assert not made.job.idempotency_key and not made.job.HasField("run_at")
    job = await alice.trigger_schedule(made.id)
    assert job.idempotency_key.startswith(f"schedule:{made.id}:manual:")
    assert job.run_at > datetime.now(UTC) - timedelta(minutes=5)


def test_a_template_is_a_submit_request_on_the_wire() -> None:
    """Guards the documented promise that JobTemplate shares SubmitJobRequest's field
    numbers: every template field is the request field of the same name, number and type,
    and the nine it lacks (view, unique_for, debounce and the dependencies among them) are
    reserved by number and name (so none is ever reused)."""
    request = job_service_pb2.SubmitJobRequest.DESCRIPTOR
    for field in pb.JobTemplate.DESCRIPTOR.fields:
        twin = request.fields_by_name[field.name]
        assert (field.number, field.type) == (twin.number, twin.type), field.name
    file = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    (template,) = (m for m in file.message_type if m.name == "JobTemplate")
    reserved = {n for r in template.reserved_range for n in range(r.start, r.end)}
    lacking = {f.number for f in request.fields} - {f.number for f in template.field}
    assert reserved == lacking == {5, 6, 10, 12, 15, 16, 18, 19, 20}
    assert set(template.reserved_name) == {
        "idempotency_key",
        "run_at",
        "delay",
        "view",
        "unique_for",
        "debounce",
        "depends_on",
        "depends_on_requests",
        "dependency_failure_policy",
    }
