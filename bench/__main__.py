"""`make bench`: Conveyor's DESIGN.md §8 workloads against real processes.

Starts its own PostgreSQL (default durability: fsync and synchronous_commit on) and Redis,
runs `conveyor api` and `conveyor worker` processes, and prints one JSON line per figure:
`{"bench": ..., "value": ..., "unit": ..., "target": ..., "meets": ...}` plus details.
The client runs in this process on the same 2 cores, so every figure includes its cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psutil
import psycopg
from redis import Redis
from sqlalchemy import text

from bench.bundle import bundle_rss
from bench.cluster import NOTE, ClusterStack, drain_worker
from bench.cost import ClientCall, CpuMeter, Side, measure, pct, versus_floor
from bench.floor import floor_server
from bench.handlers import STAMPS
from bench.search import search_figures
from bench.workflows import workflow_figures
from conveyor.cli.dev import wait_serving
from conveyor.client import AsyncClient, JobState, schedule_request, submit_request
from conveyor.config import Settings
from conveyor.db import Database, JobStore, migrate
from conveyor.db.bulk import psycopg_dsn
from conveyor.db.queues import QueueStore
from conveyor.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedRedisCluster, free_port
from conveyor.errors import ConveyorError
from conveyor.redis import RedisQueue, connect
from conveyor.redis.keys import EPOCH_KEY
from conveyor.scheduling.reconciler import Reconciler
from conveyor.v1 import worker_control_pb2 as wc
from conveyor.v1.worker_control_pb2_grpc import WorkerControlStub
from tests.processes import Service, Stack, make_env

CHECKOUT = Path(__file__).resolve().parent.parent
STREAMS_PER_CHANNEL = 500
STREAMS_PER_OWNER = 1000


@dataclass
class Figure:
    """One measured figure of one run of a workload."""

    name: str
    value: float
    unit: str
    target: float | None
    higher_is_better: bool
    details: dict[str, Any]

    def meets(self, value: float) -> bool | None:
        if self.target is None:
            return None
        return value >= self.target if self.higher_is_better else value <= self.target


# What the workload running now has measured (see `run_workload`).
FIGURES: list[Figure] = []


def emit(
    name: str,
    value: float,
    unit: str,
    target: float | None,
    higher_is_better: bool = True,
    **details: Any,
) -> None:
    """Record a figure of the current run; `report` prints it once all runs are in."""
    FIGURES.append(Figure(name, value, unit, target, higher_is_better, details))


class ProcessSampler:
    """CPU seconds and peak RSS of every service process of the stack while a run lasts
    (processes the workload starts included), sampled every 50 ms."""

    INTERVAL = 0.05

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.first_cpu: dict[str, float] = {}
        self.last_cpu: dict[str, float] = {}
        self.peak_rss: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def _sample(self) -> None:
        for index, service in enumerate(self.stack.services):
            if service.proc.poll() is not None:
                continue
            name = f"{service.name}-{index}"
            try:
                proc = psutil.Process(service.proc.pid)
                times, rss = proc.cpu_times(), proc.memory_info().rss
            except psutil.Error:
                continue
            cpu = times.user + times.system
            self.first_cpu.setdefault(name, cpu)
            self.last_cpu[name] = cpu
            self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss)

    async def _loop(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(self.INTERVAL)

    def __enter__(self) -> ProcessSampler:
        self._sample()
        self._task = asyncio.create_task(self._loop())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        self._sample()

    def report(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                "cpu_s": round(self.last_cpu[name] - self.first_cpu[name], 2),
                "peak_rss_mib": round(self.peak_rss[name] / 2**20, 1),
            }
            for name in sorted(self.peak_rss)
        }


def report(runs: list[list[Figure]], processes: list[dict[str, dict[str, float]]]) -> None:
    """One JSON line per figure: the median over the runs, with min, max and every run's
    value, whether the median meets the target, the median run's details, and per process
    the median CPU seconds and the highest peak RSS."""
    names = list(dict.fromkeys(f.name for figures in runs for f in figures))
    for name in names:
        found = [(f, i) for i, figures in enumerate(runs) for f in figures if f.name == name]
        values = [f.value for f, _ in found]
        middle = statistics.median(values)
        figure, _ = min(found, key=lambda item: abs(item[0].value - middle))
        per_process: dict[str, dict[str, float]] = {}
        for proc in {p for _, i in found for p in processes[i]}:
            seen = [processes[i][proc] for _, i in found if proc in processes[i]]
            per_process[proc] = {
                "cpu_s": statistics.median(s["cpu_s"] for s in seen),
                "peak_rss_mib": max(s["peak_rss_mib"] for s in seen),
            }
        line = {
            "bench": name,
            "value": round(middle, 3),
            "min": round(min(values), 3),
            "max": round(max(values), 3),
            "runs": [round(v, 3) for v in values],
            "unit": figure.unit,
            "target": figure.target,
            "meets": figure.meets(middle),
            **figure.details,
            "processes": dict(sorted(per_process.items())),
        }
        print(json.dumps(line), flush=True)


def cpu_share(proc: psutil.Process, before: Any, seconds: float) -> float:
    """The percentage of one core `proc` used since `before` (its cpu_times then)."""
    now = proc.cpu_times()
    used: float = (now.user - before.user) + (now.system - before.system)
    return 100 * used / seconds


async def settled(proc: psutil.Process, limit: float = 1.0, patience: float = 120.0) -> None:
    """Return once `proc` uses under `limit` % of a core over a second (its start-up work,
    such as a first reconcile pass, is done), or after `patience` seconds."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        before = proc.cpu_times()
        await asyncio.sleep(1.0)
        if cpu_share(proc, before, 1.0) < limit:
            return


def _forkserver_pid() -> int:
    from multiprocessing import forkserver

    return int(forkserver._forkserver._forkserver_pid or 0)  # type: ignore[attr-defined]


def _cpu(*procs: psutil.Process) -> float:
    """CPU seconds of these processes and of the children they have reaped."""
    total = 0.0
    for proc in procs:
        times = proc.cpu_times()
        total += times.user + times.system + times.children_user + times.children_system
    return total


@dataclass(frozen=True)
class FanOut:
    """One run of WatchJob fan-out against one server (see `Bench.watch_fanout`)."""

    failed: list[str]
    rss: int
    p99_ms: float
    p50_ms: float
    open_cpu_us: float
    cancel_cpu_us: float
    # This process's (the client's) CPU per final message meanwhile.
    client_cancel_cpu_us: float


