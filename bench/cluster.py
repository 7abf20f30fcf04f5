"""Drains on a real Redis Cluster (issue 22): how Redis's work spreads over the primaries.

`ClusterStack` starts an `EmbeddedRedisCluster` (3 primaries, 3 replicas) and a `conveyor api`
of its own on it, beside the bench's single-Redis stack and sharing its PostgreSQL (and so its
API keys). `ClusterStack.drain` fills queues while their workers (one per queue) are paused,
resumes them all at once and times the drain, metering the CPU of the api, each worker,
PostgreSQL and every Redis node.

Every key of a queue carries the queue's hash tag (`cv:{Q}:…`), so a queue lives in one slot,
on one primary. `queues_apart` picks queue names whose slots fall on different primaries.
Nodes are named by the slot range they serve (`redis-primary-0` serves slots 0 to 5460, its
replica is `redis-replica-0`), so that runs, each on a fresh cluster, line up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import psutil
from redis.cluster import RedisCluster

from bench.cost import CpuMeter
from conveyor.client import AsyncClient, submit_request
from conveyor.embedded import EmbeddedRedis, EmbeddedRedisCluster, free_port
from conveyor.jobs.shards import placements
from conveyor.redis.keys import QueueKeys
from tests.processes import Service, Stack

if TYPE_CHECKING:
    from bench.__main__ import Bench

# What the emitted figures say about reading them on this machine.
NOTE = (
    "2 cores run every Redis node, the api, the workers, PostgreSQL and this client, so "
    "jobs/s cannot grow with the primaries here; what shows the scaling is each primary's "
    "Redis CPU per job and how it spreads (redis_primary_share): a queue's Redis work is "
    "done by the one primary serving its slot."
)


def drain_worker(stack: Stack, queue: str, env: Mapping[str, str] | None = None) -> Service:
    """A worker of `queue` alone with 64 slots and the bench's handlers, as every drain
    starts them (the single-Redis drains in `bench.__main__` too); `env` adds settings."""
    return stack.start(
        "worker",
        "--queues",
        queue,
        "--concurrency",
        "64",
        "--handlers",
        "bench.handlers",
        env={**stack.worker_env(), **(env or {})},
    )


@dataclass(frozen=True)
class Primary:
    """One primary of the cluster and its replicas, by the slots they serve."""

    name: str  # redis-primary-<i>, i the rank of its slot range
    node: EmbeddedRedis
    replicas: list[EmbeddedRedis]

    def processes(self) -> dict[str, psutil.Process]:
        found = {self.name: _process(self.node)}
        replica = self.name.replace("primary", "replica")
        for i, node in enumerate(self.replicas):
            found[replica if i == 0 else f"{replica}.{i}"] = _process(node)
        return found


def _process(node: EmbeddedRedis) -> psutil.Process:
    if node.pid is None:
        raise RuntimeError(f"Redis node {node.port} is not running")
    return psutil.Process(node.pid)


@dataclass(frozen=True)
class Drained:
    """One timed drain: the jobs, the seconds from resume to empty, and the CPU seconds each
    process used meanwhile."""

    jobs: int
    seconds: float
    cpu_s: dict[str, float]
    queues: dict[str, str]  # queue (or shard: `Job.placement`) -> the primary serving it
    workers_per_queue: int = 1  # one per shard

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    def us_per_job(self, role: str = "") -> dict[str, float]:
        """CPU µs per job (of every job drained) of each process whose name starts with
        `role` (`redis-primary`, `redis-replica`, `worker`; all by default)."""
        return {
            name: round(cpu / self.jobs * 1e6, 1)
            for name, cpu in self.cpu_s.items()
            if name.startswith(role)
        }

    @property
    def busiest_primary_us(self) -> float:
        """The CPU µs per job of the primary that worked most: the one that fills its core
        first as the rate grows."""
        return max(self.us_per_job("redis-primary").values())

    def details(self) -> dict[str, Any]:
        """CPU µs per job of each process, the primaries' share of the cluster's Redis CPU,
        and how busy each primary's core was."""
        primaries = {n: cpu for n, cpu in self.cpu_s.items() if n.startswith("redis-primary")}
        redis_total = sum(primaries.values()) or 1.0
        return {
            "jobs": self.jobs,
            "queues": self.queues,
            "workers_per_queue": self.workers_per_queue,
            "cpu_us_per_job": self.us_per_job(),
            "cpu_us_per_job_in_all": round(sum(self.us_per_job().values()), 1),
            "redis_primaries_cpu_us_per_job": round(
                sum(self.us_per_job("redis-primary").values()), 1
            ),
            "redis_replicas_cpu_us_per_job": round(
                sum(self.us_per_job("redis-replica").values()), 1
            ),
            "redis_primary_share": {n: round(c / redis_total, 2) for n, c in primaries.items()},
            "redis_primary_core_percent": {
                n: round(100 * c / self.seconds, 1) for n, c in primaries.items()
            },
            "note": NOTE,
        }


