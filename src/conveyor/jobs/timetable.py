"""When schedules fire: bucket times, and what a scheduler owes after a pause.

A schedule emits one job per *bucket*. A bucket is a fire time in integer epoch milliseconds
(UTC), and the caller uses ``schedule id + bucket`` as the job's idempotency key. That only works
if bucket times are a pure function of the timetable: the same schedule must yield the same
buckets whichever process computes them, from whichever starting point, in whichever local zone.
Everything here is built so that :meth:`Timetable.next_after` and :meth:`Timetable.at_or_before`
are two views of one fixed, strictly increasing set of instants.

Interval schedules
    Bucket ``k`` is ``anchor + k * interval_ms`` with ``anchor = start_ms`` when a start is set and
    the Unix epoch otherwise. A 60 s interval without a start therefore falls on whole UTC minutes,
    and with a start the first bucket is the start itself. Buckets are computed arithmetically,
    never by stepping, so a year of one-second buckets costs nothing.

Cron schedules
    The expression is matched against the wall clock of ``time_zone``. croniter is used only as a
    calendar over naive local date-times (no zone, so no DST logic of its own); every matching wall
    time is then placed on the UTC timeline here, by these rules:

    * An ordinary wall time is its one instant.
    * Spring forward (a wall time that does not exist, e.g. 02:30 on 2026-03-29 in Europe/Berlin,
      where clocks go 02:00 -> 03:00): if the hour field covers every hour (``*``), the wall time
      is skipped, because the expression already fires at the real hours around the gap (an hourly
      job fires 23 times that day). Otherwise the expression names specific hours, it is a
      "fixed-time" job, and it fires exactly once at the instant the clocks jump (03:00 local);
      several missing wall times collapse into that single bucket. croniter 7, given aware
      datetimes, also returns 03:00 local for ``30 2 * * *``; we keep its choice.
    * Fall back (a wall time that happens twice, e.g. 02:30 on 2026-10-25 in Europe/Berlin, where
      clocks go 03:00 -> 02:00): every-hour expressions fire at both occurrences, so an hourly job
      fires 25 times that day and ``*/15 * * * *`` keeps a true 15-minute rhythm. Fixed-time
      expressions fire at the first occurrence only. This is a deliberate difference from
      croniter 7, which fires ``30 2 * * *`` twice that day and would emit two jobs for a
      schedule that promises one a day.

    Cron buckets are whole seconds. croniter's own time-zone mode is not used because its results
    depend on the instant one starts searching from; placing wall times ourselves keeps the
    bucket set fixed.

Due buckets
    :func:`due` splits the buckets a scheduler has not handled yet (``next_run <= b <= now``) into
    *on time* (``b > now - grace_ms``, always emitted) and *missed* (older than the grace window,
    i.e. the scheduler was down or paused), which the :class:`CatchUp` policy decides about.
"""

from __future__ import annotations

import enum
import functools
import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import hash_expression_re

__all__ = ["MAX_INTERVAL_MS", "MIN_INTERVAL_MS", "CatchUp", "Due", "Timetable", "due"]

MIN_INTERVAL_MS = 1_000
"""Shortest interval: sub-second schedules would flood the queue and outrun the scheduler tick."""
MAX_INTERVAL_MS = 366 * 24 * 3600 * 1000
"""Longest interval: anything rarer is better written as a cron expression."""

_EXACT_COUNT_LIMIT = 1_000
"""Missed cron buckets counted one by one before :func:`due` extrapolates the rest."""

_UTC_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
# datetime covers years 1..9999; stay a few days inside so zone offsets never overflow it.
_FIRST_S = (datetime(1, 1, 4, tzinfo=UTC) - _UTC_EPOCH) // _SECOND
_LAST_S = (datetime(9999, 12, 28, tzinfo=UTC) - _UTC_EPOCH) // _SECOND


class CatchUp(enum.IntEnum):
    """What to do with buckets missed while the scheduler was down (mirrors the proto enum)."""

    UNSPECIFIED = 0
    SKIP = 1
    """Missed buckets are skipped."""
    RUN_ONCE = 2
    """One job for the most recent missed bucket."""
    RUN_ALL = 3
    """One job per missed bucket, the most recent ``limit`` of them."""


