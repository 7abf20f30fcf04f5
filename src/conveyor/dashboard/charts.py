"""The overview's small charts of a queue's recent minutes (GetQueueStats' `recent_minutes`),
as SVG geometry computed here and drawn by a macro in templates/overview.html.

Drawn on the server, so the page needs no charting script and the charts are there with
JavaScript off; the CSP allows no inline style, so the template gives shapes classes
(static/dashboard.css colours them) and these numbers as attributes. Each chart has a label
that says every number it draws (the SVG's aria-label and <title>), and each minute a
<title> that a pointer over it shows.

Two charts: jobs finished per minute (succeeded, dead and cancelled stacked, on a scale
up to the busiest minute) and the failure rate per minute (retried and dead attempts over
the attempts that ended, 0-100 %; no point where no attempt ended).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC

from conveyor.v1.queue_pb2 import QueueMinute

# How often the overview page fetches itself again (static/dashboard.js), so its charts and
# numbers stay current while it is open.
OVERVIEW_REFRESH_SECONDS = 5
WIDTH = 160.0  # each minute's column is WIDTH / minutes wide
HEIGHT = 40.0
TOP = 3.0  # room above the scale's top (and below a rate of 0), so dots are not cut
PLOT = HEIGHT - TOP  # the bars' height at the top of their scale
RATE_PLOT = HEIGHT - 2 * TOP  # the failure rate's, from 0 (HEIGHT - TOP) to 1 (TOP)
BAR_SHARE = 0.75  # of a column, the bar; the rest is the gap between bars
MIN_BAR = 1.0  # a count above zero is at least this high, however busy the busiest minute
DOT_RADIUS = 2.5
STACKED = ("succeeded", "dead", "cancelled")  # a finished-jobs bar's parts, bottom up


@dataclass(frozen=True, slots=True)
class Rect:
    """A bar, or one outcome's part of a stacked bar: `kind` names its CSS class."""

    kind: str
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True, slots=True)
class Column:
    """One minute: its column's left edge and width (where a pointer shows `title`) and
    the bars drawn in it."""

    x: float
    width: float
    title: str
    rects: tuple[Rect, ...]


@dataclass(frozen=True, slots=True)
class Chart:
    """What the template draws: `label` says it all in words; `line` is an SVG path ("":
    none) through `dots`; `scale` says what the top of the chart stands for."""

    label: str
    scale: str
    columns: tuple[Column, ...]
    line: str = ""
    dots: tuple[tuple[float, float], ...] = ()
    width: float = WIDTH
    height: float = HEIGHT
    dot_radius: float = DOT_RADIUS
    top: float = TOP  # where the top of the scale is drawn


def finished_chart(minutes: Sequence[QueueMinute]) -> Chart:
    """Jobs finished per minute, stacked: succeeded at the bottom, then dead, then
    cancelled, on a scale whose top is the busiest minute."""
    totals = [m.succeeded + m.dead + m.cancelled for m in minutes]
    peak = max(totals, default=0)
    columns = []
    for i, m in enumerate(minutes):
        x, width = _column(i, len(minutes))
        rects, bottom = [], HEIGHT
        heights = _stack((m.succeeded, m.dead, m.cancelled), peak)
        for kind, height in zip(STACKED, heights, strict=True):
            if height > 0:
                bottom -= height
                rects.append(_rect(kind, x + width * (1 - BAR_SHARE) / 2, bottom,
                                   width * BAR_SHARE, height))  # fmt: skip
        title = (
            f"{_clock(m)}: {totals[i]} finished ({m.succeeded} succeeded, {m.dead} dead, "
            f"{m.cancelled} cancelled)"
        )
        columns.append(Column(_round(x), _round(width), title, tuple(rects)))
    return Chart(
        label=_label("Jobs finished per minute", [str(total) for total in totals]),
        scale=f"peak {peak}/min",
        columns=tuple(columns),
    )


def failure_chart(minutes: Sequence[QueueMinute]) -> Chart:
    """The failure rate per minute, 0 at the bottom and 100 % at the top: a line through
    the minutes in which attempts ended, broken where none did (no rate to draw)."""
    columns, dots, spoken = [], [], []
    path: list[str] = []
    joined = False  # whether the previous minute has a point the line continues from
    for i, m in enumerate(minutes):
        x, width = _column(i, len(minutes))
        rate = failure_rate(m)
        if rate is None:
            title, joined = f"{_clock(m)}: no attempt ended", False
            spoken.append("none")
        else:
            failed, ended = m.retried + m.dead, m.succeeded + m.retried + m.dead
            title = f"{_clock(m)}: {rate:.0%} failed ({failed} of {ended} attempts)"
            spoken.append(f"{rate:.0%}")
            dot = (_round(x + width / 2), _round(TOP + (1 - rate) * RATE_PLOT))
            path.append(f"{'L' if joined else 'M'}{dot[0]:g} {dot[1]:g}")
            dots.append(dot)
            joined = True
        columns.append(Column(_round(x), _round(width), title, ()))
    return Chart(
        label=_label("Failure rate per minute (none: no attempt ended)", spoken),
        scale="0-100%",
        columns=tuple(columns),
        line=" ".join(path),
        dots=tuple(dots),
    )


def failure_rate(minute: QueueMinute) -> float | None:
    """Retried and dead attempts over the attempts that ended (0-1), as QueueStats'
    `failure_rate` counts them; None when none ended (a cancelled job is no attempt's
    outcome)."""
    ended = minute.succeeded + minute.retried + minute.dead
    return (minute.retried + minute.dead) / ended if ended else None


def _stack(counts: Sequence[int], peak: int) -> list[float]:
    """The heights of one stacked bar's parts: each in proportion to the busiest minute's
    total (`peak`), but a count above 0 at least MIN_BAR high, the height that takes
    coming from the tallest part, so the bar's top stays where its total puts it (unless
    every part is that small)."""
    heights = [n / peak * PLOT if n > 0 else 0.0 for n in counts]
    raised = [max(h, MIN_BAR) if h > 0 else 0.0 for h in heights]
    tallest = max(range(len(raised)), key=raised.__getitem__, default=0)
    surplus = sum(raised) - sum(heights)
    raised[tallest] = max(raised[tallest] - surplus, MIN_BAR if raised[tallest] else 0.0)
    return raised


def _column(index: int, count: int) -> tuple[float, float]:
    width = WIDTH / count
    return index * width, width


def _rect(kind: str, x: float, y: float, width: float, height: float) -> Rect:
    return Rect(kind, _round(x), _round(y), _round(width), _round(height))


def _round(value: float) -> float:
    """Two decimals: finer than a screen shows, and the page stays short."""
    return round(value, 2)


def _clock(minute: QueueMinute) -> str:
    return minute.start_time.ToDatetime(tzinfo=UTC).strftime("%H:%M UTC")


def _label(what: str, values: Sequence[str]) -> str:
    """A chart in words: every minute's value, as a screen reader says the chart."""
    if not values:
        return f"{what}: no history known"
    return (
        f"{what}, the last {len(values)} minutes, oldest first, the current one so far "
        f"last: {', '.join(values)}"
    )
