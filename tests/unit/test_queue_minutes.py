"""A queue's recent minutes (QueueStats.recent_minutes) as the API builds them from
queue_stats.lua's answer: read in order from the script, summed minute by minute over a
sharded queue's shards even when a minute began between the shards' reads, and sent as
consecutive whole-minute timestamps."""

from __future__ import annotations

from conveyor.jobs.queues import QueueMinute, QueueStats

NOW = 28_333_334  # minutes since the epoch


def answer(first_minute: int, minutes: list[tuple[int, int, int, int]]) -> list[int]:
    """queue_stats.lua's answer for a quiet, unlimited queue with this history."""
    head = [0, 0, 0, 0, 0, 0, 0, -1, 1, 2, 3, 4, *[0] * 10, 0, 1, 0, 0, 0]
    return [*head, first_minute, *(n for counts in minutes for n in counts)]


def test_the_scripts_history_is_read_oldest_first_minute_by_minute() -> None:
    stats = QueueStats.from_script("q", answer(NOW - 2, [(1, 0, 0, 0), (0, 2, 0, 0), (5, 1, 2, 3)]))
    assert stats.recent_minutes == (
        QueueMinute(NOW - 2, 1, 0, 0, 0),
        QueueMinute(NOW - 1, 0, 2, 0, 0),
        QueueMinute(NOW, 5, 1, 2, 3),
    )
    assert (stats.succeeded, stats.retried, stats.dead, stats.cancelled) == (1, 2, 3, 4)
    sent = stats.to_proto().recent_minutes
    assert [m.start_time.seconds for m in sent] == [60 * (NOW - 2), 60 * (NOW - 1), 60 * NOW]
    assert (sent[2].succeeded, sent[2].retried, sent[2].dead, sent[2].cancelled) == (5, 1, 2, 3)


def test_shards_add_up_minute_by_minute_across_a_minute_that_began_between_reads() -> None:
    """Shard 0 is read a round trip before the others: here a new minute began in between,
    so shard 1's window is one minute later. The sum covers the newest window, as long as
    each shard's; each minute is the sum of the shards that saw it."""
    zero = QueueStats.from_script("q", answer(NOW - 2, [(1, 0, 0, 0), (2, 0, 0, 0), (3, 1, 0, 0)]))
    one = QueueStats.from_script("q", answer(NOW - 1, [(10, 0, 0, 0), (20, 0, 1, 0), (0, 0, 0, 4)]))
    merged = QueueStats.merged([zero, one])
    assert merged.recent_minutes == (
        QueueMinute(NOW - 1, 12, 0, 0, 0),
        QueueMinute(NOW, 23, 1, 1, 0),
        QueueMinute(NOW + 1, 0, 0, 0, 4),
    )
    aligned = QueueStats.merged([zero, zero, zero])
    assert [m.succeeded for m in aligned.recent_minutes] == [3, 6, 9]
