"""The queue's scripts on a real Redis Cluster (3 primaries, 3 replicas), for two queues
whose hash tags live on different primaries: every script runs where its KEYS send it,
batches that span both queues go to both nodes, and each queue's keys, a job's included,
stay on its own node."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest

from conveyor.config import Settings
from conveyor.embedded import EmbeddedRedisCluster
from conveyor.jobs.model import Job, JobState, now_ms
from conveyor.jobs.queues import QueueSettings
from conveyor.jobs.shards import placements, shard_for
from conveyor.redis import Cancelled, QueueKeys, RedisQueue, connect
from tests.builders import ended
from tests.integration.test_queue import new


@pytest.fixture
async def queue(redis_cluster: EmbeddedRedisCluster) -> AsyncIterator[RedisQueue]:
    client = connect(redis_cluster.url, cluster=True)
    yield RedisQueue(client, Settings(redis_url=redis_cluster.url, redis_cluster=True))
    await client.aclose()


def two_queues(redis_cluster: EmbeddedRedisCluster, stem: str) -> tuple[str, str]:
    """Two queue names whose keys are served by different primaries."""
    first = f"{stem}-0"
    home = redis_cluster.node_of(QueueKeys(first).ready).port
    for i in itertools.count(1):
        name = f"{stem}-{i}"
        if redis_cluster.node_of(QueueKeys(name).ready).port != home:
            return first, name
    raise AssertionError("unreachable")


def jobs_of(queue: str, owners: list[str]) -> list[Job]:
    return [new(queue=queue, owner=owner) for owner in owners]


async def test_a_job_goes_through_every_script_on_queues_of_two_nodes(
    queue: RedisQueue, redis_cluster: EmbeddedRedisCluster
) -> None:
    """Guards the scripts' KEYS on a cluster: configure, enqueue (one batch for both
    queues), look, waiting, claim (parking behind an owner's cap), heartbeat, progress,
    finish (one batch for both queues), cancel and queue_stats all run, each on its
    queue's node, and each job's hash lives on that node."""
    a, b = two_queues(redis_cluster, "life")
    await queue.configure(QueueSettings(a))
    await queue.configure(QueueSettings(b, max_running_per_owner=1))
    jobs = {a: jobs_of(a, ["alice", "alice", "alice", "bob"]),
            b: jobs_of(b, ["alice", "alice", "alice", "bob"])}  # fmt: skip
    await queue.enqueue([*jobs[a], *jobs[b]])
    for name, placed in jobs.items():
        node = redis_cluster.client(redis_cluster.node_of(QueueKeys(name).ready))
        with node:
            assert node.exists(*(QueueKeys(name).job(j.id) for j in placed)) == 4

    looked = await queue.look_many([(a, jobs[a][0].id), (b, jobs[b][0].id)])
    assert [hot and hot["state"] for hot, _ in looked] == [str(int(JobState.QUEUED))] * 2
    assert [waits and waits.ahead for _, waits in looked] == [0, 0]
    assert (await queue.waiting(b, jobs[b][2].id)).ahead == 2

    claimed = {}
    for name in (a, b):
        claims, _ = await queue.claim(name, 2, worker_id="w", token="t", lease_ms=10_000)
        claimed[name] = claims
    assert [c.job.id for c in claimed[a]] == [j.id for j in jobs[a][:2]]
    assert [c.job.id for c in claimed[b]] == [jobs[b][0].id, jobs[b][3].id]  # alice's parked
    parked = await queue.waiting(b, jobs[b][1].id)
    assert (parked.group, parked.group_cap, parked.group_running) == ("o:alice", 1, 1)
    stats = await queue.queue_stats(b)
    assert (stats.queued, stats.running) == (2, 2)

    for name, claims in claimed.items():
        assert await queue.heartbeat(name, {c.job.id: c.lease for c in claims}, 10_000) == []
        assert await queue.progress(claims[0].job, claims[0].lease, 50, "half")
    ends = [
        (c.job, c.lease, ended(c.job.id, JobState.SUCCEEDED))
        for claims in claimed.values()
        for c in claims
    ]
    assert await queue.finish_many(ends) == [True] * 4
    for name in (a, b):
        assert (await queue.queue_stats(name)).succeeded == 2

    assert await queue.cancel(a, jobs[a][2].id, now_ms()) == Cancelled(JobState.QUEUED)
    [running], _ = await queue.claim(b, 1, worker_id="w", token="t", lease_ms=10_000)
    cancelled = await queue.cancel(b, running.job.id, now_ms())
    assert cancelled.state is JobState.RUNNING and cancelled.stopped is not None
    for name, (succeeded, cancels) in {a: (2, 1), b: (2, 1)}.items():
        stats = await queue.queue_stats(name)
        assert (stats.succeeded, stats.cancelled) == (succeeded, cancels)


async def test_release_reclaim_and_repair_run_on_queues_of_two_nodes(
    queue: RedisQueue, redis_cluster: EmbeddedRedisCluster
) -> None:
    """Guards the other scripts on a cluster: release_worker makes a dead worker's lease
    due (its job is reclaimed as a lost attempt), release puts a job back in line,
    reconcile finds a job whose hash is gone and one missing from its set, and restore puts
    the lost one back, on each of two queues on different nodes."""
    for name in two_queues(redis_cluster, "repair"):
        first, second = jobs_of(name, ["alice", "alice"])
        await queue.enqueue([first, second])
        [dead], _ = await queue.claim(name, 1, worker_id="w-dead", token="d", lease_ms=60_000)
        assert await queue.release_worker(name, "w-dead") == 1
        claims, _ = await queue.claim(name, 2, worker_id="w", token="t", lease_ms=60_000)
        [again] = [c for c in claims if c.job.id == dead.job.id]
        assert [x.worker_id for x in again.lost] == ["w-dead"]
        assert await queue.release(name, [(c.job, c.lease) for c in claims]) == 2

        keys = QueueKeys(name)
        await queue.redis.delete(keys.job(first.id))
        await queue.redis.zrem(keys.ready, second.id)
        refs = [(first.id, 0), (second.id, 0)]
        assert await queue.reconcile(name, refs) == (1, [first.id])
        assert await queue.restore([first]) == (1, 0)
        claims, _ = await queue.claim(name, 5, worker_id="w", token="t", lease_ms=60_000)
        assert sorted(c.job.id for c in claims) == sorted([first.id, second.id])


def sharded_queue(redis_cluster: EmbeddedRedisCluster, shards: int) -> str:
    """A queue name whose `shards` shards are served by every primary."""
    for i in itertools.count():
        name = f"hot-{i}"
        homes = {redis_cluster.node_of(QueueKeys(p).ready).port for p in placements(name, shards)}
        if len(homes) == len(redis_cluster.primaries()):
            return name
    raise AssertionError("unreachable")


async def test_a_sharded_queue_spreads_over_every_primary_and_adds_up_as_one(
    queue: RedisQueue, redis_cluster: EmbeddedRedisCluster
) -> None:
    """Guards queue shards on a cluster: each shard gets its share of the limits and shard
    0 the count; jobs put in their shard live on that shard's primary; claims from every
    shard respect each share (together, the queue's cap); the queue's stats add the shards
    up; and a dead worker's leases are released in every shard of a queue named once."""
    name = sharded_queue(redis_cluster, 3)
    await queue.configure(QueueSettings(name, max_running=5, shards=3))
    assert await queue.shard_counts([name, "unsharded"]) == {name: 3, "unsharded": 1}
    jobs: list[Job] = []
    while len(jobs) < 30:  # ten in each shard
        job = new(queue=name)
        job.shard = shard_for(job.id, 3)
        if sum(j.shard == job.shard for j in jobs) < 10:
            jobs.append(job)
    await queue.enqueue(jobs)
    for job in jobs:
        node = redis_cluster.client(redis_cluster.node_of(QueueKeys(job.placement).ready))
        with node:
            assert node.exists(QueueKeys(job.placement).job(job.id)) == 1

    stats = await queue.queue_stats(name)
    assert (stats.queued, stats.settings.max_running, stats.settings.shards) == (30, 5, 3)
    claimed = []
    for shard in placements(name, 3):
        claims, _ = await queue.claim(shard, 10, worker_id="w-dead", token="d", lease_ms=60_000)
        claimed += claims
        assert all(c.job.placement == shard for c in claims)
    assert len(claimed) == 5, "the shares (2, 2, 1) add up to the queue's cap"
    assert (await queue.queue_stats(name)).running == 5
    assert await queue.release_worker(name, "w-dead") == 5
