"""Issue 25's figures: how long a job waits once its last dependency has ended, and what
a dependency adds to a job's path.

- **Hop**: parent -> child pairs submitted at a steady rate; per pair, the child's start
  less the parent's finish (both from the database, in ms): p50 and p99.
- **Fan-in**: one job waiting for 10,000 parents (the worker paused while they are
  submitted, so every one ends after the child waits); the child's start less the last
  parent's finish.
- **Fan-out**: 10,000 children of one parent; the first child's start less the parent's
  finish (the release of all 10,000 is one transaction), and when the last one started
  (bound by the worker's rate, not by the release).
- **Cost**: CPU per job of every process (api, worker, Redis, PostgreSQL), from submit to
  the last job's end, for independent jobs and for the same number of jobs as parent ->
  child pairs; the difference per dependency.

The target (p99 under 50 ms from the last parent's end to the child's start) is the
issue's; a 64-slot worker runs the jobs.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import psycopg

from bench.cluster import drain_worker
from bench.cost import CpuMeter, Measured, pct
from conveyor.client import AsyncClient, submit_request
from conveyor.db.bulk import psycopg_dsn
from conveyor.v1 import job_service_pb2 as pb
from tests.processes import Service

if TYPE_CHECKING:
    from bench.__main__ import Bench

QUEUE = "workflows"
TARGET_MS = 50.0
BULK = 1000


def _request(requests: Sequence[int] = (), after: Sequence[str] = ()) -> pb.SubmitJobRequest:
    request = submit_request("noop", queue=QUEUE)
    request.depends_on_requests.extend(requests)
    request.depends_on.extend(after)
    return request


class _Times:
    """Start and finish times (ms) of jobs, read from the database once they have ended."""

    def __init__(self, url: str) -> None:
        self.dsn = psycopg_dsn(url)

    async def ended(self, ids: Sequence[str], within: float = 300.0) -> dict[str, tuple[int, int]]:
        """Wait (the bench's own polling, outside what it measures) until every job has
        succeeded; their (start_time, finish_time)."""
        deadline = time.monotonic() + within
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            while True:
                cur = await conn.execute(
                    "SELECT id, start_time, finish_time FROM jobs WHERE id = ANY(%s) AND state = 4",
                    (list(ids),),
                )
                rows = await cur.fetchall()
                if len(rows) == len(ids):
                    return {r[0]: (int(r[1]), int(r[2])) for r in rows}
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(ids) - len(rows)} of {len(ids)} jobs not done")
                await asyncio.sleep(0.1)


async def _submit(client: AsyncClient, requests: list[pb.SubmitJobRequest]) -> list[str]:
    ids: list[str] = []
    for start in range(0, len(requests), BULK):
        ids += [j.id for j in await client.submit_many(requests[start : start + BULK])]
    return ids


async def workflow_figures(bench: Bench) -> list[Measured]:
    """Start a worker of the workflows queue, measure, stop it; the figures."""
    worker = drain_worker(bench.stack, QUEUE)
    times = _Times(bench.stack.env["CONVEYOR_DATABASE_URL"])
    try:
        async with bench.client() as client:
            figures = await _hops(bench, client, times)
            figures += await _fan_in(bench, client, times, worker)
            figures += await _fan_out(bench, client, times, worker)
            figures += await _cost(bench, client, times, worker)
    finally:
        worker.stop()
    return figures


async def _hops(
    bench: Bench, client: AsyncClient, times: _Times, rate: float = 50
) -> list[Measured]:
    pairs = bench.n(500)
    made: list[tuple[str, str]] = []
    begin = time.perf_counter()
    for i in range(pairs):
        delay = begin + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        parent, child = await client.submit_many([_request(), _request(requests=[0])])
        made.append((parent.id, child.id))
    ended = await times.ended([i for pair in made for i in pair])
    hops = [ended[c][0] - ended[p][1] for p, c in made]
    details = {"pairs": pairs, "rate_pairs_per_s": rate, "max_ms": max(hops)}
    return [
        Measured("dependency_hop_p50", statistics.median(hops), "ms", None, details),
        Measured("dependency_hop_p99", pct(hops, 0.99), "ms", TARGET_MS, details),
    ]


async def _fan_in(
    bench: Bench, client: AsyncClient, times: _Times, worker: Service
) -> list[Measured]:
    parents = bench.n(10_000)
    await bench.control([worker], "PauseWorker")
    ids = await _submit(client, [_request() for _ in range(parents)])
    [child] = await client.submit_many([_request(after=ids)])
    await bench.control([worker], "ResumeWorker")
    ended = await times.ended([*ids, child.id])
    last = max(ended[i][1] for i in ids)
    waited = ended[child.id][0] - last
    return [Measured("fan_in_10000_last_parent_to_child_start", waited, "ms", TARGET_MS,
                     {"parents": parents})]  # fmt: skip


async def _fan_out(
    bench: Bench, client: AsyncClient, times: _Times, worker: Service
) -> list[Measured]:
    children = bench.n(10_000)
    await bench.control([worker], "PauseWorker")
    [parent] = await client.submit_many([_request()])
    ids = await _submit(client, [_request(after=[parent.id]) for _ in range(children)])
    await bench.control([worker], "ResumeWorker")
    ended = await times.ended([parent.id, *ids])
    finished = ended[parent.id][1]
    starts = sorted(ended[i][0] - finished for i in ids)
    details = {"children": children, "last_child_started_ms": starts[-1],
               "children_per_s": round(children / max(starts[-1], 1) * 1000)}  # fmt: skip
    return [Measured("fan_out_10000_parent_to_first_child_start", starts[0], "ms", TARGET_MS,
                     details)]  # fmt: skip


async def _cost(
    bench: Bench, client: AsyncClient, times: _Times, worker: Service
) -> list[Measured]:
    jobs = bench.n(4000) // 2 * 2
    used: dict[str, float] = {}
    for label, requests in (
        ("independent", [_request() for _ in range(jobs)]),
        # Each odd job waits for the one before it, in the same bulk (BULK is even).
        ("pairs", [_request(requests=[(i - 1) % BULK] if i % 2 else []) for i in range(jobs)]),
    ):
        meter = CpuMeter(bench.processes(worker)).start()
        ids = await _submit(client, requests)
        await times.ended(ids)
        used[label] = sum(meter.stop().values()) / jobs * 1e6
    extra = (used["pairs"] - used["independent"]) * 2  # one dependency per two jobs
    return [Measured("dependency_cpu_us", round(extra, 1), "µs per dependency", None,
                     {"jobs": jobs, "independent_cpu_us_per_job": round(used["independent"], 1),
                      "pairs_cpu_us_per_job": round(used["pairs"], 1)})]  # fmt: skip
