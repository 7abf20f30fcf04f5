"""Bulk operations' pure parts: the pace a Pacer keeps (on a fake clock: no waiting) and
what a RetryJobs/CancelJobs/DeleteJobs request may say."""

from __future__ import annotations

import pytest

from conveyor.errors import InvalidArgument
from conveyor.jobs.bulk import (
    DEFAULT_PER_SECOND,
    BulkAction,
    BulkOperation,
    BulkRequest,
    BulkState,
    Pacer,
)
from conveyor.jobs.model import JobState


class FakeTime:
    """A clock that moves only when slept on (or told to), recording each sleep."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_pacer_spaces_turns_evenly_and_sleeps_between_them() -> None:
    """Guards the pace: 50 turns at 20 a second end 49/20 s after the first, with one
    sleep per turn after the first (no busy loop) and no burst ahead of the schedule."""
    time = FakeTime()
    pacer = Pacer(20, clock=time.clock, sleep=time.sleep)
    for _ in range(50):
        await pacer.turn()
    assert time.now - 100.0 == pytest.approx(49 / 20)
    assert len(time.sleeps) == 49 and all(s == pytest.approx(0.05) for s in time.sleeps)


async def test_pacer_counts_time_spent_working_and_never_catches_up_by_more_than_a_second() -> None:
    """Guards the pace under slow work: time spent between turns counts toward the next
    turn (no extra sleep), and after a long stall only a second's worth of turns comes
    without sleeping, not everything missed."""
    time = FakeTime()
    pacer = Pacer(10, clock=time.clock, sleep=time.sleep)
    await pacer.turn()
    time.now += 0.1  # the work took exactly one interval
    await pacer.turn()
    assert time.sleeps == []
    time.now += 60.0  # a stall of a minute
    free = 0
    while True:
        before = len(time.sleeps)
        await pacer.turn()
        if len(time.sleeps) > before:
            break
        free += 1
    assert free <= 11, f"{free} turns came at once after a stall"


def test_bulk_requests_are_checked_field_by_field() -> None:
    """Guards validation: an empty filter, a pace out of 0-10,000 and an attempt budget
    out of 0-100 are each a field violation; 0 per second means the default."""
    with pytest.raises(InvalidArgument) as bad:
        BulkRequest.checked(BulkAction.RETRY, " ", True, -1, 101)
    assert sorted(v.field for v in bad.value.violations) == ["filter", "max_attempts", "per_second"]
    with pytest.raises(InvalidArgument):
        BulkRequest.checked(BulkAction.CANCEL, "state = QUEUED", True, 10_001)
    ok = BulkRequest.checked(BulkAction.DELETE, "state = DEAD", False, 0)
    assert ok.per_second == DEFAULT_PER_SECOND and not ok.force
    assert BulkRequest.checked(BulkAction.RETRY, "state = DEAD", True, 10_000, 100).per_second == (
        10_000
    )


def test_each_action_takes_the_states_its_single_job_call_takes() -> None:
    """Guards the states acted on: retry DEAD and CANCELLED (as RetryJob), cancel only
    unfinished jobs (as CancelJob), delete only finished ones."""
    assert set(BulkAction.RETRY.states) == {JobState.DEAD, JobState.CANCELLED}
    assert not any(s.terminal for s in BulkAction.CANCEL.states)
    assert JobState.QUEUED in BulkAction.CANCEL.states
    assert all(s.terminal for s in BulkAction.DELETE.states)
    assert set(BulkAction.DELETE.states) == {JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED}


def test_an_operation_converts_to_its_proto() -> None:
    op = BulkOperation(
        id="0190d7a0-0000-7000-8000-000000000000", owner="alice", admin=False,
        action=BulkAction.RETRY, filter="state = DEAD", state=BulkState.SUCCEEDED,
        per_second=20, max_attempts=0, top_id="x", cursor="y", matched=5, done=4, skipped=1,
        failed=0, error="", create_time=1_000, finish_time=3_500,
    )  # fmt: skip
    answer = op.to_proto()
    assert (answer.matched, answer.done, answer.skipped) == (5, 4, 1)
    assert answer.finish_time.ToMilliseconds() - answer.create_time.ToMilliseconds() == 2_500
    assert (int(answer.state), int(answer.action)) == (BulkState.SUCCEEDED, BulkAction.RETRY)
