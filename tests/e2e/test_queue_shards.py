"""A hot queue across shards, across real processes on both Redis shapes: jobs spread over
the shards (on a cluster, over several primaries), every job runs, and the queue's pause,
concurrency cap, rate limit and per-owner cap hold for the queue as a whole, measured from
the database's start and finish times (see conveyor.jobs.shards)."""

from __future__ import annotations

import asyncio
from collections import Counter

import psycopg
import pytest
from redis.cluster import RedisCluster

from conveyor.client import AsyncClient, JobState, submit_request
from conveyor.db.bulk import psycopg_dsn
from conveyor.errors import FailedPrecondition, InvalidArgument
from conveyor.jobs.shards import placement
from conveyor.redis.keys import QueueKeys
from tests.e2e.test_queues import (
    most_at_once,
    most_in_window,
    spans,
    start_worker,
    until_done,
    until_running,
)
from tests.processes import Service, Stack

S = JobState


def shards_of(stack: Stack, job_ids: list[str]) -> Counter[int]:
    """How many of the jobs each shard holds, from the database."""
    with psycopg.connect(psycopg_dsn(stack.env["CONVEYOR_DATABASE_URL"])) as conn:
        rows = conn.execute("SELECT shard FROM jobs WHERE id = ANY(%s)", (job_ids,)).fetchall()
    return Counter(shard for (shard,) in rows)


def primaries_of(stack: Stack, queue: str, shards: int) -> set[str]:
    """The primaries that serve the queue's shards (one Redis: just that one)."""
    if stack.env["CONVEYOR_REDIS_CLUSTER"] != "true":
        return {"single"}
    seed = stack.env["CONVEYOR_REDIS_URL"].split(",")[0]
    with RedisCluster.from_url(seed) as cluster:
        return {
            cluster.get_node_from_key(QueueKeys(placement(queue, shard)).ready).name
            for shard in range(shards)
        }


async def test_a_paused_capped_sharded_queue_spreads_its_jobs_and_holds_as_one(
    stack: Stack,
    workers: list[Service],
    alice: AsyncClient,
    admin: AsyncClient,
) -> None:
    """Guards shards end to end: a queue created with 3 shards, paused and capped at 3
    running, spreads 30 jobs over all 3 shards (on the cluster, over several primaries);
    none starts while it is paused, whatever its shard, and the stats add the shards up;
    after the resume, two workers with 4 slots each never run a 4th job at once and every
    job succeeds. Shards only grow, and a cap below the shard count is refused."""
    await admin.update_queue_limits("spread", shards=3, max_running=3)
    await admin.pause_queue("spread")
    start_worker(stack, workers, "spread", 4)
    start_worker(stack, workers, "spread", 4)
    jobs = await alice.submit_many(
        [submit_request("sleep", {"seconds": 0.15, "steps": 1}, queue="spread")
         for _ in range(30)]
    )  # fmt: skip
    ids = [j.id for j in jobs]
    spread = shards_of(stack, ids)
    homes = primaries_of(stack, "spread", 3)
    print(
        f"\nshards: 30 jobs over shards {dict(sorted(spread.items()))}, on {len(homes)} server(s)"
    )
    assert set(spread) == {0, 1, 2}
    assert len(homes) >= 2 or homes == {"single"}
    await asyncio.sleep(1.0)  # what is asserted is that nothing starts for a while
    for job_id in ids:
        held = await alice.get(job_id)
        assert held.state == S.QUEUED and held.blocked_reason == "queue 'spread' is paused"
    [stats] = await admin.queue_stats("spread")
    assert (stats.paused, stats.queued, stats.running) == (True, 30, 0)
    assert (stats.limits.shards, stats.limits.max_running) == (3, 3)

    await admin.resume_queue("spread")
    await until_running(admin, "spread", 3)
    await until_done(alice, ids, within=60)
    peak = most_at_once(spans(stack, ids))
    print(f"shards: cap 3 over 3 shards and 2 workers x 4 slots: at most {peak} at once")
    assert peak == 3

    with pytest.raises(FailedPrecondition):
        await admin.update_queue_limits("spread", shards=2)
    with pytest.raises(InvalidArgument) as refused:
        await admin.update_queue_limits("spread", shards=4, max_running=2)
    assert [v.field for v in refused.value.violations] == ["limits.max_running"]


async def test_rate_and_owner_caps_hold_across_shards(
    stack: Stack,
    workers: list[Service],
    alice: AsyncClient,
    admin: AsyncClient,
) -> None:
    """Guards the rate limit and the per-owner cap of a sharded queue: 6 starts per second
    over 3 shards never has a 7th start in any second, and alice, capped at 3 running in a
    3-shard queue, never has a 4th running, with 8 free slots."""
    await admin.update_queue_limits("spread-rated", shards=3, rate_jobs=6, rate_interval=1.0)
    await admin.update_queue_limits("spread-fair", shards=3, max_running_per_owner=3)
    start_worker(stack, workers, "spread-rated,spread-fair", 8)
    rated = await alice.submit_many(
        [submit_request("noop", queue="spread-rated") for _ in range(30)]
    )
    fair = await alice.submit_many(
        [submit_request("sleep", {"seconds": 0.2, "steps": 1}, queue="spread-fair")
         for _ in range(24)]
    )  # fmt: skip
    await until_done(alice, [j.id for j in [*rated, *fair]], within=60)
    starts = [start for start, _ in spans(stack, [j.id for j in rated])]
    busiest = most_in_window(starts, 1000)
    seconds = (max(starts) - min(starts)) / 1000
    peak = most_at_once(spans(stack, [j.id for j in fair]))
    print(
        f"\nshards: rate 6/s over 3 shards: 30 jobs over {seconds:.1f}s, at most {busiest} "
        f"in any 1 s window; owner cap 3 over 3 shards: at most {peak} of alice's at once"
    )
    assert busiest <= 6 and seconds >= 4.0
    assert 2 <= peak <= 3
