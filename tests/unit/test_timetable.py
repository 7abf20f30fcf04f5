"""Timetables: bucket times are deterministic, honour bounds and DST rules, next_after and
at_or_before agree with each other, and `due` splits on-time from missed buckets cheaply."""

from __future__ import annotations

import itertools
import random
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from conveyor.jobs.timetable import MAX_INTERVAL_MS, CatchUp, Due, Timetable, due

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR


def ms(
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    *,
    tz: str = "UTC",
    fold: int = 0,
) -> int:
    """Epoch ms of a wall-clock time in `tz` (fold=1 picks the second of a repeated time)."""
    moment = datetime(year, month, day, hour, minute, second, tzinfo=ZoneInfo(tz), fold=fold)
    return int(moment.timestamp()) * 1000


def wall(bucket: int, tz: str) -> str:
    """A bucket as local ISO time with its offset, so DST assertions read like a calendar."""
    return datetime.fromtimestamp(bucket / 1000, ZoneInfo(tz)).isoformat()


def local_day(tt: Timetable, year: int, month: int, day: int) -> list[int]:
    """Every bucket whose instant falls on the given local calendar day of tt's zone."""
    first = ms(year, month, day, tz=tt.time_zone)
    following = date(year, month, day) + timedelta(days=1)
    end = ms(following.year, following.month, following.day, tz=tt.time_zone)
    return list(itertools.takewhile(lambda b: b < end, tt.upcoming(first - 1, 200)))


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tt",
    [
        Timetable(cron="*/5 * * * *"),
        Timetable(cron="0 9 * * mon-fri", time_zone=BERLIN),
        Timetable(cron="*/10 * * * * 30"),  # croniter's 6-field form: seconds last
        Timetable(cron="@daily", time_zone=NEW_YORK),
        Timetable(interval_ms=1_000),
        Timetable(interval_ms=MAX_INTERVAL_MS, start_ms=5, end_ms=5),
    ],
)
def test_valid_timetables_have_no_problems(tt: Timetable) -> None:
    """Ordinary cron and interval timetables (including an empty-but-legal range) validate."""
    assert tt.problems() == []


def test_neither_cron_nor_interval_is_a_cron_problem() -> None:
    """A timetable must say when it fires; the complaint is filed under "cron"."""
    assert [field for field, _ in Timetable().problems()] == ["cron"]
    assert [field for field, _ in Timetable(cron="   ").problems()] == ["cron"]


def test_both_cron_and_interval_is_an_interval_problem() -> None:
    """Cron and interval are mutually exclusive; the complaint is filed under "interval"."""
    problems = Timetable(cron="* * * * *", interval_ms=60_000).problems()
    assert [field for field, _ in problems] == ["interval"]
    assert "not both" in problems[0][1]


@pytest.mark.parametrize(
    "cron",
    [
        "61 * * * *",  # out of range
        "every minute",  # not cron at all
        "* * * *",  # too few fields
        "0 0 1 1 * 30 2030",  # croniter's 7-field year form is not offered
        "R * * * *",  # croniter re-draws random fields on each parse: not deterministic
        "H * * * *",  # hashed fields need a hash id
        "0 0 30 2 *",  # syntactically fine but never fires
    ],
)
def test_invalid_cron_is_reported(cron: str) -> None:
    """Anything croniter rejects, and anything that would make buckets non-deterministic or
    empty, is a "cron" problem."""
    assert [field for field, _ in Timetable(cron=cron).problems()] == ["cron"]


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "Europe", "../etc/passwd", "/etc/UTC"])
def test_unknown_time_zone_is_reported(zone: str) -> None:
    """Only real IANA zone names are accepted, never paths or directories."""
    problems = Timetable(cron="0 * * * *", time_zone=zone).problems()
    assert [field for field, _ in problems] == ["time_zone"]