@dataclass(frozen=True, slots=True)
class Timetable:
    """When a schedule fires.

    Exactly one of ``cron`` and ``interval_ms`` is set. ``cron`` is a standard 5-field expression
    (``"*/5 * * * *"``) or croniter's 6-field form whose 6th field is seconds; its fields are read
    on the wall clock of ``time_zone`` (an IANA name). ``interval_ms`` ignores the time zone.
    ``start_ms`` and ``end_ms`` (both inclusive) bound the buckets; see the module docstring for
    how buckets are placed. The query methods raise ``ValueError`` when :meth:`problems` is not
    empty, because an invalid timetable has no well-defined buckets.
    """

    cron: str = ""
    time_zone: str = "UTC"
    interval_ms: int = 0
    start_ms: int | None = None
    end_ms: int | None = None

    def problems(self) -> list[tuple[str, str]]:
        """Everything wrong with the timetable as ``(field, description)``; empty when valid.

        All problems are reported at once so an API can return them together. Field names are
        the API's: ``"cron"`` (also used when neither cron nor interval is set), ``"interval"``
        (also used when both are set), ``"time_zone"`` and ``"end_time"``.
        """
        found: list[tuple[str, str]] = []
        has_cron = bool(self.cron.strip())
        has_interval = self.interval_ms != 0
        if not has_cron and not has_interval:
            found.append(("cron", "set either a cron expression or an interval"))
        if has_cron and has_interval:
            found.append(("interval", "set either a cron expression or an interval, not both"))
        if has_cron:
            cron_problem = _cron_problem(self.cron.strip())
            if cron_problem:
                found.append(("cron", cron_problem))
        if has_interval and not MIN_INTERVAL_MS <= self.interval_ms <= MAX_INTERVAL_MS:
            found.append(
                (
                    "interval",
                    f"interval must be between {MIN_INTERVAL_MS} ms (1 s) and "
                    f"{MAX_INTERVAL_MS} ms (366 days), got {self.interval_ms} ms",
                )
            )
        if _zone(self.time_zone) is None:
            found.append(("time_zone", f"unknown time zone {self.time_zone!r}"))
        if self.start_ms is not None and self.end_ms is not None and self.end_ms < self.start_ms:
            found.append(("end_time", "end time is before start time"))
        return found

    def next_after(self, t_ms: int) -> int | None:
        """The first bucket strictly after ``t_ms`` within the bounds, or ``None`` if none."""
        return next(self._ascending(t_ms), None)

    def at_or_before(self, t_ms: int) -> int | None:
        """The latest bucket at or before ``t_ms`` within the bounds, or ``None``."""
        return next(self._descending(t_ms), None)

    def upcoming(self, after_ms: int, count: int) -> list[int]:
        """Up to ``count`` buckets strictly after ``after_ms``, ascending (for previews)."""
        return list(itertools.islice(self._ascending(after_ms), max(count, 0)))

    # -- internals --------------------------------------------------------------------------------

    def _check(self) -> None:
        problems = self.problems()
        if problems:
            detail = "; ".join(f"{field}: {text}" for field, text in problems)
            raise ValueError(f"invalid timetable: {detail}")

    def _ascending(self, after_ms: int) -> Iterator[int]:
        """Buckets strictly after ``after_ms`` within the bounds, ascending."""
        self._check()
        if self.start_ms is not None:
            after_ms = max(after_ms, self.start_ms - 1)
        if self.interval_ms:
            anchor, step = self.start_ms or 0, self.interval_ms
            found: Iterator[int] = itertools.count(
                anchor + ((after_ms - anchor) // step + 1) * step, step
            )
        else:
            clock = _clock(self.cron.strip(), self.time_zone)
            # Cron buckets are whole seconds: b * 1000 > t  <=>  b > t // 1000 (floor).
            found = (s * 1000 for s in clock.after(after_ms // 1000))
        for bucket in found:
            if self.end_ms is not None and bucket > self.end_ms:
                return
            yield bucket

    def _descending(self, at_ms: int) -> Iterator[int]:
        """Buckets at or before ``at_ms`` within the bounds, descending."""
        self._check()
        if self.end_ms is not None:
            at_ms = min(at_ms, self.end_ms)
        if self.interval_ms:
            anchor, step = self.start_ms or 0, self.interval_ms
            found: Iterator[int] = itertools.count(anchor + (at_ms - anchor) // step * step, -step)
        else:
            clock = _clock(self.cron.strip(), self.time_zone)
            # b * 1000 <= t  <=>  b <= t // 1000 (floor).
            found = (s * 1000 for s in clock.at_or_before(at_ms // 1000))
        for bucket in found:
            if self.start_ms is not None and bucket < self.start_ms:
                return
            yield bucket

    def _count(self, first_ms: int, last_ms: int) -> int:
        """How many buckets lie in ``[first_ms, last_ms]``.

        Exact for intervals (arithmetic). A cron schedule is counted bucket by bucket up to
        ``_EXACT_COUNT_LIMIT`` and extrapolated from the average spacing beyond that, so that a
        long outage with a per-second cron cannot stall the scheduler; the count only feeds logs.
        """
        if last_ms < first_ms:
            return 0
        if self.interval_ms:
            lo, hi = first_ms, last_ms
            if self.start_ms is not None:
                lo = max(lo, self.start_ms)
            if self.end_ms is not None:
                hi = min(hi, self.end_ms)
            anchor, step = self.start_ms or 0, self.interval_ms
            first_k = -((anchor - lo) // step)  # ceil((lo - anchor) / step)
            last_k = (hi - anchor) // step
            return max(0, last_k - first_k + 1)
        seen = 0
        first = last = 0
        for bucket in self._ascending(first_ms - 1):
            if bucket > last_ms:
                return seen
            if seen == 0:
                first = bucket
            last = bucket
            seen += 1
            if seen == _EXACT_COUNT_LIMIT:
                break
        else:
            return seen
        if last == first:
            return seen
        return seen + (last_ms - last) * (seen - 1) // (last - first)


@dataclass(frozen=True, slots=True)
class Due:
    """What a scheduler should do now for one schedule."""

    emit: list[int]
    """Buckets to emit now, ascending."""
    next_run: int | None
    """The first bucket after ``now``; ``None`` when the schedule is over."""
    skipped: int
    """Missed buckets not emitted, for logs: exact for intervals; for cron exact up to
    1000 missed buckets and extrapolated from their spacing beyond that."""


def due(
    tt: Timetable, next_run: int, now: int, *, grace_ms: int, policy: CatchUp, limit: int
) -> Due:
    """What a scheduler does with a schedule whose stored ``next_run`` is ``<= now``.

    ``next_run`` is the first bucket not yet handled, so buckets ``b`` with
    ``next_run <= b <= now`` are due. Those with ``b > now - grace_ms`` are on time and always
    emitted: a scheduler tick that runs a little late must not drop work. Those with
    ``b <= now - grace_ms`` were missed (the scheduler was down or the schedule paused) and the
    policy decides: SKIP (and UNSPECIFIED) emits none, RUN_ONCE the latest, RUN_ALL the latest
    ``limit`` (a negative grace or limit counts as 0). The result's ``next_run`` is
    ``tt.next_after(now)``, to be stored for the next tick.

    The cost does not depend on the length of an outage: missed buckets are found by walking back
    from the cutoff at most ``limit`` steps (arithmetic for intervals), and only the on-time
    buckets, at most ``grace / spacing`` of them, are walked forwards.
    """
    following = tt.next_after(now)
    if next_run > now:
        return Due(emit=[], next_run=following, skipped=0)
    cutoff = now - max(grace_ms, 0)
    on_time: list[int] = []
    for bucket in tt._ascending(max(cutoff, next_run - 1)):
        if bucket > now:
            break
        on_time.append(bucket)

    missed: list[int] = []
    if policy is CatchUp.RUN_ONCE:
        latest = tt.at_or_before(cutoff)
        if latest is not None and latest >= next_run:
            missed.append(latest)
    elif policy is CatchUp.RUN_ALL:
        for bucket in itertools.islice(tt._descending(cutoff), max(limit, 0)):
            if bucket < next_run:
                break
            missed.append(bucket)
        missed.reverse()

    if policy is CatchUp.RUN_ALL and len(missed) < max(limit, 0):
        total = len(missed)  # the walk back reached next_run: every missed bucket is emitted
    else:
        # An extrapolated cron count could undershoot what was walked; the walk is exact.
        total = max(tt._count(next_run, cutoff), len(missed))
    return Due(emit=missed + on_time, next_run=following, skipped=total - len(missed))


# -- cron placement --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo | None:
    """The zone called ``name``, or ``None`` when there is no such IANA zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: a directory such as "Europe"; ValueError: absolute or malformed keys.
        return None


@functools.lru_cache(maxsize=512)
def _cron_problem(expr: str) -> str:
    """Why ``expr`` cannot be used, or ``""``.

    Beyond croniter's syntax check this rejects the 7-field (year) form, which the API does not
    offer, and croniter's random ``R`` fields: a random minute is re-drawn every time the
    expression is parsed, which would break the promise that bucket times are deterministic.
    Hashed ``H`` fields fail the syntax check already since no hash id is given.
    """
    fields = expr.split()
    if not expr.startswith("@") and len(fields) not in (5, 6):
        return "cron expression must have 5 fields (or 6, the 6th being seconds)"
    if not croniter.is_valid(expr):
        return f"invalid cron expression {expr!r}"
    for field in fields:
        if any(hash_expression_re.match(part.lower()) for part in field.split(",")):
            return "random (R) cron fields are not allowed: bucket times must be deterministic"
    try:
        croniter(expr, datetime(2000, 1, 1)).get_next(datetime)
    except ValueError:  # CroniterBadDateError: no match within croniter's 50-year search
        return f"cron expression {expr!r} never fires"
    return ""


@functools.lru_cache(maxsize=512)
def _clock(expr: str, zone_name: str) -> _CronClock:
    zone = _zone(zone_name)
    assert zone is not None, "callers validate first"
    # croniter normalises an hour field covering all 24 hours ("*", "0-23", "*/1") to "*".
    hours = croniter.expand(expr)[0][1]
    every_hour = "*" in hours or set(range(24)) <= set(hours)
    return _CronClock(expr=expr, zone=zone, every_hour=every_hour)


@dataclass(frozen=True, slots=True)
class _Placed:
    """Where one matching wall time lands on the UTC timeline (epoch seconds)."""

    instants: tuple[int, ...]
    """Its buckets: none (a skipped gap time), one, or two (a repeated time, every-hour rule)."""
    low: int
    """Lower bound of ``instants``; never decreases as the wall time increases."""
    high: int
    """Upper bound of ``instants``; never decreases as the wall time increases."""
    gap: tuple[datetime, datetime] | None = None
    """For a wall time lost to spring forward: the gap ``[first missing, first after)``."""


@dataclass(frozen=True, slots=True)
class _CronClock:
    """A cron expression on the wall clock of one zone, iterated as UTC epoch seconds.

    croniter walks wall-clock matches in wall order. That is UTC order except around a fall-back
    under the every-hour rule, where the second occurrences of the repeated hour come after all the
    first ones. The iterators therefore hold candidates in a heap and release one only once no
    later wall time can produce an earlier instant, using the monotone ``low``/``high`` bounds of
    :class:`_Placed`. Away from transitions each wall match is released immediately.
    """

    expr: str
    zone: ZoneInfo
    every_hour: bool

    def after(self, t: int) -> Iterator[int]:
        """Buckets strictly after ``t``, ascending."""
        t = max(t, _FIRST_S)
        if t > _LAST_S:
            return
        here = datetime.fromtimestamp(t, self.zone)
        start = _naive(here)
        second_pass = False
        repeat = self._repeat_range(start)
        if repeat is not None:
            first, end = repeat
            if here.fold == 0 and self.every_hour:
                # The second occurrences of the repeated wall times already passed are ahead.
                start = first - _SECOND
            elif here.fold == 1:
                second_pass = True
                if not self.every_hour:
                    # The rest of the repeated hour only fired in the first pass, before t.
                    start = end - _SECOND
        walk = croniter(self.expr, start)
        pending: list[int] = []
        last = t
        while True:
            try:
                placed = self._place(_naive(walk.get_next(datetime)))
            except (ValueError, OverflowError):  # no further match, or the end of datetime
                break
            for instant in placed.instants:
                if instant > t:
                    heapq.heappush(pending, instant)
            release = placed.low
            if second_pass and placed.low <= t:
                # Inside the second pass of the repeated hour: first-pass copies are all before t,
                # so the later second-pass copies and the times after the hour are all >= high.
                release = placed.high
            while pending and pending[0] <= release:
                instant = heapq.heappop(pending)
                if instant > last:
                    last = instant
                    yield instant
            if placed.gap is not None:
                walk.set_current(placed.gap[1] - _SECOND)
        for instant in sorted(pending):
            if instant > last:
                last = instant
                yield instant

    def at_or_before(self, t: int) -> Iterator[int]:
        """Buckets at or before ``t``, descending."""
        t = min(t, _LAST_S)
        if t < _FIRST_S:
            return
        here = datetime.fromtimestamp(t, self.zone)
        wall = _naive(here)
        start = wall + _SECOND  # get_prev is strictly before its start
        first_pass = False
        repeat = self._repeat_range(wall)
        if repeat is not None:
            if here.fold == 1:
                # Every first-pass time of the repeated hour, even later on the wall, is before t.
                start = repeat[1]
            else:
                first_pass = True
        walk = croniter(self.expr, start)
        pending: list[int] = []  # negated: a max-heap
        last = t + 1
        while True:
            try:
                placed = self._place(_naive(walk.get_prev(datetime)))
            except (ValueError, OverflowError):
                break
            for instant in placed.instants:
                if instant <= t:
                    heapq.heappush(pending, -instant)
            release = placed.high
            if first_pass and placed.high > t:
                # In the first pass of the repeated hour: the second-pass copies are after t,
                # so everything still to come is at most low.
                release = placed.low
            while pending and -pending[0] >= release:
                instant = -heapq.heappop(pending)
                if instant < last:
                    last = instant
                    yield instant
            if placed.gap is not None:
                walk.set_current(placed.gap[0])
        for instant in sorted((-n for n in pending), reverse=True):
            if instant < last:
                last = instant
                yield instant

    def _place(self, wall: datetime) -> _Placed:
        """Where the matching wall time ``wall`` lands (rules in the module docstring).

        zoneinfo resolves a wall time with ``fold=0`` using the offset before a transition and
        with ``fold=1`` using the offset after it, so the two readings agree for ordinary times,
        ``fold=0`` is earlier for a repeated time, and ``fold=0`` is later for a missing time.
        """
        early, late = self._epoch(wall, 0), self._epoch(wall, 1)
        if early == late:
            return _Placed((early,), early, early)
        if early < late:  # repeated by a fall back
            if self.every_hour:
                return _Placed((early, late), early, late)
            return _Placed((early,), early, early)
        # Missing: the clocks jumped at some instant in (late, early].
        jump = self._transition(late, early)
        gap = (
            _naive(datetime.fromtimestamp(jump - 1, self.zone)) + _SECOND,
            _naive(datetime.fromtimestamp(jump, self.zone)),
        )
        return _Placed(() if self.every_hour else (jump,), jump, jump, gap)

    def _repeat_range(self, wall: datetime) -> tuple[datetime, datetime] | None:
        """For a wall time repeated by a fall back, the repeated wall range ``[first, end)``."""
        early, late = self._epoch(wall, 0), self._epoch(wall, 1)
        if early >= late:
            return None
        jump = self._transition(early, late)
        first = _naive(datetime.fromtimestamp(jump, self.zone))
        return first, first + timedelta(seconds=late - early)

    def _epoch(self, wall: datetime, fold: int) -> int:
        return (wall.replace(tzinfo=self.zone, fold=fold) - _UTC_EPOCH) // _SECOND

    def _offset(self, instant: int) -> timedelta | None:
        return datetime.fromtimestamp(instant, self.zone).utcoffset()

    def _transition(self, before: int, after: int) -> int:
        """The first instant in ``(before, after]`` whose UTC offset differs from ``before``'s.

        The window is at most the size of one transition (an hour or so), so a bisection over
        seconds takes about a dozen steps.
        """
        offset = self._offset(before)
        while after - before > 1:
            middle = (before + after) // 2
            if self._offset(middle) == offset:
                before = middle
            else:
                after = middle
        return after


def _naive(moment: datetime) -> datetime:
    """``moment``'s wall-clock reading as a naive datetime, whatever croniter handed back."""
    return moment.replace(tzinfo=None, fold=0)
