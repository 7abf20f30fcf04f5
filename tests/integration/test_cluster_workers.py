"""Workers on a real Redis Cluster (3 primaries, 3 replicas): woken on every slot their
queues sit on, with one blocking wait per slot (one in all on a single Redis), after a
failover too; and the worker registry and the health probes asking every primary."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import RedisCluster

from conveyor.config import Settings
from conveyor.db import JobStore
from conveyor.embedded import EmbeddedRedis, EmbeddedRedisCluster
from conveyor.errors import Unavailable
from conveyor.handlers import JobContext, Registry
from conveyor.jobs.model import FALLBACK_RETRY, Job, JobDefaults, JobSpec, JobState, now_ms
from conveyor.redis import QueueKeys, RedisQueue, connect
from conveyor.redis.connection import AnyRedis
from conveyor.redis.keys import WRITE_PROBE_KEY
from conveyor.redis.workers import (
    SERVED_KEY,
    WORKERS_KEY,
    WorkerInfo,
    WorkerRegistry,
    connection_name,
)
from conveyor.worker.wakes import WakeWaiter
from tests.builders import running_worker
from tests.conftest import truncate

FILLER_BYTES = 16 << 20


def flush(redis_cluster: EmbeddedRedisCluster) -> None:
    for node in redis_cluster.primaries():
        with redis_cluster.client(node) as client:
            client.flushall()


@pytest.fixture
def cluster_settings(redis_cluster: EmbeddedRedisCluster, database_url: str) -> Settings:
    """Settings on the cluster, blank, with a claim wait far longer than any test waits for
    a job: a job that starts in time was started by a wake-up, not by the wait running out."""
    flush(redis_cluster)
    truncate(database_url)
    return cluster_settings_for(redis_cluster, database_url)


def cluster_settings_for(redis_cluster: EmbeddedRedisCluster, database_url: str) -> Settings:
    return Settings(
        redis_url=redis_cluster.url,
        redis_cluster=True,
        database_url=database_url,
        lease_seconds=5.0,
        heartbeat_seconds=0.5,
        claim_wait_seconds=120.0,
    )


def queues_on_every_primary(redis_cluster: EmbeddedRedisCluster, per_primary: int) -> list[str]:
    """Queue names whose wake lists sit on each primary, `per_primary` of them on each."""
    by_port: dict[int, list[str]] = {node.port: [] for node in redis_cluster.primaries()}
    for i in range(1000):
        name = f"q{i}"
        found = by_port[redis_cluster.node_of(QueueKeys(name).wake).port]
        if len(found) < per_primary:
            found.append(name)
        if all(len(names) == per_primary for names in by_port.values()):
            return [name for names in by_port.values() for name in names]
    raise AssertionError("no queue names for every primary")


def noops() -> Registry:
    registry = Registry()

    async def noop(payload: dict[str, Any], ctx: JobContext) -> None:
        return None

    registry.register("noop", noop)
    return registry


async def submit(store: JobStore, queue: RedisQueue, name: str, *, retry: bool = False) -> Job:
    """A noop job in `name`, committed and enqueued. `retry`: enqueue again while Redis is
    unavailable (a pipelined script call meeting a failed-over primary's dead connection
    for the first time fails once, as the API's own retries would then cover)."""
    job = JobSpec(type="noop", queue=name).new_job(
        "alice", defaults=JobDefaults(3, 10_000, FALLBACK_RETRY), now=now_ms()
    )
    await store.insert([job])
    deadline = time.monotonic() + 10
    while True:
        try:
            await queue.enqueue([job])
            return job
        except Unavailable:
            if not retry or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def until(what: str, check: Any, seconds: float = 10.0) -> None:
    """Poll `check()` (sync or async) until it is true, or fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        await asyncio.sleep(0.02)


async def succeeded(queue: RedisQueue, job: Job) -> bool:
    hot = await queue.hot(job.queue, job.id)
    return hot is not None and int(hot["state"]) == JobState.SUCCEEDED


def blocked(nodes: list[EmbeddedRedis], redis_cluster: EmbeddedRedisCluster | None = None) -> int:
    """Clients blocked in a BLPOP (or another blocking command) on `nodes` now."""
    total = 0
    for node in nodes:
        client = redis_cluster.client(node) if redis_cluster else redis.Redis.from_url(node.url)
        with client:
            total += int(client.info("clients")["blocked_clients"])
    return total


# -- waking ----------------------------------------------------------------------------------
async def test_a_worker_serving_queues_on_every_primary_is_woken_by_each(
    redis_cluster: EmbeddedRedisCluster, cluster_settings: Settings
) -> None:
    """Guards claims across slots: a worker serving six queues, two on each primary, blocks
    once per slot (no CROSSSLOT BLPOP, no polling: its claim wait is 120 s), and a job put
    in any of them, one at a time, wakes it and SUCCEEDS within seconds; after every wake
    it blocks on every slot again."""
    names = queues_on_every_primary(redis_cluster, 2)
    settings = cluster_settings.model_copy(update={"worker_queues": ",".join(names)})
    primaries = redis_cluster.primaries()
    async with running_worker(settings, noops()) as (_, store, queue):
        await until("a wait per slot", lambda: blocked(primaries, redis_cluster) == len(names))
        for name in names:
            job = await submit(store, queue, name)
            await until(f"the job in {name} done", lambda job=job: succeeded(queue, job))
            await until("waiting again", lambda: blocked(primaries, redis_cluster) == len(names))


async def test_one_redis_still_waits_with_one_blpop(
    settings: Settings, redis_server: EmbeddedRedis, clean: None
) -> None:
    """Guards the single-Redis shape: a worker serving several queues blocks in exactly
    one BLPOP over all their lists, sent by its claim loop (no waiter tasks), and a job in
    the last of them still wakes it."""
    names = [f"one-{i}" for i in range(5)]
    quick = settings.model_copy(
        update={"worker_queues": ",".join(names), "claim_wait_seconds": 120}
    )
    async with running_worker(quick, noops()) as (_, store, queue):
        await until("the worker blocked", lambda: blocked([redis_server]) == 1)
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("wake-")]
        job = await submit(store, queue, names[-1])
        await until("the job done", lambda: succeeded(queue, job))
        await until("blocked again", lambda: blocked([redis_server]) == 1)


async def test_a_token_taken_while_the_worker_does_not_wait_goes_back(
    redis_cluster: EmbeddedRedisCluster, cluster_settings: Settings
) -> None:
    """Guards against waiters stealing wake-ups: the other slot's wait outlives a wake-up
    (it is not cancelled, which would drop its connection), and a token it pops after
    another slot woke the worker is pushed back on its list (for another worker, or this
    one's next wait, which takes it at once); then it stops blocking until the worker waits
    again. So no token is lost, and none is kept by a worker that is not waiting."""
    first, second = queues_on_every_primary(redis_cluster, 1)[:2]
    client = connect(redis_cluster.url, cluster=True)
    blocking = connect(redis_cluster.url, cluster=True, blocking=True)
    queue = RedisQueue(client, cluster_settings)
    wakes = WakeWaiter(queue, blocking, [first, second])
    primaries = redis_cluster.primaries()
    try:
        waiting = asyncio.create_task(wakes.wait(60))
        await until("both slots waited on", lambda: blocked(primaries, redis_cluster) == 2)
        await client.lpush(QueueKeys(first).wake, "1")
        assert await asyncio.wait_for(waiting, 10) is True
        await client.lpush(QueueKeys(second).wake, "1")
        await until("the token handed back", lambda: blocked(primaries, redis_cluster) == 0)
        assert await client.llen(QueueKeys(second).wake) == 1, "not lost, not kept"
        assert await wakes.wait(10) is True, "the next wait takes it"
        assert await client.llen(QueueKeys(second).wake) == 0
    finally:
        await wakes.close()
        await blocking.aclose()
        await client.aclose()


async def test_a_waiter_finds_its_slot_again_after_a_failover(
    database_url: str, tmp_path: Path
) -> None:
    """Guards the reconnection: the primary under one of a worker's queues is killed and
    its replica takes over; the worker's wait on that slot fails, is sent again to the new
    primary (with backoff, not a spin), and a job put there afterwards wakes the worker
    long before its 120 s claim wait."""
    truncate(database_url)
    with EmbeddedRedisCluster(tmp_path / "cluster") as cluster:
        names = queues_on_every_primary(cluster, 1)
        settings = cluster_settings_for(cluster, database_url).model_copy(
            update={"worker_queues": ",".join(names)}
        )
        async with running_worker(settings, noops()) as (_, store, queue):
            await until("a wait per slot", lambda: blocked(cluster.primaries(), cluster) == 3)
            doomed = cluster.node_of(QueueKeys(names[0]).wake)
            doomed.kill()
            await asyncio.to_thread(cluster.wait_ok)
            await until(
                "a wait per slot again",
                lambda: blocked(cluster.primaries(), cluster) == 3,
                30,
            )
            job = await submit(store, queue, names[0], retry=True)
            await until("the job done", lambda: succeeded(queue, job), 20)


# -- the registry and the probes -------------------------------------------------------------
def info(worker: str, queue: str) -> WorkerInfo:
    now = now_ms()
    return WorkerInfo(worker, "host", [queue], ["noop"], 4, 0, now, now)


def cluster_client(redis_cluster: EmbeddedRedisCluster) -> RedisCluster:
    client = connect(redis_cluster.url, cluster=True)
    assert isinstance(client, RedisCluster)
    return client


def key_on(client: RedisCluster, port: int, prefix: str) -> str:
    """`prefix` with a hash tag that puts it on the primary at `port`."""
    for tag in range(10_000):
        node = client.get_node_from_key(f"{prefix}{{{tag}}}")
        if node is not None and node.port == port:
            return f"{prefix}{{{tag}}}"
    raise AssertionError(f"no key for port {port}")


async def named_on_one_primary(
    redis_cluster: EmbeddedRedisCluster, client: RedisCluster, worker_id: str
) -> AnyRedis:
    """A client named as `worker_id`'s announcer, connected to one primary only, and not the
    one `client` asks keyless commands by default."""
    await client.initialize()
    default = client.get_default_node()
    other = next(n for n in client.get_primaries() if n.name != default.name)
    named = connect(
        f"redis://{other.host}:{other.port}", cluster=True, name=connection_name(worker_id)
    )
    await named.get(key_on(client, int(other.port), "k"))
    # Its client may have met other nodes while it learned the map: keep only `other`'s.
    for node in redis_cluster.primaries():
        if node.port == other.port:
            continue
        with redis_cluster.client(node) as plain:
            for entry in plain.client_list():
                if entry["name"] == connection_name(worker_id):
                    plain.client_kill_filter(_id=entry["id"])
    return named


async def test_live_reads_announcements_on_every_primary(
    redis_cluster: EmbeddedRedisCluster, cluster_settings: Settings
) -> None:
    """Guards ListWorkers on a cluster: the announcements of twelve workers lie on every
    primary (no MGET can span them) and `live` returns each."""
    client = connect(redis_cluster.url, cluster=True)
    registry = WorkerRegistry(client)
    ids = [f"w{i}" for i in range(12)]
    try:
        assert len({redis_cluster.node_of(f"cv:worker:{i}").port for i in ids}) == 3
        for worker_id in ids:
            await registry.announce(info(worker_id, "default"), ttl_ms=60_000)
        assert sorted(w.worker_id for w in await registry.live()) == sorted(ids)
    finally:
        await client.aclose()


async def test_a_sweep_asks_every_primary_whether_a_silent_worker_is_connected(
    redis_cluster: EmbeddedRedisCluster, cluster_settings: Settings
) -> None:
    """Guards the dead-worker sweep on a cluster: of two silent workers holding a lease
    each, the one whose announcer is still connected, to a primary other than the one the
    sweeper asks by default, is left alone, and the other's lease is released once and
    it is forgotten; once that connection closes too, the next sweep releases the second."""
    client = cluster_client(redis_cluster)
    queue = RedisQueue(client, cluster_settings)
    registry = WorkerRegistry(client, queue.scripts)
    name = queues_on_every_primary(redis_cluster, 1)[0]
    named = await named_on_one_primary(redis_cluster, client, "frozen")
    try:
        for worker_id in ("dead", "frozen"):
            await registry.announce(info(worker_id, name), ttl_ms=100)
        await queue.enqueue([JobSpec(type="noop", queue=name).new_job(
            "alice", defaults=JobDefaults(3, 1000, FALLBACK_RETRY), now=now_ms()
        ) for _ in range(2)])  # fmt: skip
        for worker_id in ("dead", "frozen"):
            claims, _ = await queue.claim(
                name, 1, worker_id=worker_id, token=worker_id, lease_ms=60_000
            )
            assert len(claims) == 1

        async def expired() -> bool:
            return await client.exists("cv:worker:dead", "cv:worker:frozen") == 0

        await until("both announcements expired", expired)
        released = await registry.sweep(queue, ["dead", "frozen"], "sweeper")
        assert released == {"dead": 1}, "frozen still holds a connection to a primary"
        assert await client.zscore(WORKERS_KEY, "dead") is None
        assert await client.hget(SERVED_KEY, "dead") is None
        assert await client.zscore(WORKERS_KEY, "frozen") is not None

        await named.aclose()
        await until("its connection closed", lambda: not connected(redis_cluster, "frozen"))
        assert await registry.sweep(queue, ["frozen"], "sweeper") == {"frozen": 1}
    finally:
        await named.aclose()
        await client.aclose()


def connected(redis_cluster: EmbeddedRedisCluster, worker_id: str) -> bool:
    """Whether any primary lists a connection named as `worker_id`'s announcer."""
    for node in redis_cluster.primaries():
        with redis_cluster.client(node) as plain:
            if any(c["name"] == connection_name(worker_id) for c in plain.client_list()):
                return True
    return False


async def test_the_write_probe_names_the_primary_that_refuses(
    redis_cluster: EmbeddedRedisCluster, cluster_settings: Settings
) -> None:
    """Guards the health probe on a cluster: with one primary out of memory (not the one
    the single probe key lands on), `refused_writes` names that primary and why, and says
    nothing once it has room again; PING asks every primary."""
    client = cluster_client(redis_cluster)
    queue = RedisQueue(client, cluster_settings)
    try:
        assert await queue.refused_writes() is None
        assert await queue.ping() is True
        spared = redis_cluster.node_of(WRITE_PROBE_KEY).port
        full = next(n for n in redis_cluster.primaries() if n.port != spared)
        await client.initialize()
        filler = key_on(client, full.port, "filler")
        await client.set(filler, b"x" * FILLER_BYTES)
        with redis_cluster.client(full) as plain:
            plain.config_set("maxmemory-policy", "noeviction")
            plain.config_set("maxmemory", FILLER_BYTES // 2)
        try:
            assert await queue.refused_writes() == f"127.0.0.1:{full.port}: out of memory"
        finally:
            await client.delete(filler)
            with redis_cluster.client(full) as plain:
                plain.config_set("maxmemory", 0)
        assert await queue.refused_writes() is None
    finally:
        await client.aclose()