@pytest.mark.parametrize(
    ("interval_ms", "ok"),
    [
        (999, False),
        (1_000, True),
        (-60_000, False),
        (MAX_INTERVAL_MS, True),
        (MAX_INTERVAL_MS + 1, False),
    ],
)
def test_interval_must_be_between_one_second_and_366_days(interval_ms: int, ok: bool) -> None:
    """Sub-second intervals would flood the queue; more than a year belongs in a cron."""
    fields = [field for field, _ in Timetable(interval_ms=interval_ms).problems()]
    assert fields == ([] if ok else ["interval"])


def test_end_before_start_is_reported() -> None:
    """An end before the start is an "end_time" problem; equal bounds are allowed."""
    problems = Timetable(interval_ms=60_000, start_ms=10, end_ms=9).problems()
    assert [field for field, _ in problems] == ["end_time"]
    assert Timetable(interval_ms=60_000, start_ms=10, end_ms=10).problems() == []


def test_all_problems_are_reported_together() -> None:
    """Callers get every problem at once, so a user can fix a request in one go."""
    tt = Timetable(cron="nope", interval_ms=5, time_zone="Nowhere", start_ms=2, end_ms=1)
    fields = sorted(field for field, _ in tt.problems())
    assert fields == ["cron", "end_time", "interval", "interval", "time_zone"]


def test_queries_refuse_an_invalid_timetable() -> None:
    """An invalid timetable has no well-defined buckets, so asking for them is an error."""
    tt = Timetable(cron="0 * * * *", time_zone="Nowhere")
    with pytest.raises(ValueError, match="time_zone"):
        tt.next_after(0)
    with pytest.raises(ValueError):
        tt.at_or_before(0)
    with pytest.raises(ValueError):
        due(tt, 0, 1, grace_ms=0, policy=CatchUp.SKIP, limit=1)


def test_catch_up_numbers_mirror_the_proto_enum() -> None:
    """CatchUp values are stored and sent as the proto's CatchUpPolicy numbers."""
    from conveyor.v1 import schedule_service_pb2  # here, so a proto rework fails only this test

    for policy in CatchUp:
        proto_name = f"CATCH_UP_POLICY_{policy.name}"
        assert schedule_service_pb2.CatchUpPolicy.Value(proto_name) == policy.value


# -- intervals ------------------------------------------------------------------------------------


def test_interval_without_start_is_anchored_at_the_epoch() -> None:
    """Without a start, a 60 s interval falls on whole UTC minutes, whoever computes it."""
    tt = Timetable(interval_ms=MINUTE)
    t = ms(2026, 5, 17, 13, 42, 10) + 123
    assert tt.next_after(t) == ms(2026, 5, 17, 13, 43)
    assert tt.at_or_before(t) == ms(2026, 5, 17, 13, 42)
    bucket = ms(2026, 5, 17, 13, 42)
    assert tt.at_or_before(bucket) == bucket, "a bucket is at-or-before itself"
    assert tt.next_after(bucket) == bucket + MINUTE, "next_after is strictly after"
    assert tt.next_after(-1) == 0 and tt.at_or_before(-1) == -MINUTE


def test_interval_with_start_is_anchored_at_the_start() -> None:
    """With a start, the first bucket is the start itself and the rest follow in steps."""
    start = ms(2026, 1, 1, 0, 0, 7) + 321
    tt = Timetable(interval_ms=90_000, start_ms=start)
    assert tt.next_after(0) == start
    assert tt.next_after(start - 1) == start
    assert tt.at_or_before(start - 1) is None
    assert tt.upcoming(start, 3) == [start + 90_000, start + 180_000, start + 270_000]
    assert tt.at_or_before(start + 10 * 90_000 + 89_999) == start + 10 * 90_000


def test_interval_end_is_inclusive_and_final() -> None:
    """The end bound can itself be a bucket; after it the schedule is over."""
    tt = Timetable(interval_ms=MINUTE, start_ms=0, end_ms=3 * MINUTE)
    assert tt.upcoming(-1, 10) == [0, MINUTE, 2 * MINUTE, 3 * MINUTE]
    assert tt.next_after(3 * MINUTE) is None
    assert tt.at_or_before(10 * DAY) == 3 * MINUTE


