"""The worker registry in Redis: which workers are alive, what they serve, how busy they are,
and the release of a dead worker's jobs.

Each worker announces itself every `CONVEYOR_WORKER_ANNOUNCE_SECONDS` (1 s), apart from its
lease renewals: a JSON document under `cv:worker:<id>` that expires after three missed
announcements (plus `ANNOUNCE_SLACK_MS`), and its id in the `cv:workers` sorted set, scored
by the Redis clock at its last announcement. A worker that dies simply stops announcing and
its document expires.

Every live worker also sweeps as it announces: an id in `cv:workers` that has not announced
for a whole announcement lifetime, whose document is gone, and whose announcer's named
connection to Redis is closed (`connection_name`: a process that is alive but starved or
frozen keeps it open; a killed one's closes at once) belongs to a dead worker, so
the leases that worker holds are made due at once (`release_worker.lua`, fenced on the job's
holder) and the next claim reclaims its jobs, seconds after the death rather than a lease
later. The id leaves the set only after its leases are released, so a sweeper that dies
midway leaves the work to the next one; a short lock per dead worker keeps the other live
workers from repeating the same scan at the same moment (a repeat would change nothing).
The lease stays the backstop: a worker cut off from Redis, or frozen, or starved, is not
found dead by anyone, and its jobs come back only if it stops renewing its leases too.

A dead worker's announcement is gone, so the queues it served are kept apart, without an
expiry, in the `cv:workers:queues` hash (removed with its id): the sweep scans only those
queues' leases. A worker announced without that record (an older version) is swept in every
existing queue instead.

A worker's queues also go into the set of existing queues (`cv:queues:existing`, which
`RedisQueue.existing_queues` reads) on every announcement, so a Redis that lost its data has
them back within a second of each live worker.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import cast

from redis.exceptions import ResponseError

from conveyor.redis.connection import AnyRedis, servers
from conveyor.redis.keys import EXISTING_QUEUES_KEY, PREFIX
from conveyor.redis.queue import RedisQueue, unavailable_on_redis_errors
from conveyor.redis.scripts import Scripts
from conveyor.v1 import queue_pb2

log = logging.getLogger(__name__)

WORKERS_KEY = f"{PREFIX}:workers"
SERVED_KEY = f"{PREFIX}:workers:queues"
# Added to three announcement intervals before a silent worker counts as dead: room for an
# announcement's own round trip and a busy event loop, small next to the intervals.
ANNOUNCE_SLACK_MS = 250
# Ids looked at per sweep; more wait for the next announcement.
SWEEP_BATCH = 100
# How long one sweeper has a dead worker to itself before another may try again.
SWEEP_LOCK_MS = 10_000


def _info_key(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"


def connection_name(worker_id: str) -> str:
    """The CLIENT SETNAME of a worker's announcer connection (no spaces: AnyRedis refuses
    them in a name)."""
    return "conveyor-worker:" + "".join("_" if c.isspace() else c for c in worker_id)


def _sweep_lock(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}:sweep"


def announcement_ttl_ms(interval_seconds: float) -> int:
    """How long an announcement lives: three missed intervals and a little slack."""
    return int(3 * interval_seconds * 1000) + ANNOUNCE_SLACK_MS


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker's announcement. `control_address`: where to dial its WorkerControl
    (`conveyor.worker.announcer.control_address`); empty in the announcements of workers
    older than it, which `from_json` reads as well as newer ones with fields it does not
    know, so that a registry of mixed versions lists every worker during an upgrade."""

    worker_id: str
    host: str
    queues: list[str]
    types: list[str]
    concurrency: int
    running: int
    started: int
    last_seen: int
    control_address: str = ""

    @classmethod
    def from_json(cls, doc: str) -> WorkerInfo:
        fields = json.loads(doc)
        return cls(**{name: fields[name] for name in cls.__dataclass_fields__ if name in fields})

    def to_proto(self) -> queue_pb2.Worker:
        msg = queue_pb2.Worker(
            worker_id=self.worker_id,
            host=self.host,
            queues=self.queues,
            types=self.types,
            concurrency=self.concurrency,
            running=self.running,
            control_address=self.control_address,
        )
        msg.start_time.FromMilliseconds(self.started)
        msg.last_heartbeat.FromMilliseconds(self.last_seen)
        return msg


@dataclass(frozen=True, slots=True)
class Announced:
    """What an announcement learned. `was_alive`: the worker's previous announcement was
    still there; false for a new worker and for one that others may have taken for dead
    (frozen, cut off, or a Redis that lost time while down), whose view of the others is
    as stale as theirs of it. `stale`: workers silent for a whole announcement lifetime,
    which may be dead (`WorkerRegistry.sweep` checks)."""

    was_alive: bool
    stale: list[str]


