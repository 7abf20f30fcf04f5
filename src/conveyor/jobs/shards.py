"""Queue shards: one named queue spread over several Redis hash tags.

A queue's keys share one hash tag, so on Redis Cluster the whole queue lives in one slot on
one primary, and one primary's CPU is the most one queue can use (the README's scaling
table: one queue drains at the speed of one primary however many there are). A queue with
N shards is N physical queues under one name: shard 0 is the queue itself, under its own
tag (so an unsharded queue, and shard 0 of a sharded one, is unchanged), and shard i > 0 is
the physical queue `Q~i` (`~` is not allowed in queue names, so no user's queue can clash).
Its `placement` names a job's physical queue: every Redis call about the job uses it, and
the scripts, which see one physical queue each, are unchanged.

- **Where a job goes.** Its shard is chosen at submit, from its id (`shard_for`: CRC32,
  spread evenly), or from its concurrency key (else its rate key) when it has one, and
  kept with the job (the `jobs.shard` column and its hot state), so a queue given more
  shards later leaves its waiting jobs where they are.
- **Limits hold for the queue as a whole.** Every shard gets its share of each limit
  (`split`: floor, the remainder to the first shards), so the shares add up to the limit
  and the queue never runs more, or starts faster, than it says. The price: a shard whose
  jobs ran out leaves its share unused, so a queue near its cap may run a little fewer
  than the cap while the others still have work. A limit must be 0 (none) or at least the
  number of shards, since a share of 0 would read as "no limit". Pause applies to every
  shard. An API key's cap on running jobs (`key_cap`, carried by each job) holds per shard.
- **A per-key cap is whole in every shard.** All jobs of one concurrency key are in one
  shard (chosen by the key), so each shard holds the queue's whole `max_running_per_key`
  and the cap is exact, not shared out. One exception: while a queue's shard count is
  raised, a key's jobs submitted before and after may sit in two shards (the count the
  API knows changes), and until the older ones have started the key may run up to its
  cap in each. A per-key rate (`rate_per_key_jobs`) is whole in every shard the same way:
  a job with a rate key and no concurrency key goes to its rate key's shard; one with both
  goes to its concurrency key's, so a rate key shared by jobs of several concurrency keys
  may be split over shards and then holds per shard.
- **Order.** Priority order (and FIFO within a priority) is strict within a shard. Across
  shards a worker takes them in turn, starting each claim at the next shard, so jobs of
  one priority start in roughly submit order, and a higher-priority job on one shard may
  start after lower-priority jobs already claimed from another in the same turn.
- **Shards only grow.** Waiting jobs live in their shard, so a queue's shard count may be
  raised (new jobs spread over more shards at once) but not lowered.
"""

from __future__ import annotations

import zlib

# The most shards one queue may have: far more primaries than a cluster usually has.
MAX_SHARDS = 64
SEPARATOR = "~"


def placement(queue: str, shard: int) -> str:
    """The physical queue (its hash tag) of `queue`'s shard `shard`."""
    return queue if shard == 0 else f"{queue}{SEPARATOR}{shard}"


def placements(queue: str, shards: int) -> list[str]:
    """Every physical queue of `queue` with `shards` shards, shard 0 first."""
    return [placement(queue, shard) for shard in range(max(shards, 1))]


def shard_for(job_id: str, shards: int) -> int:
    """The shard a new job goes to: its id's CRC32 modulo the shard count."""
    if shards <= 1:
        return 0
    return zlib.crc32(job_id.encode()) % shards


def split(limit: int, shards: int) -> list[int]:
    """`limit` shared by `shards` shards: floor each, the remainder to the first ones, so
    the shares add up to `limit` (0, no limit, stays 0 in every shard)."""
    share, extra = divmod(limit, shards)
    return [share + (1 if shard < extra else 0) for shard in range(shards)]