def test_upcoming_returns_at_most_count_buckets() -> None:
    """upcoming is a bounded preview: no more than asked for, nothing for count <= 0."""
    tt = Timetable(interval_ms=1_000)
    assert tt.upcoming(0, 3) == [1_000, 2_000, 3_000]
    assert tt.upcoming(0, 0) == [] and tt.upcoming(0, -5) == []


# -- cron -----------------------------------------------------------------------------------------


def test_cron_in_utc() -> None:
    """A UTC cron fires on its wall-clock matches; next_after is strictly after, even for
    times between whole seconds."""
    tt = Timetable(cron="*/5 * * * *")
    t = ms(2026, 2, 3, 10, 7, 59) + 999
    assert tt.next_after(t) == ms(2026, 2, 3, 10, 10)
    assert tt.at_or_before(t) == ms(2026, 2, 3, 10, 5)
    bucket = ms(2026, 2, 3, 10, 10)
    assert tt.next_after(bucket) == ms(2026, 2, 3, 10, 15)
    assert tt.next_after(bucket - 1) == bucket
    assert tt.at_or_before(bucket) == bucket
    assert tt.at_or_before(bucket - 1) == ms(2026, 2, 3, 10, 5)


def test_six_field_cron_fires_on_the_seconds_field() -> None:
    """croniter's 6-field form puts seconds last; buckets carry those seconds."""
    tt = Timetable(cron="*/30 * * * * 15")
    assert tt.upcoming(ms(2026, 1, 1), 2) == [ms(2026, 1, 1, 0, 0, 15), ms(2026, 1, 1, 0, 30, 15)]


def test_cron_fields_are_read_in_the_time_zone() -> None:
    """09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer."""
    tt = Timetable(cron="0 9 * * *", time_zone=BERLIN)
    assert tt.next_after(ms(2026, 1, 15)) == ms(2026, 1, 15, 8)
    assert tt.next_after(ms(2026, 7, 15)) == ms(2026, 7, 15, 7)


def test_cron_start_and_end_bound_the_buckets() -> None:
    """No bucket before start or after end (inclusive), whatever the cron says."""
    start, end = ms(2026, 3, 1, 10, 0, 0) + 1, ms(2026, 3, 1, 12)
    tt = Timetable(cron="0 * * * *", start_ms=start, end_ms=end)
    assert tt.next_after(0) == ms(2026, 3, 1, 11)
    assert tt.at_or_before(ms(2026, 3, 1, 10, 30)) is None
    assert tt.upcoming(0, 10) == [ms(2026, 3, 1, 11), ms(2026, 3, 1, 12)]
    assert tt.next_after(end) is None
    assert tt.at_or_before(ms(2027, 1, 1)) == end


def test_spring_forward_daily_job_fires_once_when_the_clocks_jump() -> None:
    """Berlin skips 02:00-03:00 on 2026-03-29: "30 2 * * *" fires exactly once that day, at
    03:00 local (the instant of the jump, as croniter itself does), never zero or two times."""
    tt = Timetable(cron="30 2 * * *", time_zone=BERLIN)
    assert [wall(b, BERLIN) for b in tt.upcoming(ms(2026, 3, 28, tz=BERLIN), 3)] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
    ]
    assert tt.at_or_before(ms(2026, 3, 29, 12, tz=BERLIN)) == ms(2026, 3, 29, 1)


def test_spring_forward_collapses_missing_times_into_one_bucket() -> None:
    """Several fixed times inside the gap become the single jump bucket, not duplicates, and
    real times after the gap keep their own buckets."""
    tt = Timetable(cron="0,30 2,3 * * *", time_zone=BERLIN)
    assert [wall(b, BERLIN) for b in local_day(tt, 2026, 3, 29)] == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-29T03:30:00+02:00",
    ]
    gap_only = Timetable(cron="*/20 2 * * *", time_zone=BERLIN)
    assert [wall(b, BERLIN) for b in local_day(gap_only, 2026, 3, 29)] == [
        "2026-03-29T03:00:00+02:00"
    ]


