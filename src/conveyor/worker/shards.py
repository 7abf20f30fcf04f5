"""ServedShards: the physical queues a worker claims from, its queues' shards.

A queue with N shards (see conveyor.jobs.shards) is N physical queues; a worker serving it
claims from each. The count lives in Redis with the queue's settings (shard 0's `conf`),
so a worker reads it at start and again on every heartbeat: a queue given more shards is
served in full within one heartbeat, and until then its new shards' jobs simply wait.

Each claim pass starts a sharded queue at the next shard (`claim_order`), so no shard is
always served last when the worker's slots run out before the pass ends; order within a
shard is the script's strict priority order.
"""

from __future__ import annotations

from collections.abc import Sequence

from conveyor.errors import Unavailable
from conveyor.jobs.shards import placement, split
from conveyor.redis.queue import RedisQueue


class ServedShards:
    """The shard counts of the queues one worker serves, and the order it claims them in."""

    def __init__(self, queue: RedisQueue, queues: Sequence[str], owner_default: int) -> None:
        self.queue = queue
        self.counts = dict.fromkeys(queues, 1)
        self._owner_default = owner_default
        self._turn = 0

    async def refresh(self) -> bool:
        """Read the counts again; True if one changed (the wake lists to wait on changed).
        Redis being unreachable keeps the last counts."""
        try:
            counts = await self.queue.shard_counts(self.counts)
        except Unavailable:
            return False
        changed = counts != self.counts
        self.counts = counts
        return changed

    def placements(self) -> list[str]:
        """Every physical queue served, in the queues' order, shards in turn."""
        return [placement(name, shard) for name, n in self.counts.items() for shard in range(n)]

    def claim_order(self, queue: str) -> list[tuple[str, int | None]]:
        """The physical queues of `queue` for this claim pass, starting at the shard after
        the last pass's first, each with its share of the worker's default cap per owner
        (None: an unsharded queue takes the worker's setting as it is)."""
        n = self.counts.get(queue, 1)
        if n == 1:
            return [(queue, None)]
        self._turn += 1
        # A share of 0 would read as "no cap": a default below the shard count rounds up.
        shares = [max(s, 1) if self._owner_default else 0 for s in split(self._owner_default, n)]
        return [
            (placement(queue, shard), shares[shard])
            for shard in ((self._turn + i) % n for i in range(n))
        ]
