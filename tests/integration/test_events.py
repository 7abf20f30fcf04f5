"""EventHub: one pub/sub connection fans out to many subscribers; a slow one is marked
lagged instead of buffering without bound."""

from __future__ import annotations

import asyncio
from pathlib import Path

from redis.asyncio import Redis

from conveyor.config import Settings
from conveyor.embedded import EmbeddedRedisCluster
from conveyor.redis import EventHub, connect
from conveyor.redis.events import BUFFER


async def test_many_subscribers_share_one_connection(settings: Settings) -> None:
    redis: Redis = connect(settings.redis_url)
    hub = EventHub(redis)
    subs = [await hub.subscribe(f"ch:{i % 10}") for i in range(200)]
    clients = await redis.client_list()
    await redis.publish("ch:3", "hello")
    got = await asyncio.gather(*(s.get(2) for s in subs if s.channel == "ch:3"))
    assert got == ["hello"] * 20
    assert sum(1 for c in await redis.client_list() if c.get("cmd") == "subscribe") <= 1
    assert len(await redis.client_list()) == len(clients)
    for sub in subs:
        await hub.unsubscribe(sub)
    assert hub.subscriber_count == 0
    await hub.close()
    await redis.aclose()


async def test_a_slow_subscriber_is_lagged_not_unbounded(settings: Settings) -> None:
    """Guards the bound on a subscriber's buffer: one that does not read while three
    buffers' worth arrives is marked lagged, holding at most BUFFER messages."""
    redis: Redis = connect(settings.redis_url)
    hub = EventHub(redis)
    sub = await hub.subscribe("busy")
    marker = await hub.subscribe("busy:done")
    for i in range(BUFFER * 3):
        await redis.publish("busy", str(i))
    # One connection delivers in publish order: once the marker is in, so is the flood.
    await redis.publish("busy:done", "done")
    assert await marker.get(5) == "done"
    assert sub.lagged and len(sub._buffer) <= BUFFER
    assert await sub.get(1) is None  # the caller must catch up from the event stream
    await redis.publish("busy", "next")
    assert await sub.get(2) == "next"
    await hub.close()
    await redis.aclose()


async def test_a_subscription_is_live_when_subscribe_returns(settings: Settings) -> None:
    """Guards `subscribe` returning only once Redis confirmed the subscription: SUBSCRIBE
    goes over the hub's pub/sub connection and the caller's next command over another, and
    Redis may serve the two in either order when they arrive together (a loaded machine).
    A message published then reached no one, and a watcher of a job that changed no more
    waited 15 s for its recheck (seen once in a full run under load; an idle machine
    rarely shows it, so this test passes on the old code too). Every one of 50 fresh
    channels must get the message published the moment `subscribe` returns."""
    redis = connect(settings.redis_url)
    hub = EventHub(redis)
    try:
        missed = 0
        for i in range(50):
            sub = await hub.subscribe(f"cv:test:live:{i}")
            await redis.publish(f"cv:test:live:{i}", "x")
            if await sub.get(1.0) != "x":
                missed += 1
            await hub.unsubscribe(sub)
        assert missed == 0, f"{missed} of 50 messages published right after subscribe were lost"
    finally:
        await hub.close()
        await redis.aclose()


async def test_a_hub_on_a_cluster_moves_to_another_node_when_its_node_dies(
    tmp_path: Path,
) -> None:
    """Guards pub/sub on a Redis Cluster (Redis 6 has no sharded pub/sub, so the hub listens
    on one node, which hears every PUBLISH of the cluster): when that node is killed, the
    hub tells its subscribers to catch up (`get` answers None) and listens on another
    node, where messages published anywhere reach them again."""
    with EmbeddedRedisCluster(tmp_path / "cluster") as cluster:
        redis = connect(cluster.url, cluster=True)
        hub = EventHub(redis)
        channel = "cv:{hub}:ev:1"
        sub = await hub.subscribe(channel)
        await redis.publish(channel, "before")
        assert await sub.get(5) == "before"
        listened = hub._client
        assert listened is not None and listened is not redis
        port = int(listened.connection_pool.connection_kwargs["port"])
        next(node for node in cluster.nodes if node.port == port).kill()
        await asyncio.to_thread(cluster.wait_ok)
        assert await sub.get(10) is None  # lagged: catch up from the job's log
        # The hub subscribes again on its own time: publish until a message gets through.
        async with asyncio.timeout(20):
            while await sub.get(0.2) != "after":
                await redis.publish(channel, "after")
        assert hub._client is not None
        assert hub._client.connection_pool.connection_kwargs["port"] != port
        await hub.close()
        await redis.aclose()