def test_spring_forward_hourly_job_skips_the_missing_hour() -> None:
    """An every-hour expression already fires at the real hours around the gap, so the
    missing 02:xx is skipped: 23 buckets, one real hour apart."""
    for cron in ("0 * * * *", "30 * * * *"):
        buckets = local_day(Timetable(cron=cron, time_zone=BERLIN), 2026, 3, 29)
        assert len(buckets) == 23
        assert {b - a for a, b in itertools.pairwise(buckets)} == {HOUR}


def test_fall_back_daily_job_fires_once_at_the_first_occurrence() -> None:
    """Berlin repeats 02:00-03:00 on 2026-10-25: "30 2 * * *" fires once, at the first 02:30
    (CEST). croniter alone would fire twice; a daily job must not emit two jobs."""
    tt = Timetable(cron="30 2 * * *", time_zone=BERLIN)
    assert [wall(b, BERLIN) for b in tt.upcoming(ms(2026, 10, 24, tz=BERLIN), 3)] == [
        "2026-10-24T02:30:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
    ]
    inside_repeat = ms(2026, 10, 25, 2, 45, tz=BERLIN, fold=1)
    assert tt.at_or_before(inside_repeat) == ms(2026, 10, 25, 2, 30, tz=BERLIN, fold=0)
    assert tt.next_after(inside_repeat) == ms(2026, 10, 26, 2, 30, tz=BERLIN)
    within = Timetable(cron="*/20 2 * * *", time_zone=BERLIN)
    assert len(local_day(within, 2026, 10, 25)) == 3, "the repeated hour runs once"


def test_fall_back_hourly_job_fires_every_real_hour() -> None:
    """An every-hour expression fires in both passes of the repeated hour: 25 buckets that
    day, strictly increasing and exactly one real hour apart."""
    buckets = local_day(Timetable(cron="0 * * * *", time_zone=BERLIN), 2026, 10, 25)
    assert len(buckets) == 25
    assert {b - a for a, b in itertools.pairwise(buckets)} == {HOUR}
    assert wall(buckets[2], BERLIN) == "2026-10-25T02:00:00+02:00"
    assert wall(buckets[3], BERLIN) == "2026-10-25T02:00:00+01:00"


def test_every_hour_cron_matches_the_wall_clock_at_every_instant() -> None:
    """For every-hour expressions a bucket is exactly an instant whose local wall clock
    matches: checked minute by minute against zoneinfo across the fall-back day."""
    tt = Timetable(cron="*/15 * * * *", time_zone=BERLIN)
    first, last = ms(2026, 10, 24, 22), ms(2026, 10, 25, 23)
    expected = [
        t
        for t in range(first, last, MINUTE)
        if datetime.fromtimestamp(t / 1000, ZoneInfo(BERLIN)).minute % 15 == 0
    ]
    got = list(itertools.takewhile(lambda b: b < last, tt.upcoming(first - 1, 500)))
    assert got == expected
    assert {b - a for a, b in itertools.pairwise(got)} == {15 * MINUTE}


def test_new_york_transitions() -> None:
    """America/New_York: 2026-03-08 skips 02:00-03:00 and 2026-11-01 repeats 01:00-02:00. The
    same rules apply: one bucket at the jump, first occurrence only, 23 and 25 hourly buckets."""
    spring = Timetable(cron="30 2 * * *", time_zone=NEW_YORK)
    assert [wall(b, NEW_YORK) for b in local_day(spring, 2026, 3, 8)] == [
        "2026-03-08T03:00:00-04:00"
    ]
    fall = Timetable(cron="30 1 * * *", time_zone=NEW_YORK)
    assert [wall(b, NEW_YORK) for b in local_day(fall, 2026, 11, 1)] == [
        "2026-11-01T01:30:00-04:00"
    ]
    hourly = Timetable(cron="0 * * * *", time_zone=NEW_YORK)
    assert len(local_day(hourly, 2026, 3, 8)) == 23
    assert len(local_day(hourly, 2026, 11, 1)) == 25


