"""Connections to Redis: one server, or a Redis Cluster (CONVEYOR_REDIS_CLUSTER=true).

Every service, the CLI, the reconciler and the rate limiter get their client here, so the
two shapes differ in this module, and where a question goes to every server (`servers`,
`key_on_each_server`) or a command must keep to one slot (`slot_groups`).

On a cluster, redis-py routes each command by its keys' slot and follows MOVED and ASK
during a slot migration; it refreshes its map of the cluster after a failover (a primary's
replica took over) and retries. Conveyor's keys put all of one queue under one hash tag
(see `conveyor.redis.keys`), so every script call and every multi-key command lands on one
node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, overload
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, ClusterPipeline
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS

__all__ = [
    "POOL_SIZE",
    "POOL_WAIT_SECONDS",
    "AnyPipeline",
    "AnyRedis",
    "connect",
    "key_on_each_server",
    "pubsub_client",
    "seed_nodes",
    "servers",
    "slot_groups",
]

# A client of one Redis or of a Redis Cluster: every call Conveyor makes exists on both.
AnyRedis = Redis | RedisCluster
AnyPipeline = Pipeline | ClusterPipeline

# Connections one process opens to Redis at most (to each node of a cluster); callers
# beyond that wait for a free one (up to POOL_WAIT_SECONDS) instead of opening sockets
# without bound under a burst.
POOL_SIZE = 64
POOL_WAIT_SECONDS = 5.0
# A cluster command that meets a moving slot, a down primary or a lost connection is
# retried this many times, with backoff, while the client learns the new map: a failover
# takes about the primary's node timeout plus an election.
CLUSTER_RETRIES = 6
CLUSTER_NODE_CONNECTIONS = 1024


@overload
def connect(
    url: str, *, cluster: Literal[False] = False, blocking: bool = False, name: str | None = None
) -> Redis: ...


@overload
def connect(
    url: str, *, cluster: bool, blocking: bool = False, name: str | None = None
) -> AnyRedis: ...


def connect(
    url: str, *, cluster: bool = False, blocking: bool = False, name: str | None = None
) -> AnyRedis:
    """A client for `url` over a bounded pool. A blocking one (for BLPOP) has no socket
    read timeout, and a single connection on one Redis. `name`: each connection's CLIENT
    SETNAME. `cluster`: `url` names one or more seed nodes, comma-separated."""
    if cluster:
        return _connect_cluster(url, blocking=blocking, name=name)
    pool = BlockingConnectionPool.from_url(
        url,
        client_name=name,
        max_connections=1 if blocking else POOL_SIZE,
        timeout=POOL_WAIT_SECONDS,
        decode_responses=True,
        socket_connect_timeout=2.0,
        socket_timeout=None if blocking else 5.0,
        health_check_interval=30,
    )
    return Redis.from_pool(pool)  # the client owns the pool and closes it


def seed_nodes(url: str) -> list[tuple[str, int]]:
    """The (host, port) of each seed in a comma-separated list of Redis URLs; an item may
    omit the scheme (`host:port`) and takes the first URL's credentials."""
    seeds = []
    for item in (part.strip() for part in url.split(",")):
        if not item:
            continue
        parts = urlsplit(item if "://" in item else f"redis://{item}")
        seeds.append((parts.hostname or "127.0.0.1", parts.port or 6379))
    if not seeds:
        raise ValueError("CONVEYOR_REDIS_URL names no Redis node")
    return seeds


def _connect_cluster(url: str, *, blocking: bool, name: str | None) -> RedisCluster:
    first = urlsplit(url.split(",", 1)[0].strip())
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in seed_nodes(url)],
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else None,
        ssl=first.scheme == "rediss",
        client_name=name,
        decode_responses=True,
        # Per node, and not a wait-for-a-free-one pool as on one Redis: redis-py's cluster
        # client fails a command when a node's connections are all busy, so the bound is
        # set well above any process's concurrency (a worker's blocking waits included).
        max_connections=CLUSTER_NODE_CONNECTIONS,
        socket_connect_timeout=2.0,
        socket_timeout=None if blocking else 5.0,
        health_check_interval=30,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), CLUSTER_RETRIES),
    )


# What a client of one cluster node keeps of the cluster client's connection settings.
_NODE_SETTINGS = (
    "host", "port", "username", "password", "client_name", "decode_responses",
    "socket_connect_timeout", "socket_timeout", "health_check_interval",
)  # fmt: skip


async def pubsub_client(redis: AnyRedis, turn: int) -> Redis:
    """A client for pub/sub: `redis` itself on one Redis; on a cluster, a plain client of
    one node, the `turn`-th (mod the node count) that the cluster client knows.

    Redis 6 has no sharded pub/sub, and a cluster delivers every PUBLISH to every node
    (primaries and replicas) over its bus, so a subscriber may listen on any node; when
    that node fails, the caller takes the next turn. (Each message crosses the bus to
    every node, a cost that grows with the cluster: Redis 7's SPUBLISH would send it to
    one shard only.)"""
    if isinstance(redis, Redis):
        return redis
    await redis.initialize()
    nodes = sorted(redis.get_nodes(), key=lambda node: node.name)
    node = nodes[turn % len(nodes)]
    settings = {k: node.connection_kwargs[k] for k in _NODE_SETTINGS if k in node.connection_kwargs}
    if issubclass(node.connection_class, SSLConnection):
        settings["ssl"] = True
    return Redis(**settings)


async def servers(redis: AnyRedis) -> dict[str, dict[str, Any]]:
    """The servers to ask when a question is about all of Redis (CLIENT LIST, PING), by
    name (host:port; "" for the one Redis), each with the keyword arguments that send a
    keyless command there: every primary of a cluster as the client knows them now, or
    the one Redis."""
    if not isinstance(redis, RedisCluster):
        return {"": {}}
    await redis.initialize()
    return {node.name: {"target_nodes": node} for node in redis.get_primaries()}


async def key_on_each_server(redis: AnyRedis, key: str) -> dict[str, str]:
    """`key` made to land on each server, by name as in `servers`: `key` itself on one
    Redis; on a cluster, for each primary that serves slots now, `key` plus a hash tag in
    one of them (a write probe must meet every primary's memory and role, not one)."""
    if not isinstance(redis, RedisCluster):
        return {"": key}
    await redis.initialize()
    owners = {nodes[0].name for nodes in redis.nodes_manager.slots_cache.values() if nodes}
    found: dict[str, str] = {}
    for tag in range(REDIS_CLUSTER_HASH_SLOTS * 16):
        if len(found) == len(owners):
            break
        tagged = f"{key}:{{{tag}}}"
        node = redis.get_node_from_key(tagged)
        if node is not None and node.name not in found:
            found[node.name] = tagged
    return found


def slot_groups(
    redis: AnyRedis, names: Sequence[str], key: Callable[[str], str]
) -> list[list[str]]:
    """`names` in groups whose `key`s one multi-key command may take (a cluster refuses a
    command across slots with CROSSSLOT): all of them on one Redis, one group per hash
    slot on a cluster, in the order first seen."""
    if not isinstance(redis, RedisCluster):
        return [list(names)] if names else []
    groups: dict[int, list[str]] = {}
    for name in names:
        groups.setdefault(redis.keyslot(key(name)), []).append(name)
    return list(groups.values())
