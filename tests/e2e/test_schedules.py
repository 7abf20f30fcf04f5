"""ScheduleService against the real api: create, read, list, pause, resume, trigger and
delete, owner isolation, and validation of every field. (Emission by scheduler processes:
tests/faults/test_schedulers.py.)"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from conveyor.client import AsyncClient, schedule_request
from conveyor.errors import InvalidArgument, NotFound
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
    assert got.cron == "0 3 * * *" and got.job.type == "noop" and got.job.queue == "parked"
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
        idempotency_key="mine", start=datetime(2030, 1, 2, tzinfo=UTC),
        end=datetime(2030, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    with pytest.raises(InvalidArgument) as refused:
        await alice.create_schedule(bad)
    fields = {v.field for v in refused.value.violations}
    assert {
        "schedule.cron",
        "schedule.time_zone",
        "schedule.catch_up_limit",
        "schedule.job.type",
        "schedule.job.idempotency_key",
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