class ClusterStack:
    """A Redis Cluster with a `conveyor api` on it (`CONVEYOR_REDIS_CLUSTER=true`), whose
    workers the drains start; everything else (PostgreSQL, timings, handlers) comes from the
    bench stack's environment `base`. Start-up takes a few seconds; each use is a fresh
    cluster in a folder of its own under `folder`."""

    def __init__(self, base: Mapping[str, str], folder: Path) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="cluster-", dir=folder))
        self.cluster = EmbeddedRedisCluster(self.folder / "redis")
        env = {
            **base,
            "CONVEYOR_REDIS_URL": self.cluster.url,
            "CONVEYOR_REDIS_CLUSTER": "true",
            "CONVEYOR_API_ADDR": f"127.0.0.1:{free_port()}",
            "CONVEYOR_DOWNLOAD_ADDR": f"127.0.0.1:{free_port()}",
            "CONVEYOR_SCHEDULER_ADDR": f"127.0.0.1:{free_port()}",
        }
        self.stack = Stack(env, self.folder)
        self.primaries: list[Primary] = []
        self._redis: RedisCluster | None = None

    def __enter__(self) -> Self:
        try:
            self.cluster.start()
            self.primaries = self._primaries()
            self.stack.start("api")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._redis is not None:
                self._redis.close()
            self.stack.stop_all()
        finally:
            self.cluster.stop()

    @property
    def redis(self) -> RedisCluster:
        """A sync cluster client, for the drain loop's reads."""
        if self._redis is None:
            seed = self.cluster.url.split(",", 1)[0]  # it finds the other nodes
            self._redis = RedisCluster.from_url(seed, decode_responses=True)
        return self._redis

    def _primaries(self) -> list[Primary]:
        """Each slot range's primary and replicas (CLUSTER SLOTS), in slot order."""
        by_port = {node.port: node for node in self.cluster.nodes}
        with contextlib.closing(self.cluster.client(self.cluster.nodes[0])) as client:
            ranges = sorted(client.execute_command("CLUSTER SLOTS"))  # type: ignore[no-untyped-call]
        return [
            Primary(
                f"redis-primary-{i}",
                by_port[int(owners[0][1])],
                [by_port[int(replica[1])] for replica in owners[1:]],
            )
            for i, (_, _, *owners) in enumerate(ranges)
        ]

    def primary_of(self, queue: str) -> Primary:
        """The primary serving `queue`'s keys, as the cluster says (CLUSTER KEYSLOT of its
        hash tag, CLUSTER SLOTS)."""
        port = self.cluster.node_of(queue_keys(queue)[0]).port
        return next(p for p in self.primaries if p.node.port == port)

    def queues_apart(self, count: int, prefix: str = "spread") -> list[str]:
        """`count` queue names (`<prefix><n>`, the first n that land on a primary no
        earlier name took) on `count` different primaries, in their primaries' order."""
        found: dict[str, str] = {}
        n = 0
        while len(found) < count:
            name = f"{prefix}{n}"
            found.setdefault(self.primary_of(name).name, name)
            n += 1
        return [found[p.name] for p in self.primaries if p.name in found][:count]

    def processes(self) -> dict[str, psutil.Process]:
        """Every Redis node, by the slot range it serves."""
        return {name: proc for p in self.primaries for name, proc in p.processes().items()}

    async def create(self, admin: str, queue: str, shards: int) -> None:
        """Give `queue` its `shards` shards before it is filled (as `conveyor queues create
        Q --shards N` does); one shard is any queue."""
        if shards > 1:
            async with AsyncClient(self.stack.api_addr, api_key=admin) as client:
                await client.update_queue_limits(queue, shards=shards)

    def queue_apart(self, shards: int) -> str:
        """A queue name (`hot<n>`, the first) whose `shards` shards are served by as many
        different primaries as there are of either."""
        for n in itertools.count():
            name = f"hot{n}"
            homes = {self.primary_of(p).name for p in placements(name, shards)}
            if len(homes) == min(shards, len(self.primaries)):
                return name
        raise AssertionError("unreachable")

    def worker(self, queue: str) -> Service:
        """A worker of `queue` alone, 64 slots, with the bench's handlers (as drain1's)."""
        return drain_worker(self.stack, queue)

    async def fill(self, key: str, queue: str, count: int, job_type: str = "noop") -> None:
        """Submit `count` jobs (whole thousands) to `queue` through this stack's api."""
        batch = [submit_request(job_type, queue=queue) for _ in range(1000)]
        async with AsyncClient(self.stack.api_addr, api_key=key) as client:
            for _ in range(count // 1000):
                await client.submit_many(batch)

    async def drain(
        self, bench: Bench, queues: Sequence[str], per_queue: int, shards: int = 1
    ) -> Drained:
        """Fill each queue (of `shards` shards) with `per_queue` no-op jobs while its own
        workers (one per shard, 64 slots each) are paused, resume every worker at once and
        wait until every queue is empty (nothing ready, nothing leased, in any shard): all
        the jobs over the seconds that took, and each process's CPU."""
        per_queue = per_queue // 1000 * 1000 or 1000
        for queue in queues:
            await self.create(bench.admin, queue, shards)
        workers = [self.worker(queue) for queue in queues for _ in range(shards)]
        await bench.control(workers, "PauseWorker")
        for queue in queues:
            await self.fill(bench.key, queue, per_queue)
        (api,) = [s for s in self.stack.services if s.name == "api"]
        meter = CpuMeter(
            {
                "api": psutil.Process(api.proc.pid),
                **{f"worker-{i}": psutil.Process(w.proc.pid) for i, w in enumerate(workers)},
                **self.processes(),
                "postgres": bench.servers.postgres,
            }
        ).start()
        start = time.perf_counter()
        await bench.control(workers, "ResumeWorker")
        keys = [key for queue in queues for key in queue_keys(queue, shards)]
        while True:
            pipe = self.redis.pipeline()  # type: ignore[no-untyped-call]
            for key in keys:
                pipe.zcard(key)
            if not any(pipe.execute()):
                break
            for worker in workers:
                if worker.proc.poll() is not None:
                    raise RuntimeError(f"a worker exited during the drain:\n{worker.tail()}")
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - start
        used = meter.stop()
        for worker in workers:
            worker.stop()
        placed = {
            placement: self.primary_of(placement).name
            for queue in queues
            for placement in placements(queue, shards)
        }
        return Drained(per_queue * len(queues), elapsed, used, placed, shards)


def queue_keys(queue: str, shards: int = 1) -> list[str]:
    """The keys whose emptiness means `queue` is drained: the ready and leases sets of each
    of its shards."""
    return [
        key for p in placements(queue, shards) for key in (QueueKeys(p).ready, QueueKeys(p).leases)
    ]
