"""The worker registry in Redis: which workers are alive, what they serve, how busy they are.

Each worker announces itself on every heartbeat: a JSON document under `cv:worker:<id>` that
expires after a few missed heartbeats, and its id in the `cv:workers` sorted set. A worker
that dies simply stops announcing; its document expires and the next reader drops it from the
set, so the registry forgets dead workers without anyone having to notice the death.

A worker's queues also go into the set of existing queues (`cv:queues:existing`, which
`RedisQueue.existing_queues` reads) on every heartbeat, so a Redis that lost its data has
them back within one heartbeat of each live worker.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from redis.asyncio import Redis

from conveyor.queue.keys import EXISTING_QUEUES_KEY, PREFIX
from conveyor.queue.queue import unavailable_on_redis_errors
from conveyor.v1 import queue_pb2

WORKERS_KEY = f"{PREFIX}:workers"


def _info_key(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    worker_id: str
    host: str
    queues: list[str]
    types: list[str]
    concurrency: int
    running: int
    started: int
    last_seen: int

    def to_proto(self) -> queue_pb2.Worker:
        msg = queue_pb2.Worker(
            worker_id=self.worker_id,
            host=self.host,
            queues=self.queues,
            types=self.types,
            concurrency=self.concurrency,
            running=self.running,
        )
        msg.start_time.FromMilliseconds(self.started)
        msg.last_heartbeat.FromMilliseconds(self.last_seen)
        return msg


class WorkerRegistry:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def announce(self, info: WorkerInfo, ttl_ms: int) -> None:
        doc = json.dumps(asdict(info), separators=(",", ":"))
        async with unavailable_on_redis_errors(), self.redis.pipeline(transaction=False) as pipe:
            pipe.set(_info_key(info.worker_id), doc, px=ttl_ms)
            pipe.zadd(WORKERS_KEY, {info.worker_id: info.last_seen})
            if info.queues:
                pipe.sadd(EXISTING_QUEUES_KEY, *info.queues)
            await pipe.execute()

    async def forget(self, worker_id: str) -> None:
        async with unavailable_on_redis_errors(), self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(_info_key(worker_id))
            pipe.zrem(WORKERS_KEY, worker_id)
            await pipe.execute()

    async def live(self) -> list[WorkerInfo]:
        """The workers whose announcement has not expired, longest-running first."""
        async with unavailable_on_redis_errors():
            ids: list[str] = await self.redis.zrange(WORKERS_KEY, 0, -1)  # type: ignore[assignment]
            if not ids:
                return []
            docs: list[str | None] = await self.redis.mget([_info_key(i) for i in ids])  # type: ignore[assignment]
            dead = [i for i, doc in zip(ids, docs, strict=True) if doc is None]
            if dead:
                await self.redis.zrem(WORKERS_KEY, *dead)
        infos = [WorkerInfo(**json.loads(doc)) for doc in docs if doc is not None]
        return sorted(infos, key=lambda w: w.started)