def test_queries_from_inside_the_repeated_hour_agree_with_the_day_list() -> None:
    """Starting a query in either pass of the repeated hour finds the same buckets as walking
    the whole day: the bucket set does not depend on where one starts."""
    tt = Timetable(cron="*/20 * * * *", time_zone=BERLIN)
    day = local_day(tt, 2026, 10, 25)
    for fold in (0, 1):
        for minute in (0, 10, 20, 59):
            t = ms(2026, 10, 25, 2, minute, tz=BERLIN, fold=fold)
            following = [b for b in day if b > t][:5]
            assert tt.upcoming(t, 5) == following
            assert tt.at_or_before(t) == max(b for b in day if b <= t)


CONSISTENCY_CASES = [
    Timetable(cron="*/7 * * * *"),
    Timetable(cron="0 * * * *", time_zone=BERLIN),
    Timetable(cron="30 2 * * *", time_zone=BERLIN),
    Timetable(cron="*/20 2,3 * * *", time_zone=BERLIN),
    Timetable(cron="15 * * * * 30", time_zone=BERLIN),
    Timetable(cron="0 * * * *", time_zone=NEW_YORK),
    Timetable(cron="30 1 * * 0", time_zone=NEW_YORK),
    Timetable(interval_ms=7 * MINUTE),
    Timetable(interval_ms=3_600_123, start_ms=ms(2026, 1, 1, 5) + 17),
]


@pytest.mark.parametrize(
    "tt", CONSISTENCY_CASES, ids=lambda tt: f"{tt.cron or tt.interval_ms}@{tt.time_zone}"
)
def test_next_after_and_at_or_before_are_consistent(tt: Timetable) -> None:
    """For seeded random t around the 2026 DST transitions: at_or_before(t) <= t <
    next_after(t), no bucket lies strictly between them, each finds the other again, and the
    sequence is strictly increasing."""
    rng = random.Random(20260329)
    windows = [
        (ms(2026, 3, 7), ms(2026, 3, 9)),
        (ms(2026, 3, 28), ms(2026, 3, 30)),
        (ms(2026, 10, 24), ms(2026, 10, 26)),
        (ms(2026, 10, 31), ms(2026, 11, 2)),
    ]
    for _ in range(300):
        first, last = rng.choice(windows)
        t = rng.randrange(first, last)
        before, after = tt.at_or_before(t), tt.next_after(t)
        assert before is not None and after is not None
        assert before <= t < after
        assert tt.at_or_before(after) == after
        assert tt.at_or_before(after - 1) == before, "no bucket strictly between the two"
        assert tt.next_after(before) == after
        following = tt.next_after(after)
        assert following is not None and following > after


@pytest.mark.parametrize(
    "tt", CONSISTENCY_CASES, ids=lambda tt: f"{tt.cron or tt.interval_ms}@{tt.time_zone}"
)
def test_bucket_list_does_not_depend_on_the_starting_point(tt: Timetable) -> None:
    """Walking forwards from any point, or backwards from the end, yields the same buckets: the
    idempotency key `schedule id + bucket` is stable whoever computes it."""
    anchor = ms(2026, 10, 24, 20)
    reference = tt.upcoming(anchor, 60)
    for start in reference[::7]:
        tail = [b for b in reference if b > start]
        assert tt.upcoming(start, len(tail)) == tail
    backwards = [tt.at_or_before(reference[-1])]
    while len(backwards) < len(reference):
        previous = backwards[-1]
        assert previous is not None
        backwards.append(tt.at_or_before(previous - 1))
    assert backwards[::-1] == reference


# -- due ------------------------------------------------------------------------------------------


