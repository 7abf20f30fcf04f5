"""Redis Cluster faults: a primary killed mid-drain, a queue's slot moved mid-drain, and every
primary flushed. No job is lost, and PostgreSQL says how each ended.

Each test runs its own 3-primary, 3-replica cluster (`EmbeddedRedisCluster`, failover after
1 s of silence) under a stack of its own: api, two workers of 4 slots serving one queue, and a
scheduler whose reconciler only runs on noticing a fault (its periodic pass is pushed out of
reach). Run with `-s` to see each test's counts: jobs, lost, run twice, seconds to recover.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.client import AsyncClient
from conveyor.embedded import EmbeddedRedisCluster
from conveyor.errors import ConveyorError
from conveyor.jobs.shards import placements
from conveyor.redis.keys import QueueKeys
from tests.faults.losses import LOSS_DETECTED, OWNER, LossStack, loss_stack_of, run_through_loss

# Leases the stack's workers hold at most (2 workers x 4 slots): a fault can make at most
# these jobs run again.
IN_FLIGHT = 8
FAILED_OVER = "redis restarted or failed over"


@pytest.fixture
def cluster_stack(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[LossStack]:
    server = EmbeddedRedisCluster(tmp_path / "cluster")
    with loss_stack_of(server, database_url, tmp_path, request.node.name) as env:
        yield env


def cluster_of(env: LossStack) -> EmbeddedRedisCluster:
    assert isinstance(env.server, EmbeddedRedisCluster)
    return env.server


@pytest.mark.timeout(300)
async def test_no_job_lost_when_the_queues_primary_is_killed_mid_drain(
    cluster_stack: LossStack,
) -> None:
    """Guards "kill -9 a master during a drain": its replica takes over, every job ends
    SUCCEEDED in the database (0 lost, none DEAD), at most the leases in flight run twice,
    and the reconciler notices the new primary (its run id) and repairs what asynchronous
    replication dropped. The killed node comes back as a replica."""
    env, queue = cluster_stack, "failover"
    cluster = cluster_of(env)
    took_over = 0.0

    async def kill_primary() -> None:
        nonlocal took_over
        victim = cluster.node_of(QueueKeys(queue).ready)
        start = time.monotonic()
        victim.kill()
        await asyncio.to_thread(cluster.wait_ok)  # a replica serves the slots again
        took_over = time.monotonic() - start
        victim.start()
        await asyncio.to_thread(cluster.wait_ok)

    counts = await run_through_loss(env, queue, "primary killed", kill_primary, noticed=FAILED_OVER)
    print(f"cluster failover: a replica took over {took_over:.1f} s after the kill")
    assert counts.lost == 0
    assert counts.rerun <= IN_FLIGHT, f"{counts.rerun} jobs ran twice, more than the leases held"


@pytest.mark.timeout(300)
async def test_no_job_lost_and_no_client_error_when_the_queues_slot_moves_mid_drain(
    cluster_stack: LossStack,
) -> None:
    """Guards "move a queue's slot to another master mid-drain": while the slot's keys
    migrate in small batches (clients meet ASK and TRYAGAIN, then MOVED), a client keeps
    submitting and reading jobs and sees no error; every job ends SUCCEEDED, none runs twice
    (no data was lost, so nothing is redone)."""
    env, queue = cluster_stack, "moving"
    cluster = cluster_of(env)
    errors: list[str] = []
    calls = 0

    async def keep_calling(key: str, stop: asyncio.Event) -> None:
        """Read jobs of the moving queue (their keys are in the moving slot) and submit to
        another queue, until told to stop."""
        nonlocal calls
        async with AsyncClient(env.stack.api_addr, api_key=key) as api:
            while not stop.is_set():
                try:
                    page = await api.list(queue=queue, page_size=5)
                    for job in page.items:
                        await api.get(job.id)
                    await api.submit("test.touch", {}, queue=queue + "-side")
                    calls += 2 + len(page.items)
                except ConveyorError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

    async def move_slot() -> None:
        source = cluster.node_of(QueueKeys(queue).ready)
        target = next(n for n in cluster.primaries() if n is not source)
        stop = asyncio.Event()
        caller = asyncio.create_task(keep_calling(env.stack.create_key(OWNER), stop))
        try:
            moved = await asyncio.to_thread(cluster.move_slot, QueueKeys(queue).ready, target, 5)
        finally:
            stop.set()
            await caller
        assert cluster.node_of(QueueKeys(queue).ready) is target
        print(
            f"cluster reshard: {moved} keys moved in batches of 5; {calls} client calls meanwhile"
        )

    counts = await run_through_loss(env, queue, "slot moved", move_slot, noticed=None)
    assert errors == [], f"clients saw errors while the slot moved: {errors[:5]}"
    assert counts.lost == 0
    assert counts.rerun == 0


@pytest.mark.timeout(300)
async def test_no_job_lost_after_flushall_on_every_primary(cluster_stack: LossStack) -> None:
    """Guards "FLUSHALL on every master": the reconciler notices its marker gone and
    restores every unfinished job from the database; all end SUCCEEDED."""
    env = cluster_stack
    cluster = cluster_of(env)

    async def flush_every_primary() -> None:
        for node in cluster.primaries():
            with cluster.client(node) as client:
                client.flushall()

    counts = await run_through_loss(
        env, "flushed", "flushall on every primary", flush_every_primary, noticed=LOSS_DETECTED
    )
    assert counts.lost == 0


@pytest.mark.timeout(300)
async def test_no_job_lost_in_a_sharded_queue_after_flushall_on_every_primary(
    cluster_stack: LossStack,
) -> None:
    """Guards shards through a total loss: a queue of 3 shards (on 3 primaries) loses
    everything mid-drain; the reconciler re-applies its shard count and shares, restores
    every unfinished job to its own shard, and the workers, serving every shard again, run
    them all (each job's shard is its row's, so the restore cannot misplace one)."""
    env = cluster_stack
    cluster = cluster_of(env)
    queue = "flush-shards"
    homes = {cluster.node_of(QueueKeys(p).ready).port for p in placements(queue, 3)}
    assert len(homes) == 3, "the test's queue name spreads its shards over every primary"

    async def flush_every_primary() -> None:
        for node in cluster.primaries():
            with cluster.client(node) as client:
                client.flushall()

    counts = await run_through_loss(
        env, queue, "flushall, 3 shards", flush_every_primary, noticed=LOSS_DETECTED, shards=3
    )
    assert counts.lost == 0
