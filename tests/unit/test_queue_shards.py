"""Queue shards as the domain defines them (conveyor.jobs.shards): where a job goes, how a
queue's limits are shared so that they hold for the whole queue, which settings are
refused, how shards' numbers add up, and the order a worker claims shards in."""

from __future__ import annotations

from collections import Counter

import pytest

from conveyor.errors import FailedPrecondition, InvalidArgument
from conveyor.jobs.model import new_job_id
from conveyor.jobs.queues import LimitChange, QueueSettings, QueueStats
from conveyor.jobs.shards import MAX_SHARDS, placement, placements, shard_for, split
from conveyor.worker.shards import ServedShards


def test_shard_zero_is_the_queue_itself_and_the_others_cannot_clash_with_a_name() -> None:
    assert placement("reports", 0) == "reports"
    assert placements("reports", 3) == ["reports", "reports~1", "reports~2"]
    assert placements("reports", 1) == ["reports"]


def test_new_jobs_spread_evenly_over_the_shards() -> None:
    counts = Counter(shard_for(new_job_id(), 3) for _ in range(3000))
    assert set(counts) == {0, 1, 2}
    assert all(800 < n < 1200 for n in counts.values()), counts
    assert shard_for(new_job_id(), 1) == 0


@pytest.mark.parametrize(("limit", "shards"), [(0, 3), (3, 3), (5, 3), (10, 4), (7, 1)])
def test_shares_add_up_to_the_limit_and_differ_by_at_most_one(limit: int, shards: int) -> None:
    shares = split(limit, shards)
    assert len(shares) == shards and sum(shares) == limit
    assert max(shares) - min(shares) <= 1


def test_each_shard_gets_the_pause_and_a_share_of_every_limit() -> None:
    queue = QueueSettings("hot", True, 5, 7, 1000, 4, shards=3)
    shards = queue.per_shard()
    assert [s.name for s in shards] == ["hot", "hot~1", "hot~2"]
    assert all(s.paused and s.rate_interval_ms == 1000 for s in shards)
    assert [s.max_running for s in shards] == [2, 2, 1]
    assert [s.rate_jobs for s in shards] == [3, 2, 2]
    assert [s.max_running_per_owner for s in shards] == [2, 1, 1]
    assert QueueSettings("plain", max_running=3).per_shard() == [
        QueueSettings("plain", max_running=3)
    ]


def test_a_limit_below_the_shard_count_is_refused() -> None:
    """A share of 0 would read as "no limit" in that shard, so the queue would run more."""
    with pytest.raises(InvalidArgument) as refused:
        LimitChange(shards=4, max_running=2).applied_to(QueueSettings("hot"))
    [violation] = refused.value.violations
    assert (
        violation.field == "limits.max_running"
        and "at least the queue's 4" in violation.description
    )
    with pytest.raises(InvalidArgument):
        LimitChange(shards=3).applied_to(QueueSettings("hot", rate_jobs=2, rate_interval_ms=1))


def test_shards_grow_but_never_shrink_and_stay_in_range() -> None:
    grown = LimitChange(shards=4).applied_to(QueueSettings("hot", shards=2))
    assert grown.shards == 4
    with pytest.raises(FailedPrecondition, match="can be added, not removed"):
        LimitChange(shards=2).applied_to(grown)
    with pytest.raises(InvalidArgument):
        LimitChange(shards=MAX_SHARDS + 1).applied_to(grown)
    kept = LimitChange(max_running=8).applied_to(grown)
    assert kept.shards == 4, "a change that does not name shards keeps them"


def stats(queued: list[int], wait: int | None, *, paused: bool = False) -> QueueStats:
    return QueueStats(
        settings=QueueSettings("hot", paused, 2, 3, 1000, 1, shards=3),
        scheduled=1, retrying=2, running=3, queued_by_priority=tuple(queued),
        oldest_wait_ms=wait, succeeded=4, retried=5, dead=6, cancelled=7,
    )  # fmt: skip


def test_a_sharded_queues_numbers_add_up_and_its_oldest_wait_is_the_longest() -> None:
    merged = QueueStats.merged(
        [stats([1] * 10, 50), stats([2] * 10, None, paused=True), stats([0] * 10, 70)]
    )
    assert merged.queued_by_priority == (3,) * 10 and merged.queued == 30
    assert (merged.scheduled, merged.retrying, merged.running) == (3, 6, 9)
    assert (merged.succeeded, merged.retried, merged.dead, merged.cancelled) == (12, 15, 18, 21)
    assert merged.oldest_wait_ms == 70 and merged.settings.paused
    assert merged.settings.max_running == 6 and merged.settings.rate_jobs == 9
    assert merged.settings.max_running_per_owner == 3 and merged.settings.shards == 3
    assert merged.to_proto().limits.shards == 3


def test_a_worker_starts_each_claim_pass_at_the_next_shard() -> None:
    served = ServedShards(None, ["hot", "plain"], owner_default=5)  # type: ignore[arg-type]
    served.counts = {"hot": 3, "plain": 1}
    firsts = [served.claim_order("hot")[0][0] for _ in range(6)]
    assert firsts == ["hot~1", "hot~2", "hot", "hot~1", "hot~2", "hot"]
    assert sorted(served.claim_order("hot")) == [("hot", 2), ("hot~1", 2), ("hot~2", 1)]
    assert served.claim_order("plain") == [("plain", None)]
    assert served.placements() == ["hot", "hot~1", "hot~2", "plain"]
    tiny = ServedShards(None, ["hot"], owner_default=2)  # type: ignore[arg-type]
    tiny.counts = {"hot": 3}
    assert [s for _, s in tiny.claim_order("hot")] == [1, 1, 1], "never a share of 0"