class WorkerRegistry:
    def __init__(self, redis: AnyRedis, scripts: Scripts | None = None) -> None:
        self.redis = redis
        self.scripts = scripts or Scripts()
        self._warned_client_list = False
        self._warned_alive: set[str] = set()

    async def announce(self, info: WorkerInfo, ttl_ms: int) -> Announced:
        doc = json.dumps(asdict(info), separators=(",", ":"))
        async with unavailable_on_redis_errors(), self.scripts.batch(self.redis) as batch:
            batch.pipe.set(_info_key(info.worker_id), doc, px=ttl_ms, get=True)
            batch.call(self.scripts.announce, [WORKERS_KEY], [info.worker_id, ttl_ms, SWEEP_BATCH])
            batch.pipe.hset(SERVED_KEY, info.worker_id, json.dumps(info.queues))
            if info.queues:
                batch.pipe.sadd(EXISTING_QUEUES_KEY, *info.queues)
            replies = await batch.execute()
        previous, stale = replies[0], replies[1]
        return Announced(previous is not None, [str(i) for i in stale])

    async def forget(self, worker_id: str) -> None:
        async with unavailable_on_redis_errors(), self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(_info_key(worker_id))
            pipe.zrem(WORKERS_KEY, worker_id)
            pipe.hdel(SERVED_KEY, worker_id)
            await pipe.execute()

    async def live(self) -> list[WorkerInfo]:
        """The workers whose announcement has not expired, longest-running first. Dead ids
        stay in the set for a sweep to release their leases (see `sweep`)."""
        async with unavailable_on_redis_errors():
            ids: list[str] = await self.redis.zrange(WORKERS_KEY, 0, -1)  # type: ignore[assignment]
            if not ids:
                return []
            docs = await self._announcements(ids)
        infos = [WorkerInfo.from_json(doc) for doc in docs if doc is not None]
        return sorted(infos, key=lambda w: w.started)

    async def sweep(self, queue: RedisQueue, stale: list[str], sweeper: str) -> dict[str, int]:
        """Release the leases of the `stale` workers that are dead (their announcement is
        gone) and drop them from the registry; how many leases each one held. Safe to run
        from several workers at once."""
        released: dict[str, int] = {}
        for worker_id, queues in (await self._dead(stale)).items():
            async with unavailable_on_redis_errors():
                locked = await self.redis.set(
                    _sweep_lock(worker_id), sweeper, nx=True, px=SWEEP_LOCK_MS
                )
            if not locked:
                continue  # another worker is sweeping it now
            names = sorted(queues) if queues is not None else sorted(await queue.existing_queues())
            released[worker_id] = sum([await queue.release_worker(n, worker_id) for n in names])
            async with (
                unavailable_on_redis_errors(),
                self.redis.pipeline(transaction=False) as pipe,
            ):
                pipe.zrem(WORKERS_KEY, worker_id)
                pipe.hdel(SERVED_KEY, worker_id)
                pipe.delete(_sweep_lock(worker_id))
                await pipe.execute()
            log.info(
                "worker %s stopped announcing itself: released its %d lease(s) in %s",
                worker_id,
                released[worker_id],
                ",".join(names),
            )
        return released

    async def _dead(self, stale: list[str]) -> dict[str, list[str] | None]:
        """Which of `stale` have no announcement, with the queues each served (None: not
        on record)."""
        if not stale:
            return {}
        async with unavailable_on_redis_errors():
            docs = await self._announcements(stale)
            served: list[str | None] = await self.redis.hmget(SERVED_KEY, stale)  # type: ignore[assignment]
        silent = {
            worker_id: json.loads(queues) if queues is not None else None
            for worker_id, doc, queues in zip(stale, docs, served, strict=True)
            if doc is None
        }
        connected = await self._still_connected(list(silent))
        return {worker_id: q for worker_id, q in silent.items() if worker_id not in connected}

    async def _announcements(self, ids: list[str]) -> list[str | None]:
        """The announcement of each of `ids` (None: expired). One GET each, pipelined: the
        keys lie in as many slots as there are workers, which one MGET cannot span on a
        cluster (the pipeline goes to each node at once)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.get(_info_key(worker_id))
            return cast(list[str | None], await pipe.execute())

    async def _still_connected(self, ids: list[str]) -> set[str]:
        """Which of `ids` still hold their announcer's connection to Redis. A process that
        is alive keeps it however long it goes without announcing (starved of CPU,
        throttled by its container, frozen); a dead one's closes with it (the kernel
        closes a killed process's sockets). Those are left to their leases, which they
        either renew or lose. On a cluster the announcer is connected to whichever
        primaries hold the keys it wrote, so every primary is asked. When Redis refuses
        CLIENT LIST (an ACL without it), silence alone decides, as the registry's lifetimes
        say."""
        if not ids:
            return set()
        try:
            async with unavailable_on_redis_errors():
                clients = [
                    client
                    for target in (await servers(self.redis)).values()
                    for client in await self.redis.client_list(_type="normal", **target)
                ]
        except ResponseError as exc:
            if not self._warned_client_list:
                self._warned_client_list = True
                log.warning(
                    "redis refused CLIENT LIST (%s): a worker silent for three announcements "
                    "counts as dead even if its process is alive",
                    exc,
                )
            return set()
        names = {str(client.get("name", "")) for client in clients}
        connected = {i for i in ids if connection_name(i) in names}
        for worker_id in connected - self._warned_alive:
            log.warning(
                "worker %s has not announced itself for three intervals but is still connected "
                "to redis: its jobs stay with it until their leases lapse",
                worker_id,
            )
        self._warned_alive = connected
        return connected