def test_due_emits_on_time_buckets_whatever_the_policy() -> None:
    """Buckets within the grace window are on time: a tick that runs late still emits them."""
    tt = Timetable(interval_ms=MINUTE)
    now = 100 * MINUTE + 5_000
    result = due(tt, 98 * MINUTE, now, grace_ms=3 * MINUTE, policy=CatchUp.SKIP, limit=0)
    assert result == Due(
        emit=[98 * MINUTE, 99 * MINUTE, 100 * MINUTE], next_run=101 * MINUTE, skipped=0
    )


def test_due_skip_drops_missed_buckets_and_counts_them() -> None:
    """SKIP emits only on-time buckets; older ones are reported as skipped."""
    tt = Timetable(interval_ms=MINUTE)
    now = 100 * MINUTE
    result = due(tt, 90 * MINUTE, now, grace_ms=90_000, policy=CatchUp.SKIP, limit=10)
    assert result.emit == [99 * MINUTE, 100 * MINUTE]
    assert result.skipped == 9  # 90..98
    assert result.next_run == 101 * MINUTE


def test_due_unspecified_behaves_as_skip() -> None:
    """An unset policy must not replay a backlog."""
    tt = Timetable(interval_ms=MINUTE)
    skip = due(tt, 0, 100 * MINUTE, grace_ms=MINUTE, policy=CatchUp.SKIP, limit=5)
    unspecified = due(tt, 0, 100 * MINUTE, grace_ms=MINUTE, policy=CatchUp.UNSPECIFIED, limit=5)
    assert unspecified == skip


def test_due_run_once_emits_only_the_latest_missed_bucket() -> None:
    """RUN_ONCE catches up with one job for the most recent missed bucket."""
    tt = Timetable(interval_ms=MINUTE)
    result = due(tt, 90 * MINUTE, 100 * MINUTE, grace_ms=90_000, policy=CatchUp.RUN_ONCE, limit=0)
    assert result.emit == [98 * MINUTE, 99 * MINUTE, 100 * MINUTE]
    assert result.skipped == 8


def test_due_run_all_emits_the_latest_limit_missed_buckets() -> None:
    """RUN_ALL replays the most recent `limit` missed buckets, oldest first, then on-time."""
    tt = Timetable(interval_ms=MINUTE)
    result = due(tt, 90 * MINUTE, 100 * MINUTE, grace_ms=90_000, policy=CatchUp.RUN_ALL, limit=3)
    assert result.emit == [96 * MINUTE, 97 * MINUTE, 98 * MINUTE, 99 * MINUTE, 100 * MINUTE]
    assert result.skipped == 6
    everything = due(tt, 90 * MINUTE, 100 * MINUTE, grace_ms=0, policy=CatchUp.RUN_ALL, limit=50)
    assert everything.emit == [m * MINUTE for m in range(90, 101)]
    assert everything.skipped == 0


def test_due_bucket_exactly_at_the_cutoff_is_missed() -> None:
    """The split is b > now - grace: a bucket exactly grace old counts as missed."""
    tt = Timetable(interval_ms=MINUTE)
    result = due(tt, 9 * MINUTE, 10 * MINUTE, grace_ms=MINUTE, policy=CatchUp.SKIP, limit=0)
    assert result.emit == [10 * MINUTE]
    assert result.skipped == 1


def test_due_after_a_year_down_with_a_one_second_interval_is_arithmetic() -> None:
    """A year of one-second buckets (31.5 million) is handled without stepping through them:
    the counts are exact and the call returns within the test timeout."""
    tt = Timetable(interval_ms=1_000)
    now = ms(2026, 6, 1)
    next_run = now - 365 * DAY
    result = due(tt, next_run, now, grace_ms=2_500, policy=CatchUp.RUN_ALL, limit=4)
    assert result.emit == [now - k * 1_000 for k in (6, 5, 4, 3, 2, 1, 0)]
    missed = 365 * 24 * 3600 - 2  # next_run .. now-3 s inclusive
    assert result.skipped == missed - 4
    assert result.next_run == now + 1_000
    once = due(tt, next_run, now, grace_ms=2_500, policy=CatchUp.RUN_ONCE, limit=0)
    assert once.emit == [now - 3_000, now - 2_000, now - 1_000, now]
    assert once.skipped == missed - 1