async def _fan_out(
    addr: str,
    streams: int,
    keys: list[str],
    jobs: list[str],
    cancellers: list[AsyncClient],
    proc: psutil.Process,
) -> FanOut:
    """Open `streams` streams on `addr` (job i % len(jobs) for stream i), up to
    STREAMS_PER_OWNER per key, then cancel every job in turn and time each stream's final
    message."""
    owners = len(keys)
    cpu_before = _cpu(proc)
    opened = 0
    all_open = asyncio.Event()
    cancelled_at: dict[str, float] = {}
    latencies: list[float] = []

    # Many clients, as in real use: each its own connection with up to 500 streams, for
    # one owner. Stream i watches job i % 100, of owner (i % 100) % owners.
    per_owner = -(-STREAMS_PER_OWNER // STREAMS_PER_CHANNEL)
    channels = [
        AsyncClient(
            api_key=keys[index // per_owner],
            channel=grpc.aio.insecure_channel(
                addr, options=[("grpc.use_local_subchannel_pool", 1)]
            ),
        )
        for index in range(owners * per_owner)
    ]

    def channel_of(i: int) -> AsyncClient:
        owner = (i % len(jobs)) % owners
        return channels[owner * per_owner + (i // len(jobs)) % per_owner]

    failed: list[str] = []

    async def watch(index: int, job_id: str) -> None:
        nonlocal opened
        try:
            async for update in channel_of(index).watch(job_id):
                if update.job.state == JobState.QUEUED:
                    opened += 1
                elif update.job.state == JobState.CANCELLED:
                    latencies.append(time.perf_counter() - cancelled_at[job_id])
                if opened + len(failed) == streams:
                    all_open.set()
        except ConveyorError as exc:  # counted and reported, not fatal to the bench
            failed.append(exc.code.name)
            if opened + len(failed) == streams:
                all_open.set()

    # Streams open in waves of 100, as many clients would open them. (Thousands opened in
    # the same instant are served too, since gRPC core keeps a backlog as long as
    # CONVEYOR_MAX_CONCURRENT_RPCS for the loop to take up: see
    # `conveyor.server.grpcserver.server_options`.)
    tasks = []
    for i in range(streams):
        tasks.append(asyncio.create_task(watch(i, jobs[i % len(jobs)])))
        if i % 100 == 99:
            await asyncio.sleep(0.05)
    await asyncio.wait_for(all_open.wait(), 300)
    rss_open = proc.memory_info().rss
    cpu_open, client_open = _cpu(proc), _cpu(psutil.Process())
    for i, job_id in enumerate(jobs):
        cancelled_at[job_id] = time.perf_counter()
        await cancellers[i % len(cancellers)].cancel(job_id)
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    cpu_end, client_end = _cpu(proc), _cpu(psutil.Process())
    for channel in channels:
        await channel.close()
    return FanOut(
        failed=failed,
        rss=rss_open,
        p99_ms=round(pct(latencies, 0.99) * 1e3, 2) if latencies else 0.0,
        p50_ms=round(statistics.median(latencies) * 1e3, 2) if latencies else 0.0,
        open_cpu_us=round((cpu_open - cpu_before) / max(opened, 1) * 1e6, 1),
        cancel_cpu_us=round((cpu_end - cpu_open) / max(len(latencies), 1) * 1e6, 1),
        client_cancel_cpu_us=round((client_end - client_open) / max(len(latencies), 1) * 1e6, 1),
    )


def growth(samples: Sequence[float]) -> float:
    """Last sample less the first (0 with fewer than two)."""
    return round(samples[-1] - samples[0], 1) if len(samples) > 1 else 0.0


# A realistic payload of seven keys (issue 21): what an export or report job carries.
PAYLOAD_7_KEYS: dict[str, Any] = {
    "report": "monthly-sales",
    "account_id": 184467,
    "region": "eu-west-1",
    "format": "csv",
    "include_archived": False,
    "columns": ["date", "sku", "quantity", "unit_price"],
    "notify": "ops@example.com",
}


@dataclass(frozen=True)
class Servers:
    """The processes behind the stack that the bench measures CPU of, and the floor."""

    redis: psutil.Process
    postgres: psutil.Process
    floor: psutil.Process
    floor_addr: str


class Bench:
    def __init__(
        self, stack: Stack, key: str, admin: str, redis: Redis, scale: float, servers: Servers
    ) -> None:
        self.stack = stack
        self.key = key
        self.admin = admin
        self.redis = redis
        self.scale = scale
        self.servers = servers
        # CPU µs per job of each process during the last `drained` (api, workers, Redis,
        # PostgreSQL), from resume to empty.
        self.last_drain_cpu_us: dict[str, float] = {}
        self.soak_seconds = 600.0
        self.soak_hot_ttl = 180.0
        self._watch_keys: list[str] = []

    def n(self, count: int) -> int:
        return max(int(count * self.scale), 10)

    def client(self, *, batch_submits: bool = False) -> AsyncClient:
        """A client of the stack; its submits are not batched unless asked (rows that
        measure SubmitJob measure SubmitJob)."""
        return AsyncClient(self.stack.api_addr, api_key=self.key, batch_submits=batch_submits)

    def processes(self, *workers: Service) -> dict[str, psutil.Process]:
        """The processes a job passes through: the api, the given workers, Redis and
        PostgreSQL (with its backends)."""
        (api,) = [s for s in self.stack.services if s.name == "api" and s.proc.poll() is None]
        found = {"api": psutil.Process(api.proc.pid)}
        found |= {f"worker-{i}": psutil.Process(w.proc.pid) for i, w in enumerate(workers)}
        return found | {"redis": self.servers.redis, "postgres": self.servers.postgres}

    async def versus_floor(
        self,
        make_calls: Callable[[AsyncClient], Awaitable[list[ClientCall]]],
        per_loop: int,
        jobs_per_call: int = 1,
        *,
        batch_submits: bool = False,
    ) -> tuple[Side, Side]:
        """The same client loops against Conveyor, then against the floor (`bench.floor`):
        each side's rate, latencies and CPU by process."""
        async with self.client(batch_submits=batch_submits) as client:
            conveyor = await measure(
                await make_calls(client), per_loop, self.processes(), jobs_per_call
            )
        floor_procs = {"api": self.servers.floor}
        floor_addr = self.servers.floor_addr
        async with AsyncClient(floor_addr, api_key=self.key, batch_submits=batch_submits) as client:
            floor = await measure(await make_calls(client), per_loop, floor_procs, jobs_per_call)
        return conveyor, floor

    async def submit_sequential(self) -> None:
        count = self.n(3000)

        async def one(client: AsyncClient) -> list[ClientCall]:
            return [lambda: client.submit("noop", queue="parked")]

        conveyor, floor = await self.versus_floor(one, count)
        emit("submit_one_client", conveyor.rate, "jobs/s", 3000, **versus_floor(conveyor, floor))

    async def submit_concurrent(self, clients: int = 16) -> None:
        """SubmitJob with `clients` calls in flight on one channel."""

        async def loops(client: AsyncClient) -> list[ClientCall]:
            return [lambda: client.submit("noop", queue="parked")] * clients

        conveyor, floor = await self.versus_floor(loops, self.n(1000))
        emit("submit_16_clients", conveyor.rate, "jobs/s", 10000, **versus_floor(conveyor, floor))

    async def submit_sdk_concurrent(self, callers: int = 64) -> None:
        """One SDK client process, `callers` concurrent `submit()` calls: the SDK batches
        them (its default) into per-item SubmitJobs, so each job's API CPU is a share of a
        batch's; `api_cpu_us_per_call` is per submit, i.e. per job."""

        async def loops(client: AsyncClient) -> list[ClientCall]:
            return [lambda: client.submit("noop", queue="parked")] * callers

        conveyor, floor = await self.versus_floor(loops, self.n(500), batch_submits=True)
        emit("submit_sdk_64_callers", conveyor.rate, "jobs/s", 8000,
             **versus_floor(conveyor, floor))  # fmt: skip

    async def submit_payload(self, clients: int = 16) -> None:
        """SubmitJob with 16 in flight, empty payloads and then a realistic 7-key payload:
        what the payload adds to the API's CPU per call (target +30 µs), beside what it adds
        to the floor's."""
        sides = {}
        for name, payload in (("empty", None), ("7_keys", PAYLOAD_7_KEYS)):

            async def loops(client: AsyncClient, payload: Any = payload) -> list[ClientCall]:
                return [lambda: client.submit("noop", payload, queue="parked")] * clients

            sides[name] = await self.versus_floor(loops, self.n(1000))
        (empty, empty_floor), (full, full_floor) = sides["empty"], sides["7_keys"]
        emit("submit_payload_7_keys", full.rate, "jobs/s", None, **versus_floor(full, full_floor))
        emit(
            "submit_payload_extra_api_cpu",
            full.cpu_us_per_call("api") - empty.cpu_us_per_call("api"),
            "us/call",
            30,
            higher_is_better=False,
            floor_extra_cpu_us=round(
                full_floor.cpu_us_per_call("api") - empty_floor.cpu_us_per_call("api"), 1
            ),
        )

    async def submit_bulk(self) -> None:
        calls = max(self.n(30), 3)
        batch = [submit_request("noop", queue="parked") for _ in range(1000)]

        async def bulk(client: AsyncClient) -> list[ClientCall]:
            return [lambda: client.submit_many(batch)]

        conveyor, floor = await self.versus_floor(bulk, calls, jobs_per_call=1000)
        emit("submit_bulk_1000", conveyor.jobs / conveyor.seconds, "jobs/s", 30000,
             **versus_floor(conveyor, floor))  # fmt: skip

    async def fill(self, queue: str, count: int, type: str = "noop") -> None:
        batch = [submit_request(type, queue=queue) for _ in range(1000)]
        async with self.client() as client:
            for _ in range(count // 1000):
                await client.submit_many(batch)

    async def drain(self, workers: int, target: float) -> None:
        rate, cpu = await self.drained(workers, "noop", self.n(20000))
        emit(
            f"drain_noop_{workers}_worker",
            rate,
            "jobs/s",
            target,
            jobs=self.n(20000) // 1000 * 1000 or 1000,
            worker_cpu_s=cpu,
            cpu_us_per_job=self.last_drain_cpu_us,
            cpu_us_per_job_in_all=round(sum(self.last_drain_cpu_us.values()), 1),
        )

    async def drained(
        self,
        workers: int,
        job_type: str,
        count: int,
        spin_ms: float = 0.0,
        env: dict[str, str] | None = None,
    ) -> tuple[float, list[float]]:
        """Fill a queue with `count` jobs (whole thousands) while `workers` paused worker
        processes wait, resume them, and time the drain: jobs/s and each worker's CPU
        seconds."""
        queue = f"drain{workers}-{job_type}"
        count = count // 1000 * 1000 or 1000
        services = [
            drain_worker(self.stack, queue, {"BENCH_SPIN_MS": str(spin_ms), **(env or {})})
            for _ in range(workers)
        ]
        await self.control(services, "PauseWorker")
        await self.fill(queue, count, job_type)
        meter = CpuMeter(self.processes(*services)).start()
        start = time.perf_counter()
        await self.control(services, "ResumeWorker")
        ready, leases = f"cv:{{{queue}}}:ready", f"cv:{{{queue}}}:leases"
        while True:
            pipe = self.redis.pipeline()
            pipe.zcard(ready)
            pipe.zcard(leases)
            waiting, running = pipe.execute()
            if waiting == 0 and running == 0:
                break
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - start
        used = meter.stop()
        for service in services:
            if service.proc.poll() is not None:
                raise RuntimeError(f"a worker exited during the drain:\n{service.tail()}")
        cpu = [psutil.Process(s.proc.pid).cpu_times() for s in services]
        for service in services:
            service.stop()
        self.last_drain_cpu_us = {k: round(v / count * 1e6, 1) for k, v in used.items()}
        return count / elapsed, [round(c.user + c.system, 2) for c in cpu]

    async def drain_cpu(self, spin_ms: float = 1.0) -> None:
        """Jobs whose handler is CPU-bound (a 1 ms busy loop, `bench.spin`), drained by 1
        and then 2 worker processes: the workers share nothing but Redis and PostgreSQL,
        so the second should nearly double the rate (target at least 1.6 times)."""
        count = self.n(5000)
        one, cpu_one = await self.drained(1, "bench.spin", count, spin_ms)
        two, cpu_two = await self.drained(2, "bench.spin", count, spin_ms)
        emit("drain_cpu_1_worker", one, "jobs/s", None, spin_ms=spin_ms, worker_cpu_s=cpu_one)
        emit("drain_cpu_2_workers", two, "jobs/s", None, spin_ms=spin_ms, worker_cpu_s=cpu_two)
        emit("drain_cpu_scaling", two / one, "x", 1.6, spin_ms=spin_ms, jobs=count)

    async def isolation(self, attempts: int = 200) -> None:
        """What `isolation="process"` costs (issue 18): starting the pool (the fork
        server, which imports the handler modules, and its first children), forking one
        child, and one no-op attempt taken from a warm pool, handed over and reported
        back, measured in this process with a pool of its own; CPU per attempt counts this
        process, the fork server and the children it reaped. Then a worker process drains
        no-op jobs that each run in a child (8 forked ahead)."""
        from conveyor.handlers.context import AttemptFacts
        from conveyor.worker.isolation import Attempt, Call, ProcessPool, Progress, Setup

        settings = Settings(redis_url="redis://unused", database_url="sqlite:///unused")
        pool = ProcessPool(Setup(settings, False, os.getpid()), size=4, preload=["bench.handlers"],
                           kill_grace=0.5)  # fmt: skip
        started = time.perf_counter()
        await pool.ready()
        start_seconds = time.perf_counter() - started
        forkserver = psutil.Process(_forkserver_pid())
        before_cpu = _cpu(psutil.Process(), forkserver)

        async def serve(call: Call) -> None:
            return None

        def progress(report: Progress) -> None:
            return None

        latencies = []
        for i in range(self.n(attempts)):
            await pool.ready()  # a warm child, as in steady state
            facts = AttemptFacts(f"bench-{i}", "bench.isolated_noop", "bench", 1, 1, 60.0)
            attempt = Attempt("bench.handlers", "isolated_noop", False, {}, facts, "bench")
            began = time.perf_counter()
            outcome = await pool.run(attempt, serve, progress)
            latencies.append((time.perf_counter() - began) * 1000)
            assert not outcome.failed, outcome.error
        await pool.ready()
        cpu = _cpu(psutil.Process(), forkserver) - before_cpu
        forks = pool.stats
        await pool.close()
        emit("isolation_pool_start", start_seconds, "s", None, higher_is_better=False,
             children=4)  # fmt: skip
        emit("isolation_fork_child", forks.start_seconds / forks.started * 1000, "ms", None,
             higher_is_better=False)  # fmt: skip
        emit("isolation_attempt_p50", pct(latencies, 0.5), "ms", 2.0, higher_is_better=False,
             p99_ms=round(pct(latencies, 0.99), 2), attempts=len(latencies),
             cpu_us_per_attempt=round(cpu / len(latencies) * 1e6))  # fmt: skip
        rate, worker_cpu = await self.drained(
            1, "bench.isolated_noop", self.n(2000), env={"CONVEYOR_PROCESS_POOL_SIZE": "8"}
        )
        emit("drain_isolated_1_worker", rate, "jobs/s", None, worker_cpu_s=worker_cpu,
             jobs=self.n(2000) // 1000 * 1000 or 1000)  # fmt: skip

    async def backlog_memory(self) -> None:
        """A backlog of 1,000,000 queued jobs (scaled) in a queue no worker serves: Redis
        memory per queued job (hot-state hash, ready-set entry, first event)."""
        count = self.n(1_000_000) // 1000 * 1000 or 1000
        before = int(self.redis.info("memory")["used_memory"])
        batch = [submit_request("noop", queue="backlog") for _ in range(1000)]
        async with self.client() as client:
            calls = iter(range(count // 1000))

            async def loop() -> None:
                for _ in calls:
                    await client.submit_many(batch)

            start = time.perf_counter()
            await asyncio.gather(*(loop() for _ in range(4)))
            elapsed = time.perf_counter() - start
        after = int(self.redis.info("memory")["used_memory"])
        emit(
            "backlog_bytes_per_queued_job",
            (after - before) / count,
            "bytes",
            None,
            higher_is_better=False,
            jobs=count,
            redis_used_mib=round(after / 2**20, 1),
            submit_jobs_per_s=round(count / elapsed),
        )

    async def soak(self, rate: float = 500.0) -> None:
        """`--soak-seconds` (600) of steady load, 500 jobs/s submitted in batches of 10
        every 20 ms and run by one worker: the api's and the worker's RSS and Redis's
        used_memory each minute, and how much each grew between the first and the last
        minute (flat is the target for the processes).

        Redis keeps each finished job's hot state for CONVEYOR_HOT_STATE_TTL_SECONDS, so it
        grows by rate x bytes per job until the first jobs expire, then stays flat. The
        worker runs with `--soak-hot-ttl` (180 s) so that the soak shows both: the bytes
        per finished job from the growth before the TTL, and Redis flat after it."""
        seconds, ttl = self.soak_seconds, self.soak_hot_ttl
        worker_env = {**self.stack.worker_env(), "CONVEYOR_HOT_STATE_TTL_SECONDS": str(ttl)}
        worker = self.stack.start("worker", "--queues", "soak", "--concurrency", "64",
                                  env=worker_env)  # fmt: skip
        api = next(s for s in self.stack.services if s.name == "api")
        procs = {"api": psutil.Process(api.proc.pid), "worker": psutil.Process(worker.proc.pid)}
        samples: dict[str, list[float]] = {name: [] for name in [*procs, "redis"]}
        batch = [submit_request("noop", queue="soak") for _ in range(10)]
        submitted = 0
        async with self.client() as client:
            start = time.perf_counter()
            next_sample = start + 60
            while (now := time.perf_counter()) - start < seconds:
                await client.submit_many(batch)
                submitted += len(batch)
                if now >= next_sample:
                    for name, proc in procs.items():
                        samples[name].append(round(proc.memory_info().rss / 2**20, 1))
                    used = self.redis.info("memory")["used_memory"]
                    samples["redis"].append(round(used / 2**20, 1))
                    next_sample += 60
                await asyncio.sleep(max(start + submitted / rate - time.perf_counter(), 0))
            elapsed = time.perf_counter() - start
        worker.stop()
        for name in procs:
            rss = samples[name]
            emit(f"soak_{name}_rss_growth", growth(rss), "MiB", None, higher_is_better=False,
                 rss_per_minute_mib=rss, seconds=round(elapsed),
                 jobs_per_s=round(submitted / elapsed, 1))  # fmt: skip
        self._soak_redis(samples["redis"], submitted / elapsed, ttl)

    @staticmethod
    def _soak_redis(used: list[float], rate: float, ttl: float) -> None:
        """Redis's growth after the TTL (from the second sample past it; expiry is lazy and
        sampled, so the first minute past it still settles), and the bytes per finished job
        from the growth before it."""
        expired_from = int(ttl // 60) + 1  # index of the second sample past the TTL
        before = used[: max(int(ttl // 60), 1)]
        per_job = (before[-1] - before[0]) * 2**20 / (rate * 60 * (len(before) - 1)) \
            if len(before) > 1 else None  # fmt: skip
        emit("soak_redis_used_memory_growth", growth(used[expired_from:]), "MiB", None,
             higher_is_better=False, used_memory_per_minute_mib=used, hot_state_ttl_s=ttl,
             bytes_per_finished_job=round(per_job) if per_job else None)  # fmt: skip

    async def delayed_promotion(self) -> None:
        """20,000 no-op jobs submitted with one run_at a few seconds ahead into a queue
        whose worker is already waiting: the rate from that run_at until the last job
        ended (the delayed set promoted by the claim script, at most 1,000 per claim),
        to read beside drain_noop_1_worker, whose jobs start out ready."""
        queue = "delayed"
        count = self.n(20000) // 1000 * 1000 or 1000
        worker = self.stack.start(
            "worker", "--queues", queue, "--concurrency", "64", env=self.stack.worker_env()
        )
        lead = 2.0 + count / 5000  # time for the bulk submits to land before the run_at
        due = datetime.now(UTC) + timedelta(seconds=lead)
        batch = [submit_request("noop", queue=queue, run_at=due) for _ in range(1000)]
        async with self.client() as client:
            for _ in range(count // 1000):
                await client.submit_many(batch)
        keys = [f"cv:{{{queue}}}:{name}" for name in ("delayed", "ready", "leases")]
        assert time.time() < due.timestamp(), "the submits outlasted the lead"
        await asyncio.sleep(due.timestamp() - time.time())
        while True:
            pipe = self.redis.pipeline()
            for key in keys:
                pipe.zcard(key)
            if not any(pipe.execute()):
                break
            await asyncio.sleep(0.02)
        elapsed = time.time() - due.timestamp()
        cpu = psutil.Process(worker.proc.pid).cpu_times()
        emit(
            "delayed_promotion_1_worker",
            count / elapsed,
            "jobs/s",
            None,
            jobs=count,
            worker_cpu_s=round(cpu.user + cpu.system, 2),
        )
        worker.stop()

    async def scheduler_overhead(self, schedules: int = 1000, seconds: float = 10.0) -> None:
        """`schedules` schedules firing every second into a queue no worker serves, one
        scheduler process: its CPU share, and how late each bucket's job was committed
        (the job's create time minus its bucket, for the buckets of the measured seconds),
        p50 and p99; then the same scheduler's
        CPU with the schedules paused (what waiting for buckets costs)."""
        count = int(self.n(schedules))
        async with self.client() as client:
            made = await asyncio.gather(
                *(
                    client.create_schedule(schedule_request("noop", every=1, queue="sched"))
                    for _ in range(count)
                )
            )
            scheduler = self.stack.start(
                "scheduler", env={"CONVEYOR_SCHEDULER_ADDR": f"127.0.0.1:{free_port()}"}
            )
            proc = psutil.Process(scheduler.proc.pid)
            await asyncio.sleep(2.0)  # the first looks catch up with the creation time
            before, start, since = proc.cpu_times(), time.perf_counter(), time.time()
            await asyncio.sleep(seconds)
            busy = cpu_share(proc, before, time.perf_counter() - start)
            until = time.time()
            for schedule in made:
                await client.pause_schedule(schedule.id)
            await asyncio.sleep(1.0)
            before, start = proc.cpu_times(), time.perf_counter()
            await asyncio.sleep(seconds / 2)
            idle = cpu_share(proc, before, time.perf_counter() - start)
        buckets = [(int(key.rsplit(":", 1)[1]), made) for key, made in self.scheduled_jobs()]
        lags = [made - b for b, made in buckets if since * 1000 <= b <= until * 1000]
        emit(
            f"scheduler_{count}_schedules_per_second",
            busy,
            "% CPU",
            None,
            higher_is_better=False,
            jobs=len(lags),
            lag_p50_ms=pct(lags, 0.5),
            lag_p99_ms=pct(lags, 0.99),
            paused_cpu_percent=round(idle, 2),
        )
        scheduler.stop()

    def scheduled_jobs(self) -> list[tuple[str, int]]:
        """(idempotency key, create time) of every job a schedule made."""
        with psycopg.connect(psycopg_dsn(self.stack.env["CONVEYOR_DATABASE_URL"])) as conn:
            rows = conn.execute(
                "SELECT idempotency_key, create_time FROM jobs "
                "WHERE idempotency_key LIKE 'schedule:%' AND idempotency_key NOT LIKE '%manual%'"
            ).fetchall()
        return [(str(key), int(created)) for key, created in rows]

    async def control(self, services: list[Service], method: str) -> None:
        for service in services:
            async with grpc.aio.insecure_channel(service.addr) as channel:
                request = getattr(wc, f"{method}Request")()
                await getattr(WorkerControlStub(channel), method)(
                    request, metadata=(("authorization", f"Bearer {self.admin}"),)
                )

    async def start_latency(self, rate: float = 200.0) -> None:
        count = self.n(2000)
        worker = self.stack.start(
            "worker",
            "--queues",
            "latency",
            "--handlers",
            "bench.handlers",
            "--concurrency",
            "64",
            env=self.stack.worker_env(),
        )
        self.redis.delete(STAMPS)
        sent: dict[str, int] = {}
        async with self.client() as client:
            await client.submit("bench.stamp", queue="latency")
            begin = time.perf_counter()
            for i in range(count):
                due = begin + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                t0 = time.time_ns()
                job = await client.submit("bench.stamp", queue="latency")
                sent[job.id] = t0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the bench's own wait, outside the measured path
            if self.redis.hlen(STAMPS) >= count + 1:
                break
            await asyncio.sleep(0.05)
        stamps = self.redis.hgetall(STAMPS)
        lat = [(int(stamps[j]) - t) / 1e6 for j, t in sent.items() if j in stamps]
        emit(
            "submit_to_start_p50",
            statistics.median(lat),
            "ms",
            1.0,
            higher_is_better=False,
            rate=rate,
            jobs=len(lat),
        )
        emit(
            "submit_to_start_p99",
            pct(lat, 0.99),
            "ms",
            2.5,
            higher_is_better=False,
            rate=rate,
            jobs=len(lat),
        )
        worker.stop()

    async def get_polling(self, clients: int = 16) -> None:
        async def pollers(client: AsyncClient) -> list[ClientCall]:
            jobs = [(await client.submit("noop", queue="parked")).id for _ in range(100)]

            def poller(offset: int) -> ClientCall:
                count = itertools.count(offset)
                return lambda: client.get(jobs[next(count) % len(jobs)])

            return [poller(k) for k in range(clients)]

        conveyor, floor = await self.versus_floor(pollers, self.n(1000))
        emit("get_job_16_clients", conveyor.rate, "calls/s", 10000, p99_target_ms=5.0,
             **versus_floor(conveyor, floor))  # fmt: skip

    async def api_processes(self, clients: int = 16, seconds: float = 5.0) -> None:
        """SubmitJob from 16 client processes (4 in flight each, `bench/flood.py`) against
        one API process, then against `conveyor api --processes 2`: jobs/s of each and
        their ratio (target 1.3). Each client process holds one connection, which the
        kernel gives to one of the API processes."""
        rates = {}
        for processes in (1, 2):
            api = self.stack.start(
                "api",
                "--processes",
                str(processes),
                env={
                    "CONVEYOR_API_ADDR": f"127.0.0.1:{free_port()}",
                    "CONVEYOR_METRICS_ADDR": "off",
                },
            )
            try:
                rates[processes] = await self._clients_in_processes(api.addr, clients, seconds)
            finally:
                api.stop()
        emit("submit_16_processes_1_api", rates[1], "jobs/s", None, seconds=seconds)
        emit("submit_16_processes_2_api", rates[2], "jobs/s", None, seconds=seconds)
        emit("api_processes_scaling", rates[2] / rates[1], "x", 1.3)

    async def _clients_in_processes(self, addr: str, clients: int, seconds: float) -> float:
        """Jobs/s that `clients` flood processes submit together over the same `seconds`
        (they start once all have had time to import and connect)."""
        start_at = time.time() + 2.0 + 0.5 * clients
        floods = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.flood",
                addr,
                self.key,
                str(seconds),
                "4",
                str(start_at),
                stdout=asyncio.subprocess.PIPE,
                cwd=CHECKOUT,
            )
            for _ in range(clients)
        ]
        outputs = [json.loads((await flood.communicate())[0]) for flood in floods]
        if any(out["refused"] for out in outputs):
            raise RuntimeError(f"submits refused (rate limits?): {outputs}")
        accepted: int = sum(out["accepted"] for out in outputs)
        return accepted / seconds

    async def noisy_neighbour(
        self, rate: float = 100.0, seconds: float = 5.0, rounds: int = 3
    ) -> None:
        """A quiet owner submits at `rate` jobs/s, alone and then while a noisy owner (its
        key limited to 200 jobs/s) floods submits from 8 loops that ignore RetryInfo, in a
        process of its own (bench/flood.py), `rounds` times: the quiet owner's p99 submit
        latency with the flood over its p99 alone, over all rounds' calls (target ≤ 2; a
        p99 of one round's few hundred calls rests on its four slowest)."""
        made = json.loads(self.stack.cli("keys", "create", "--owner", "noisy", "--json").stdout)
        self.stack.cli("keys", "limits", made["id"], "--submit-rate", "200")
        count = int(rate * seconds)

        async def paced(client: AsyncClient) -> list[float]:
            latencies, start = [], time.perf_counter()
            for i in range(count):
                await asyncio.sleep(max(start + i / rate - time.perf_counter(), 0))
                t = time.perf_counter()
                await client.submit("noop", queue="parked")
                latencies.append(time.perf_counter() - t)
            return latencies

        alone: list[float] = []
        flooded: list[float] = []
        ratios: list[float] = []
        counts = {"accepted": 0, "refused": 0}
        async with self.client() as quiet:
            for _ in range(rounds):
                calm = await paced(quiet)
                flooder = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bench.flood", self.stack.api_addr, made["key"],
                    str(seconds + 1), "8", stdout=asyncio.subprocess.PIPE, cwd=CHECKOUT,
                )  # fmt: skip
                await asyncio.sleep(0.5)  # the flood is on before the quiet owner measures
                noisy = await paced(quiet)
                out, _ = await flooder.communicate()
                for name, n in json.loads(out).items():
                    counts[name] += n
                alone += calm
                flooded += noisy
                ratios.append(pct(noisy, 0.99) / pct(calm, 0.99))
        emit(
            "noisy_neighbour_p99_ratio",
            pct(flooded, 0.99) / pct(alone, 0.99),
            "x",
            2.0,
            higher_is_better=False,
            rounds=rounds,
            round_ratios=[round(r, 2) for r in ratios],
            quiet_calls=len(alone) + len(flooded),
            quiet_p50_alone_ms=round(pct(alone, 0.5) * 1e3, 2),
            quiet_p50_flooded_ms=round(pct(flooded, 0.5) * 1e3, 2),
            quiet_p99_alone_ms=round(pct(alone, 0.99) * 1e3, 2),
            quiet_p99_flooded_ms=round(pct(flooded, 0.99) * 1e3, 2),
            noisy_accepted_per_s=round(counts["accepted"] / (rounds * (seconds + 1)), 1),
            noisy_refused_per_s=round(counts["refused"] / (rounds * (seconds + 1)), 1),
        )

    def watch_keys(self, owners: int) -> list[str]:
        """API keys of `owners` owners of their own, made once per bench."""
        while len(self._watch_keys) < owners:
            self._watch_keys.append(self.stack.create_key(f"watcher{len(self._watch_keys)}"))
        return self._watch_keys[:owners]

    async def watch_fanout(self) -> None:
        """Many WatchJob streams on one API process: its memory, and how fast a change
        reaches every stream. Each of 100 jobs has streams/100 watchers; all are cancelled
        at once and the time to each stream's final message is measured. The streams are
        spread over one owner per STREAMS_PER_OWNER, as many users' would be (an owner may
        hold CONVEYOR_MAX_STREAMS_PER_OWNER, 2,000, on one api process). The same client
        then runs against the floor (`bench.floor`: one canned answer per stream, the
        final one when its job is cancelled there), beside it."""
        streams = self.n(10000)
        owners = -(-streams // STREAMS_PER_OWNER)
        keys = self.watch_keys(owners)
        api = next(s for s in self.stack.services if s.name == "api")
        proc = psutil.Process(api.proc.pid)
        owned = [AsyncClient(self.stack.api_addr, api_key=key) for key in keys]
        async with contextlib.AsyncExitStack() as stack:
            for client in owned:
                await stack.enter_async_context(client)
            jobs = [(await owned[i % owners].submit("noop", queue="parked")).id for i in range(100)]
            rss_before = proc.memory_info().rss
            conveyor = await _fan_out(self.stack.api_addr, streams, keys, jobs, owned, proc)
        floor_jobs = [str(uuid.uuid4()) for _ in range(100)]
        async with AsyncClient(self.servers.floor_addr, api_key=self.key) as canceller:
            floor = await _fan_out(
                self.servers.floor_addr, streams, keys, floor_jobs, [canceller], self.servers.floor
            )
        emit(
            "watch_streams_api_rss",
            conveyor.rss / 2**20,
            "MiB",
            1024,
            higher_is_better=False,
            streams=streams,
            failed_streams=len(conveyor.failed),
            failures=sorted(set(conveyor.failed)),
            rss_before_mib=round(rss_before / 2**20, 1),
            floor_rss_mib=round(floor.rss / 2**20, 1),
            floor_failed_streams=len(floor.failed),
        )
        emit(
            "watch_event_p99",
            conveyor.p99_ms,
            "ms",
            50,
            higher_is_better=False,
            streams=streams,
            p50_ms=conveyor.p50_ms,
            # Server CPU per stream opened while they open, and per final message of the
            # cancels: what contention on a shared machine moves far less than latencies.
            api_open_cpu_us_per_stream=conveyor.open_cpu_us,
            api_cancel_cpu_us_per_message=conveyor.cancel_cpu_us,
            client_cancel_cpu_us_per_message=conveyor.client_cancel_cpu_us,
            floor_p99_ms=floor.p99_ms,
            floor_p50_ms=floor.p50_ms,
            floor_open_cpu_us_per_stream=floor.open_cpu_us,
            floor_cancel_cpu_us_per_message=floor.cancel_cpu_us,
            floor_client_cancel_cpu_us_per_message=floor.client_cancel_cpu_us,
        )

    async def search_latency(self) -> None:
        """ListJobs filters on a 1,000,000-job table (scaled) of a database of its own: p99
        of label and payload-equality queries, and what a payload index costs a submit
        (see bench.search)."""
        url = self.stack.env["CONVEYOR_DATABASE_URL"]
        rows = self.n(1_000_000)
        for figure in await search_figures(url, rows, self.servers.postgres):
            emit(figure.name, figure.value, figure.unit, figure.target, False, **figure.details)

    async def dependencies(self) -> None:
        """Issue 25: a job's wait after its last dependency ended (pairs, a fan-in and a
        fan-out of 10,000), and the CPU a dependency adds (see bench.workflows)."""
        for figure in await workflow_figures(self):
            emit(figure.name, figure.value, figure.unit, figure.target, False, **figure.details)

    async def reconcile_pass(self) -> None:
        """One reconciler pass over every job the other workloads left (finished and not):
        how fast the walk by primary key reads the table and checks Redis."""
        url = self.stack.env["CONVEYOR_DATABASE_URL"]
        settings = Settings(database_url=url, redis_url=self.stack.env["CONVEYOR_REDIS_URL"])
        db = Database(url)
        redis = connect(settings.redis_url, cluster=settings.redis_cluster)
        store = JobStore(db)
        try:
            start = time.perf_counter()
            reconciler = Reconciler(store, RedisQueue(redis, settings), settings, QueueStore(db))
            stats = await reconciler.reconcile()
            elapsed = time.perf_counter() - start
            async with db.engine.connect() as conn:
                rows = (await conn.execute(text("SELECT count(*) FROM jobs"))).scalar_one()
        finally:
            await store.close()
            await redis.aclose()
            await db.close()
        emit(
            "reconcile_pass",
            rows / elapsed,
            "rows/s",
            None,
            rows=rows,
            unfinished_checked=stats.checked,
            changed=stats.changed,
            seconds=round(elapsed, 2),
        )

    async def bundle_memory(self) -> None:
        """files.bundle of 1 GiB (scaled) from S3 to S3: the worker's peak RSS."""
        found = await bundle_rss(
            self.stack.env, self.stack.logs / "bundle", self.key, max(int(1024 * self.scale), 64)
        )
        emit(
            "bundle_1gib_worker_peak_rss",
            found["rss_peak_mib"],
            "MiB",
            256,
            higher_is_better=False,
            **found,
        )

    async def startup(self, starts: int = 5) -> None:
        """Start-up (issue 19): a cold import of the api's modules in a new interpreter, and
        `conveyor api` spawned → health SERVING (the readiness probe of `conveyor dev`) →
        a SubmitJob answered; the median of `starts` of each, beside the running stack."""
        imports = [await asyncio.to_thread(_cold_import_seconds) for _ in range(starts)]
        serving, submitted, cpu = [], [], []
        for _ in range(starts):
            port = free_port()
            started = time.monotonic()
            api = self.stack.spawn(
                "api",
                env={
                    "CONVEYOR_API_ADDR": f"127.0.0.1:{port}",
                    "CONVEYOR_DOWNLOAD_ADDR": f"127.0.0.1:{free_port()}",
                },
            )
            if not await asyncio.to_thread(wait_serving, api.addr, 30, tls=False):
                raise RuntimeError(f"the api did not start:\n{api.tail()}")
            serving.append(time.monotonic() - started)
            times = psutil.Process(api.proc.pid).cpu_times()
            cpu.append(times.user + times.system)
            async with AsyncClient(api.addr, api_key=self.key, tls=False) as client:
                await client.submit("noop", queue="parked")
            submitted.append(time.monotonic() - started)
            api.stop()
        emit(
            "startup_cold_import",
            statistics.median(imports),
            "s",
            None,
            higher_is_better=False,
            each=[round(x, 3) for x in imports],
        )
        emit(
            "startup_api_serving",
            statistics.median(serving),
            "s",
            1.5,
            higher_is_better=False,
            each=[round(x, 3) for x in serving],
            submit_answered_s=round(statistics.median(submitted), 3),
            cpu_s_at_serving=round(statistics.median(cpu), 3),
        )

    async def idle_cpu(self, seconds: float = 5.0) -> None:
        """CPU of every service process with empty queues (no polling: all should sleep)."""
        extra = [
            self.stack.start("worker", env=self.stack.worker_env()),
            self.stack.start("scheduler"),
        ]
        # The scheduler's first reconcile pass (Redis has no epoch marker yet) walks every
        # job the other workloads left; idleness is measured after it.
        for _ in range(600):  # the marker appears when that pass starts (no push for it)
            if self.redis.exists(EPOCH_KEY):
                break
            await asyncio.sleep(0.1)
        alive = [s for s in self.stack.services if s.proc.poll() is None]
        # By role (api, worker, scheduler), so that runs line up; a second of a role by index.
        procs: dict[str, psutil.Process] = {}
        for i, service in enumerate(alive):
            name = service.name if service.name not in procs else f"{service.name}{i}"
            procs[name] = psutil.Process(service.proc.pid)
        for proc in procs.values():  # that pass, and each process's start-up, are over
            await settled(proc)
        before = {n: p.cpu_times() for n, p in procs.items()}
        await asyncio.sleep(seconds)
        for name, proc in procs.items():
            emit(
                f"idle_cpu_{name}",
                cpu_share(proc, before[name], seconds),
                "%",
                1.0,
                higher_is_better=False,
                rss_mib=round(proc.memory_info().rss / 2**20, 1),
            )
        for service in extra:
            service.stop()

    async def idle_cluster_worker(self, queues: int = 20, seconds: float = 60.0) -> None:
        """CPU of an idle worker serving `queues` queues, on a Redis Cluster of 3 primaries
        (the queues on every slot they hash to: one blocking wait per slot, see
        `conveyor.worker.wakes`) and on the bench's single Redis (one BLPOP over all), over
        `seconds` each once it has settled. Target: under 1 % of a core (issue 22)."""
        names = ",".join(f"idle-{i}" for i in range(queues))
        cluster = EmbeddedRedisCluster(self.stack.logs / "idle-cluster")
        await asyncio.to_thread(cluster.start)
        shapes = {
            "cluster": {"CONVEYOR_REDIS_URL": cluster.url, "CONVEYOR_REDIS_CLUSTER": "true"},
            "single": {},
        }
        try:
            for shape, env in shapes.items():
                worker = self.stack.start(
                    "worker", "--queues", names, env={**self.stack.worker_env(), **env}
                )
                proc = psutil.Process(worker.proc.pid)
                await settled(proc)
                before = proc.cpu_times()
                await asyncio.sleep(seconds)
                emit(
                    f"idle_worker_{queues}_queues_{shape}",
                    cpu_share(proc, before, seconds),
                    "%",
                    1.0,
                    higher_is_better=False,
                    seconds=seconds,
                    blocked_waits=_blocked_clients(cluster) if shape == "cluster" else None,
                    rss_mib=round(proc.memory_info().rss / 2**20, 1),
                )
                worker.stop()
        finally:
            cluster.stop()


def _blocked_clients(cluster: EmbeddedRedisCluster) -> int:
    """Clients in a blocking command on the cluster's primaries now."""
    total = 0
    for node in cluster.primaries():
        with cluster.client(node) as client:
            total += int(client.info("clients")["blocked_clients"])
    return total


def _cold_import_seconds() -> float:
    """Seconds for a new interpreter to import what `conveyor api` imports before it serves
    (the `conveyor` command, the api's modules and the built-in handlers), with the
    collector paused as `conveyor api` has it. It exits at once (`os._exit`): tearing
    those modules down again is no part of a start."""
    probe = (
        "import gc; gc.disable()\n"
        "import conveyor.cli.app, conveyor_api.__main__\n"
        "from conveyor.handlers import load_modules; load_modules([])\n"
        "import os; os._exit(0)\n"
    )
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)
    return time.monotonic() - started


async def cluster_drain(bench: Bench, name: str, queues: int, shards: int = 1) -> None:
    """Issue 22: `queues` queues of `shards` shards each, on different primaries of a fresh
    Redis Cluster (3 primaries, 3 replicas; `bench.cluster`; a sharded queue's shards on
    different primaries), each filled with 20,000 no-op jobs (scaled) and drained by a
    worker of its own per shard (64 slots, as drain1), all at once: jobs/s over every job,
    and CPU µs per job of the api, each worker, PostgreSQL and every Redis node.
    drain_noop_1_worker is the same drain on the single Redis.

    Then the busiest primary's CPU µs per job, with the rate at which it would fill its
    core: what bounds the drain when each primary has a core of its own (this machine's 2
    cores run everything, so jobs/s cannot show it)."""
    with ClusterStack(bench.stack.env, bench.stack.logs) as cluster:
        names = [cluster.queue_apart(shards)] if shards > 1 else cluster.queues_apart(queues)
        drained = await cluster.drain(bench, names, bench.n(20000), shards)
    emit(name, drained.rate, "jobs/s", None, **drained.details())
    busiest = drained.busiest_primary_us
    emit(f"{name}_busiest_primary", busiest, "us/job", None, higher_is_better=False,
         redis_bound_jobs_per_s=round(1e6 / busiest), note=NOTE)  # fmt: skip


# Every workload, in the order they run. The backlog (a million jobs left in Redis and the
# database) goes last, so it weighs on no other figure; the soak only runs when asked for.
WORKLOADS: dict[str, Callable[[Bench], Awaitable[None]]] = {
    "submit_sequential": Bench.submit_sequential,
    "submit_concurrent": Bench.submit_concurrent,
    "submit_sdk_concurrent": Bench.submit_sdk_concurrent,
    "submit_payload": Bench.submit_payload,
    "submit_bulk": Bench.submit_bulk,
    "drain1": lambda b: b.drain(1, 7000),
    "drain2": lambda b: b.drain(2, 8000),
    "cluster_drain_one_queue": lambda b: cluster_drain(b, "cluster_drain_1_queue", 1),
    "cluster_drain_three_queues": lambda b: cluster_drain(b, "cluster_drain_3_queues", 3),
    "cluster_drain_one_queue_three_shards": lambda b: cluster_drain(
        b, "cluster_drain_1_queue_3_shards", 1, shards=3
    ),
    "drain_cpu": Bench.drain_cpu,
    "start_latency": Bench.start_latency,
    "get_polling": Bench.get_polling,
    "api_processes": Bench.api_processes,
    "noisy_neighbour": Bench.noisy_neighbour,
    "delayed_promotion": Bench.delayed_promotion,
    "scheduler_overhead": Bench.scheduler_overhead,
    "watch_fanout": Bench.watch_fanout,
    "reconcile_pass": Bench.reconcile_pass,
    "bundle_memory": Bench.bundle_memory,
    "isolation": Bench.isolation,
    "startup": Bench.startup,
    "idle_cpu": Bench.idle_cpu,
    "idle_cluster_worker": Bench.idle_cluster_worker,
    "backlog_memory": Bench.backlog_memory,
    "search_latency": Bench.search_latency,
    "dependencies": Bench.dependencies,
    "soak": Bench.soak,
}
DEFAULT_WORKLOADS = [name for name in WORKLOADS if name != "soak"]
# Deterministic sizes, or too long to repeat: measured once.
SINGLE_RUN = {"backlog_memory", "soak", "idle_cluster_worker", "search_latency"}


async def run_workload(bench: Bench, name: str, runs: int) -> None:
    """Run a workload `runs` times, sampling every service process meanwhile; then print
    its figures (see `report`)."""
    figures: list[list[Figure]] = []
    processes: list[dict[str, dict[str, float]]] = []
    for _ in range(runs):
        FIGURES.clear()
        with ProcessSampler(bench.stack) as sampler:
            await WORKLOADS[name](bench)
        figures.append(list(FIGURES))
        processes.append(sampler.report())
    report(figures, processes)


async def run(args: argparse.Namespace, folder: Path) -> None:
    # SIGTERM cancels the run, so the `finally` below still stops every server it started.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    pg = EmbeddedPostgres(folder / "pg", settings={"max_connections": "200"})
    redis_server = EmbeddedRedis(folder / "redis")
    pg.start()
    redis_server.start()
    migrate(pg.url)
    env = make_env(redis_server.url, pg.url)
    # Workers import `bench.handlers` from this checkout.
    env["PYTHONPATH"] = str(CHECKOUT)
    env.update(
        CONVEYOR_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        CONVEYOR_CLAIM_WAIT_SECONDS="5",
        CONVEYOR_LEASE_SECONDS="30",
        CONVEYOR_HEARTBEAT_SECONDS="0",
    )
    stack = Stack(env, folder)
    stack_floor = contextlib.ExitStack()
    try:
        stack.start("api")
        floor, floor_addr = stack_floor.enter_context(floor_server(env))
        bench = Bench(
            stack,
            stack.create_key("bench"),
            stack.create_key("ops", "admin"),
            Redis.from_url(redis_server.url, decode_responses=True),
            args.scale,
            Servers(
                redis=psutil.Process(redis_server.pid),
                postgres=psutil.Process(pg.pid),
                floor=floor,
                floor_addr=floor_addr,
            ),
        )
        bench.soak_seconds = args.soak_seconds
        bench.soak_hot_ttl = args.soak_hot_ttl
        wanted = args.only.split(",") if args.only else list(DEFAULT_WORKLOADS)
        unknown = set(wanted) - set(WORKLOADS)
        if unknown:
            raise SystemExit(f"unknown workloads: {sorted(unknown)}; known: {list(WORKLOADS)}")
        for name in [w for w in WORKLOADS if w in wanted]:
            await run_workload(bench, name, args.runs if name not in SINGLE_RUN else 1)
    finally:
        stack_floor.close()
        stack.stop_all()
        redis_server.stop()
        pg.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="Multiply every job count.")
    parser.add_argument("--only", default="", help="Comma-separated workloads to run.")
    parser.add_argument(
        "--runs", type=int, default=3, help="Runs of each workload (median, min and max)."
    )
    parser.add_argument(
        "--soak-seconds", type=float, default=600.0, help="How long `--only soak` runs."
    )
    parser.add_argument(
        "--soak-hot-ttl",
        type=float,
        default=180.0,
        help="CONVEYOR_HOT_STATE_TTL_SECONDS for the soak's worker (Redis is flat after it).",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
