"""What a call costs each process: CPU read from /proc around a client loop, beside the floor.

Rates move with whatever else the two cores are doing; the CPU a process spends per call
barely does. So every RPC row reports, besides calls/s, the CPU microseconds per call of the
API and of the floor (`bench.floor`, a bare grpc.aio server running the same loop), their
ratio, and the CPU per job of every process that took part (api, worker, Redis, PostgreSQL:
for PostgreSQL its backends too).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

ClientCall = Callable[[], Awaitable[Any]]


@dataclass
class Measured:
    """A figure a workload module measured, for `bench.__main__` to emit (lower is better)."""

    name: str
    value: float
    unit: str
    target: float | None
    details: dict[str, Any] = field(default_factory=dict)


def tree_cpu(proc: psutil.Process) -> float:
    """CPU seconds of `proc` and its live descendants (PostgreSQL's backends)."""
    total = 0.0
    for member in [proc, *proc.children(recursive=True)]:
        try:
            times = member.cpu_times()
        except psutil.Error:  # a backend that just exited
            continue
        total += times.user + times.system
    return total


class CpuMeter:
    """CPU seconds each named process tree used inside a `with` block."""

    def __init__(self, processes: Mapping[str, psutil.Process]) -> None:
        self.processes = dict(processes)
        self.used: dict[str, float] = {}
        self._before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {name: tree_cpu(proc) for name, proc in self.processes.items()}

    def start(self) -> CpuMeter:
        self._before = self._now()
        return self

    def stop(self) -> dict[str, float]:
        after = self._now()
        self.used = {name: after[name] - self._before[name] for name in after}
        return self.used

    def __enter__(self) -> CpuMeter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


async def timed_loop(call: ClientCall, count: int) -> tuple[float, list[float]]:
    latencies = []
    start = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - t0)
    return time.perf_counter() - start, latencies


async def concurrently(calls: list[ClientCall], count: int) -> tuple[float, list[float]]:
    """Run each call `count` times, all loops at once; wall time and every latency."""
    start = time.perf_counter()
    results = await asyncio.gather(*(timed_loop(call, count) for call in calls))
    return time.perf_counter() - start, [x for _, lat in results for x in lat]


@dataclass(frozen=True)
class Side:
    """One client loop against one server: calls, jobs, wall seconds, every latency, and
    the CPU seconds each measured process used meanwhile."""

    calls: int
    jobs: int
    seconds: float
    latencies: list[float]
    cpu_s: dict[str, float]

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def cpu_us_per_call(self, process: str) -> float:
        return self.cpu_s[process] / self.calls * 1e6

    def cpu_us_per_job(self) -> dict[str, float]:
        return {name: round(cpu / self.jobs * 1e6, 1) for name, cpu in self.cpu_s.items()}


async def measure(
    calls: list[ClientCall],
    per_loop: int,
    processes: Mapping[str, psutil.Process],
    jobs_per_call: int,
) -> Side:
    """`calls` run `per_loop` times each, all at once, after one warm-up call (a channel's
    first call pays for its connection)."""
    await calls[0]()
    with CpuMeter(processes) as meter:
        elapsed, latencies = await concurrently(calls, per_loop)
    made = len(calls) * per_loop
    return Side(made, made * jobs_per_call, elapsed, latencies, meter.used)


def versus_floor(conveyor: Side, floor: Side) -> dict[str, Any]:
    """The details every RPC row reports: latency, the floor's rate and latency, server CPU
    per call of the API and the floor and their ratio, and CPU per job by process."""
    api, bare = conveyor.cpu_us_per_call("api"), floor.cpu_us_per_call("api")
    return {
        "jobs": conveyor.jobs,
        "p50_ms": round(pct(conveyor.latencies, 0.5) * 1e3, 3),
        "p99_ms": round(pct(conveyor.latencies, 0.99) * 1e3, 3),
        "floor_rate": round(floor.rate, 1),
        "floor_p50_ms": round(pct(floor.latencies, 0.5) * 1e3, 3),
        "api_cpu_us_per_call": round(api, 1),
        "floor_cpu_us_per_call": round(bare, 1),
        "cpu_ratio": round(api / bare, 2) if bare else None,
        "cpu_us_per_job": conveyor.cpu_us_per_job(),
    }