def test_due_after_a_long_outage_with_a_cron_walks_back_only_limit_steps() -> None:
    """A per-minute cron down for 30 days replays the latest `limit` misses; the skipped count
    comes from a bounded walk plus extrapolation, exact for evenly spaced buckets."""
    tt = Timetable(cron="* * * * *", time_zone=BERLIN)
    now = ms(2026, 11, 20, 12, 0, 30)
    next_run = ms(2026, 10, 21, 12)
    result = due(tt, next_run, now, grace_ms=MINUTE, policy=CatchUp.RUN_ALL, limit=3)
    last_missed = ms(2026, 11, 20, 11, 59)  # the cutoff is 11:59:30
    on_time = ms(2026, 11, 20, 12)
    assert result.emit == [last_missed - 2 * MINUTE, last_missed - MINUTE, last_missed, on_time]
    total_missed = (last_missed - next_run) // MINUTE + 1  # real minutes: 25 h on Oct 25
    assert result.skipped == total_missed - 3
    assert result.next_run == ms(2026, 11, 20, 12, 1)


def test_due_counts_missed_cron_buckets_exactly_when_few() -> None:
    """Across a fall-back day the hourly cron has 25 missed buckets, counted one by one."""
    tt = Timetable(cron="0 * * * *", time_zone=BERLIN)
    next_run = ms(2026, 10, 25, tz=BERLIN)
    now = ms(2026, 10, 26, tz=BERLIN)
    result = due(tt, next_run, now, grace_ms=30 * MINUTE, policy=CatchUp.SKIP, limit=0)
    assert result.emit == [now]
    assert result.skipped == 25


def test_due_next_run_is_none_once_the_end_has_passed() -> None:
    """After the last bucket the schedule is over: next_run None tells the caller to retire it."""
    tt = Timetable(cron="0 * * * *", end_ms=ms(2026, 1, 1, 5))
    result = due(
        tt,
        ms(2026, 1, 1, 5),
        ms(2026, 1, 1, 5, 0, 10),
        grace_ms=MINUTE,
        policy=CatchUp.SKIP,
        limit=0,
    )
    assert result == Due(emit=[ms(2026, 1, 1, 5)], next_run=None, skipped=0)


def test_due_with_next_run_in_the_future_emits_nothing() -> None:
    """Nothing is due before next_run; a premature call is harmless."""
    tt = Timetable(interval_ms=MINUTE)
    result = due(tt, 10 * MINUTE, 9 * MINUTE + 1, grace_ms=MINUTE, policy=CatchUp.RUN_ALL, limit=5)
    assert result == Due(emit=[], next_run=10 * MINUTE, skipped=0)


def test_due_clamps_negative_grace_and_limit() -> None:
    """A negative grace or limit acts as zero instead of inventing extra buckets."""
    tt = Timetable(interval_ms=MINUTE)
    result = due(tt, 0, 3 * MINUTE, grace_ms=-MINUTE, policy=CatchUp.RUN_ALL, limit=-1)
    assert result == Due(emit=[], next_run=4 * MINUTE, skipped=4)


def test_due_respects_start_and_the_stored_next_run() -> None:
    """Buckets before next_run were handled already and buckets before start never exist."""
    start = 5 * MINUTE
    tt = Timetable(interval_ms=MINUTE, start_ms=start)
    result = due(tt, 0, 8 * MINUTE, grace_ms=0, policy=CatchUp.RUN_ALL, limit=100)
    assert result.emit == [5 * MINUTE, 6 * MINUTE, 7 * MINUTE, 8 * MINUTE]
    assert result.skipped == 0
