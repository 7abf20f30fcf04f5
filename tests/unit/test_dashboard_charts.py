"""The overview's charts (conveyor.dashboard.charts): geometry that stays inside the chart
for any series (none, all quiet, one busy minute among quiet ones, every failure rate from 0
to 1), and labels that say every number drawn, as a screen reader reads the chart."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from conveyor.dashboard.charts import (
    HEIGHT,
    MIN_BAR,
    TOP,
    WIDTH,
    Chart,
    failure_chart,
    finished_chart,
)
from conveyor.v1.queue_pb2 import QueueMinute

START = 1_700_000_040  # 22:14 UTC, a whole minute


def series(*counts: tuple[int, int, int, int]) -> list[QueueMinute]:
    """Consecutive minutes from START, each (succeeded, retried, dead, cancelled)."""
    return [
        QueueMinute(start_time=Timestamp(seconds=START + 60 * i), succeeded=s, retried=r,
                    dead=d, cancelled=c)
        for i, (s, r, d, c) in enumerate(counts)
    ]  # fmt: skip


def shapes(chart: Chart) -> Iterator[tuple[float, float, float, float]]:
    """Every rectangle and dot of the chart as (x, y, width, height)."""
    for column in chart.columns:
        yield column.x, 0.0, column.width, chart.height
        for rect in column.rects:
            yield rect.x, rect.y, rect.width, rect.height
    for x, y in chart.dots:
        yield x - chart.dot_radius, y - chart.dot_radius, 2 * chart.dot_radius, 2 * chart.dot_radius


def inside(chart: Chart) -> bool:
    """Whether every shape, dots whole, lies within the chart's box."""
    return all(
        0 <= x <= x + w <= chart.width + 1e-9 and 0 <= y <= y + h <= chart.height + 1e-9
        for x, y, w, h in shapes(chart)
    )  # fmt: skip


def test_an_empty_series_draws_nothing_and_says_so() -> None:
    """An answer without history (an older API) draws an empty chart, not an error."""
    for chart in (finished_chart([]), failure_chart([])):
        assert chart.columns == () and chart.dots == () and chart.line == ""
        assert chart.label.endswith(": no history known")
    assert finished_chart([]).scale == "peak 0/min"


def test_quiet_minutes_draw_no_bars_and_no_rate() -> None:
    """All zeros: one column per minute across the whole width, no bar (a scale of 0 does
    not divide by zero), no failure point (no attempt ended: no rate), and labels that say
    each minute's 0 or "none"."""
    minutes = series(*[(0, 0, 0, 0)] * 16)
    finished, failure = finished_chart(minutes), failure_chart(minutes)
    assert [c.x for c in finished.columns] == [i * WIDTH / 16 for i in range(16)]
    assert all(c.rects == () for c in finished.columns)
    assert finished.label == (
        "Jobs finished per minute, the last 16 minutes, oldest first, the current one so far "
        "last: " + ", ".join(["0"] * 16)
    )
    assert failure.dots == () and failure.line == ""
    assert failure.label.endswith(": " + ", ".join(["none"] * 16))
    assert failure.columns[0].title == "22:14 UTC: no attempt ended"


def test_a_spike_fills_the_height_and_small_minutes_stay_visible() -> None:
    """One busy minute among quiet ones: its stacked bar (succeeded at the bottom, then
    dead, then cancelled) reaches the top of the plot exactly, a minute of 1 job still
    shows a bar MIN_BAR high, quiet minutes none, and everything stays inside the box."""
    minutes = series((0, 0, 0, 0), (1, 0, 0, 0), (900, 50, 90, 10), (0, 0, 0, 0))
    chart = finished_chart(minutes)
    assert inside(chart)
    spike = chart.columns[2].rects
    assert [r.kind for r in spike] == ["succeeded", "dead", "cancelled"]
    assert spike[0].y + spike[0].height == HEIGHT  # from the baseline up
    assert spike[1].y + spike[1].height == pytest.approx(spike[0].y)  # stacked
    assert spike[-1].y == pytest.approx(TOP)  # 1000 finished is the top of the scale
    assert sum(r.height for r in spike) == pytest.approx(HEIGHT - TOP)
    assert [r.height for r in chart.columns[1].rects] == [MIN_BAR]
    assert chart.columns[0].rects == () and chart.columns[3].rects == ()
    assert chart.scale == "peak 1000/min"
    assert chart.label.endswith("last: 0, 1, 1000, 0")
    assert chart.columns[2].title == (
        "22:16 UTC: 1000 finished (900 succeeded, 90 dead, 10 cancelled)"
    )


def test_failure_rates_from_0_to_1_span_the_height_and_break_where_none_ended() -> None:
    """A rate of 0 sits at the bottom, 1 at the top of the plot, one half between; a minute
    with only cancellations (no attempt ended) breaks the line, which starts again after
    it (a new M); retried and dead both count as failed, cancelled never does."""
    minutes = series((4, 0, 0, 0), (1, 1, 0, 0), (0, 1, 2, 0), (0, 0, 0, 3), (3, 0, 1, 5))
    chart = failure_chart(minutes)
    assert inside(chart)
    ys = [y for _, y in chart.dots]
    assert ys == [HEIGHT - TOP, HEIGHT / 2, TOP, pytest.approx(TOP + (HEIGHT - 2 * TOP) * 0.75)]
    assert chart.line.count("M") == 2 and chart.line.count("L") == 2
    assert chart.label.endswith("last: 0%, 50%, 100%, none, 25%")
    assert chart.columns[1].title == "22:15 UTC: 50% failed (1 of 2 attempts)"
    assert chart.scale == "0-100%"
