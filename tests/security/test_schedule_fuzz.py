"""Hostile schedules against the live api: hypothesis builds CreateSchedule requests with
broken cron expressions, unknown and hostile time zones, intervals and times at and past
every limit, unknown enum numbers and invalid job templates. Every answer must be OK or
INVALID_ARGUMENT, the api must stay up, and exactly the schedules it accepted are stored,
each readable (its next run times computed) afterwards."""

from __future__ import annotations

from collections import Counter
from typing import TypeVar

import grpc
import psycopg
from google.protobuf import duration_pb2, timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.client import Client
from conveyor.db.bulk import psycopg_dsn
from conveyor.errors import ConveyorError, InvalidArgument
from conveyor.v1 import job_service_pb2, schedule_service_pb2
from tests.processes import Stack

T = TypeVar("T")
OWNER = "schedule-fuzzer"
EXAMPLES = 400

CRONS = st.one_of(
    st.sampled_from(
        [
            "* * * * *", "0 3 * * *", "*/15 * * * *", "0 0 29 2 *", "0 0 30 2 *", "61 * * * *",
            "* * * * * *", "* * * * * * *", "@daily", "@reboot", "R * * * *", "H * * * *",
            "0 0 * * 8", "1-100/0 * * * *", "", " ", "\x00", "* * * * *\x00", "9" * 300,
            "0 2-3 * * *", "30 2 * * 0", "L * * * *",
        ]
    ),
    st.text(max_size=40),
)  # fmt: skip
ZONES = st.one_of(
    st.sampled_from(
        ["", "UTC", "Europe/Berlin", "America/New_York", "Pacific/Apia", "Mars/Olympus",
         "../../etc/passwd", "/etc/localtime", "Europe/Berlin\x00", "utc", "Etc/GMT+14",
         "x" * 200]
    ),
    st.text(max_size=30),
)  # fmt: skip
SECONDS = st.one_of(
    st.integers(-(10**12), 10**12),
    st.sampled_from([-62_135_596_800, 253_402_300_799, 253_402_300_800, 0, 1, 86_400]),
)
NANOS = st.one_of(st.integers(0, 999_999_999), st.integers(-(2**31), 2**31 - 1))


@st.composite
def durations(draw: st.DrawFn) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=draw(SECONDS), nanos=draw(NANOS))


@st.composite
def timestamps(draw: st.DrawFn) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=draw(SECONDS), nanos=draw(NANOS))


def usually(draw: st.DrawFn, valid: st.SearchStrategy[T], hostile: st.SearchStrategy[T]) -> T:
    """A valid value four times in five, so that whole requests are often valid too."""
    return draw(valid if draw(st.integers(0, 4)) else hostile)


@st.composite
def templates(draw: st.DrawFn) -> job_service_pb2.SubmitJobRequest:
    job = job_service_pb2.SubmitJobRequest(
        type=usually(draw, st.just("noop"), st.sampled_from(["", "no such!", "x" * 200])),
        queue=usually(draw, st.just("parked"), st.sampled_from(["bad queue", "q" * 100])),
        idempotency_key=usually(draw, st.just(""), st.just("mine")),
    )
    if draw(st.booleans()):
        job.priority = usually(draw, st.integers(0, 9), st.integers(-5, 15))
    if draw(st.booleans()):
        job.payload.update({"k": draw(st.text(max_size=20)), "n": draw(st.integers(-5, 5))})
    if draw(st.integers(0, 9)) == 0:
        job.run_at.CopyFrom(draw(timestamps()))
    if draw(st.integers(0, 9)) == 0:
        job.delay.CopyFrom(draw(durations()))
    if draw(st.integers(0, 3)) == 0:
        job.timeout.CopyFrom(draw(durations()))
    return job


VALID_CRONS = st.sampled_from(["* * * * *", "0 3 * * *", "*/15 * * * *", "30 2 * * 0", "@daily"])
VALID_ZONES = st.sampled_from(["", "UTC", "Europe/Berlin", "America/New_York", "Pacific/Apia"])


@st.composite
def schedules(draw: st.DrawFn) -> schedule_service_pb2.Schedule:
    schedule = schedule_service_pb2.Schedule(
        description=usually(draw, st.text(max_size=50), st.text(min_size=257, max_size=300)),
        time_zone=usually(draw, VALID_ZONES, ZONES),
        catch_up=usually(draw, st.integers(0, 3), st.integers(-3, 10)),  # type: ignore[arg-type]
        catch_up_limit=usually(draw, st.integers(0, 1000), st.integers(-10, 5000)),
    )
    job = draw(templates())
    carrier = draw(st.sampled_from(["job_template", "job_template", "job", "both"]))
    if carrier in ("job", "both"):
        schedule.job.CopyFrom(job)
    if carrier in ("job_template", "both"):  # the same field numbers, so the same bytes
        schedule.job_template.MergeFromString(job.SerializeToString())
    timing = draw(st.sampled_from(["cron", "cron", "interval", "interval", "none"]))
    if timing == "cron":
        schedule.cron = usually(draw, VALID_CRONS, CRONS)
    elif timing == "interval":
        valid = st.builds(duration_pb2.Duration, seconds=st.integers(1, 10**6))
        schedule.interval.CopyFrom(usually(draw, valid, durations()))
    if draw(st.integers(0, 3)) == 0:
        schedule.start_time.CopyFrom(draw(timestamps()))
    if draw(st.integers(0, 3)) == 0:
        schedule.end_time.CopyFrom(draw(timestamps()))
    return schedule


def stored_ids(stack: Stack) -> set[str]:
    with psycopg.connect(psycopg_dsn(stack.env["CONVEYOR_DATABASE_URL"])) as conn:
        rows = conn.execute("SELECT id FROM schedules WHERE owner = %s", (OWNER,)).fetchall()
    return {row[0] for row in rows}


def test_hostile_schedules_are_refused_and_leave_nothing_behind(stack: Stack) -> None:
    key = stack.create_key(OWNER)
    codes: Counter[str] = Counter()
    accepted: set[str] = set()
    wrong: list[str] = []
    with Client(stack.api_addr, api_key=key) as client:

        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(schedules())
        def probe(schedule: schedule_service_pb2.Schedule) -> None:
            try:
                made = client.create_schedule(schedule)
            except InvalidArgument:
                codes["INVALID_ARGUMENT"] += 1
                return
            except ConveyorError as exc:
                codes[exc.code.name] += 1
                wrong.append(f"{exc.code.name} {exc.message!r} for {schedule}")
                return
            codes["OK"] += 1
            accepted.add(made.id)
            if len(made.next_run_times) > 5:
                wrong.append(f"{len(made.next_run_times)} next runs for {schedule}")

        probe()
        readable = 0
        for schedule_id in accepted:
            try:
                client.get_schedule(schedule_id)
                readable += 1
            except ConveyorError as exc:
                wrong.append(f"stored schedule {schedule_id} unreadable: {exc.code.name}")
    with grpc.insecure_channel(stack.api_addr) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)  # still serving
    stored = stored_ids(stack)
    print(
        f"\nschedule fuzz: {sum(codes.values())} CreateSchedule requests, codes {dict(codes)}; "
        f"{len(stored)} stored = {len(accepted)} accepted, {readable} read back; "
        f"{len(wrong)} wrong"
    )
    assert not wrong, "\n".join(wrong[:10])
    assert stored == accepted, "a refused request left a schedule, or an accepted one is gone"
    assert codes["OK"] >= 10 and codes["INVALID_ARGUMENT"] >= 100, "the draws reach both sides"
