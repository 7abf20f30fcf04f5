"""Scheduler replicas emitting schedules, with faults: three schedulers (clocks 2.5 s ahead,
on time and 2.5 s behind) race on one-second buckets while one of them is killed -9 and
restarted, and every bucket yields exactly one job; after downtime, each catch-up policy
emits what it says. Counted from the database."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator

import psycopg
import pytest

from conveyor.client import AsyncClient, schedule_request
from conveyor.db.bulk import psycopg_dsn
from conveyor.embedded import free_port
from tests.processes import Service, Stack


@pytest.fixture
def schedulers(stack: Stack) -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        if not service.killed:
            assert service.stop() == 0, service.tail()


def start_scheduler(
    stack: Stack,
    started: list[Service],
    *,
    offset: float = 0.0,
    misfire: float = 60.0,
    **env: str,
) -> Service:
    service = stack.start(
        "scheduler",
        env={
            "CONVEYOR_SCHEDULER_ADDR": f"127.0.0.1:{free_port()}",
            "CONVEYOR_SCHEDULER_CLOCK_OFFSET_SECONDS": str(offset),
            "CONVEYOR_SCHEDULE_MISFIRE_SECONDS": str(misfire),
            **env,
        },
    )
    started.append(service)
    return service


def emitted(stack: Stack, schedule_id: str) -> list[tuple[int, int, int]]:
    """(bucket, the job's create time, its run_at) per job of the schedule's buckets."""
    with psycopg.connect(psycopg_dsn(stack.env["CONVEYOR_DATABASE_URL"])) as conn:
        rows = conn.execute(
            "SELECT idempotency_key, create_time, run_at FROM jobs "
            "WHERE idempotency_key LIKE %s ORDER BY idempotency_key",
            (f"schedule:{schedule_id}:%",),
        ).fetchall()
    found = [(int(key.rsplit(":", 1)[1]), int(made), int(run_at)) for key, made, run_at in rows]
    return sorted(found)


@pytest.mark.timeout(120)
async def test_three_racing_schedulers_make_exactly_one_job_per_bucket(
    stack: Stack, schedulers: list[Service], alice: AsyncClient
) -> None:
    for offset in (2.5, 0.0, -2.5):
        start_scheduler(stack, schedulers, offset=offset)
    made = await alice.create_schedule(schedule_request("noop", every=1, queue="parked"))
    first = made.next_run_times[0].ToMilliseconds()
    await asyncio.sleep(3.5)  # buckets are time: let a few pass
    victim = schedulers[1]
    victim.kill()
    killed_at = time.time()
    await asyncio.sleep(3.0)
    start_scheduler(stack, schedulers, offset=0.0)
    await asyncio.sleep(3.0)
    await alice.pause_schedule(made.id)
    paused_at = int(time.time() * 1000)
    for service in schedulers:
        if not service.killed:
            assert service.stop() == 0, service.tail()
    schedulers.clear()

    jobs = emitted(stack, made.id)
    buckets = [bucket for bucket, _, _ in jobs]
    gaps = [b - a for a, b in itertools.pairwise(buckets) if b - a != 1000]
    print(
        f"\n3 schedulers (clocks +2.5 s, 0, -2.5 s), one killed -9 at +3.5 s and restarted: "
        f"{len(buckets)} buckets, {len(jobs)} jobs, {len(buckets) - len(set(buckets))} "
        f"duplicates, {len(gaps)} gaps; killed {killed_at - first / 1000:.1f}s after the "
        f"first bucket"
    )
    assert buckets[0] == first, "the first bucket is the one CreateSchedule promised"
    assert len(buckets) == len(set(buckets)), "one job per bucket"
    assert not gaps, f"every bucket has its job: gaps {gaps}"
    assert buckets[-1] >= paused_at - 4000, "buckets kept coming until the pause"
    assert len(buckets) >= 8
    early = [bucket for bucket, _, run_at in jobs if run_at < bucket]
    assert not early, "a scheduler whose clock runs ahead does not make jobs run early"


@pytest.mark.timeout(120)
async def test_catch_up_policies_after_downtime(
    stack: Stack, schedulers: list[Service], alice: AsyncClient
) -> None:
    """With no scheduler running for ~5 one-second buckets, a scheduler that then starts
    (misfire grace 0.5 s) emits none of the missed buckets for SKIP, the latest one for
    RUN_ONCE and the latest three for RUN_ALL with a limit of 3; buckets after that are
    on time. A missed bucket is one more than the grace older than the look that emitted
    it; the job's create time bounds that look from above, so a bucket within a few ms of
    the boundary is counted as either."""
    grace = 500
    policies = {"skip": 0, "once": 1, "all": 3}
    made = {
        name: await alice.create_schedule(
            schedule_request("noop", every=1, queue="parked", catch_up=name, catch_up_limit=3)
        )
        for name in policies
    }
    await asyncio.sleep(5.2)  # downtime: buckets pass with no scheduler
    start_scheduler(stack, schedulers, misfire=grace / 1000)
    await asyncio.sleep(2.0)
    for schedule in made.values():
        await alice.pause_schedule(schedule.id)
    counts = {}
    for name, schedule in made.items():
        jobs = emitted(stack, schedule.id)
        surely_missed = sum(1 for b, created, _ in jobs if b <= created - grace - 50)
        maybe_missed = sum(1 for b, created, _ in jobs if b <= created - grace)
        counts[name] = (surely_missed, maybe_missed, len(jobs))
        expected = policies[name]
        assert surely_missed <= expected <= maybe_missed, (name, counts[name])
        buckets = [b for b, _, _ in jobs]
        assert buckets == sorted(set(buckets)) and all(
            b - a == 1000 for a, b in itertools.pairwise(buckets)
        ), f"{name}: the emitted buckets run on without gaps from the first"
    print(f"\ncatch-up after 5 s down: (missed emitted, jobs) {counts}")


@pytest.mark.timeout(60)
async def test_a_bucket_that_makes_no_job_says_why_and_the_schedule_goes_on(
    stack: Stack, schedulers: list[Service], alice: AsyncClient
) -> None:
    """Guards schedules against configuration drift: a template the api accepted but the
    scheduler's checks now refuse (here its payload limit is lower) makes no job; the
    schedule says why (last_error) and moves on instead of retrying the bucket forever."""
    start_scheduler(stack, schedulers, CONVEYOR_MAX_PAYLOAD_BYTES="1024")
    made = await alice.create_schedule(
        schedule_request("noop", {"blob": "x" * 2048}, every=1, queue="parked")
    )
    await asyncio.sleep(2.5)  # buckets are time: let two pass
    seen = await alice.get_schedule(made.id)
    assert "payload" in seen.last_error and seen.last_error.startswith("bucket ")
    assert seen.next_run_times[0].ToMilliseconds() > made.next_run_times[1].ToMilliseconds()
    assert emitted(stack, made.id) == []
    await alice.pause_schedule(made.id)
