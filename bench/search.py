"""`search_latency`: ListJobs filters on a 1,000,000-job PostgreSQL table (issue 24).

The table is built by SQL (generate_series) in a database of its own beside the bench's:
jobs spread over 30 days with UUIDv7-shaped ids, eight owners, four queues and types,
realistic labels (team, env, customer) and payloads (customer id, region, a nested order,
an email, tags). Then `JobStore.list_jobs` (page size 50) runs each filter with values that
vary per call, and the figures are p50/p99 of its latency:

- a label filter, as an admin and as one owner (served by the GIN index of 0009);
- a payload equality, without any index on payload, then with a GIN (jsonb_path_ops) one;
- what such an index costs a submit: single inserts and bulks of 1,000, with and without
  it (wall time per job, and PostgreSQL's CPU per job).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
import psycopg

from bench.cost import CpuMeter, Measured, pct
from conveyor.db import Database, JobStore, migrate
from conveyor.db.bulk import psycopg_dsn
from conveyor.jobs.filters import parse
from conveyor.jobs.model import FALLBACK_RETRY, JobDefaults, JobSpec, now_ms
from tests.processes import fresh_database

PAGE = 50
SAMPLES = 200
CUSTOMERS = 50_000
LABEL_CUSTOMERS = 5_000
SPAN_MS = 30 * 86_400_000
LABEL_TARGET_MS = 50.0
PAYLOAD_TARGET_MS = 200.0

# One row per i; ids are UUIDv7-shaped (48-bit ms time first), so id order is time order.
_FILL = """
INSERT INTO jobs (id, owner, type, queue, state, priority, payload, attempt, max_attempts,
  timeout_ms, progress, progress_message, error, request_hash, run_at, create_time,
  start_time, finish_time, fence, key_id, key_cap, trace_parent, shard, labels)
SELECT substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-7' || substr(m, 1, 3) || '-8'
    || substr(m, 4, 3) || '-' || substr(m, 7, 12),
  'owner-' || (i % 8),
  (ARRAY['email.send', 'csv.export', 'http.request', 'noop'])[1 + i % 4],
  (ARRAY['default', 'emails', 'exports', 'webhooks'])[1 + (i / 4) % 4],
  CASE WHEN i % 50 = 0 THEN 6 WHEN i % 97 = 0 THEN 2 ELSE 4 END,
  5,
  jsonb_build_object(
    'customer_id', i % %(customers)s,
    'region', (ARRAY['eu-west', 'us-east', 'ap-south'])[1 + i % 3],
    'order', jsonb_build_object('id', i, 'total', (i % 1000) * 1.25, 'currency', 'EUR'),
    'email', 'user' || (i % %(customers)s) || '@example.com',
    'tags', jsonb_build_array('bulk', 'priority-' || (i % 3))),
  1, 3, 60000, 100, '',
  CASE WHEN i % 50 = 0 THEN 'TimeoutError: timed out after 30s' ELSE '' END,
  m, t, t, t + 5, t + 250, 0, '', 0, '', 0,
  jsonb_build_object('team', 'team-' || (i % 20),
    'env', (ARRAY['prod', 'staging', 'dev'])[1 + i % 3],
    'customer', 'c-' || (i % %(label_customers)s))
FROM (
  SELECT i, t, lpad(to_hex(t), 12, '0') AS h, md5(i::text) AS m
  FROM (SELECT i, %(start)s::bigint + i * %(step)s::bigint AS t
        FROM generate_series(%(low)s::bigint, %(high)s::bigint) AS i) AS g
) AS s
"""
_PAYLOAD_INDEX = "CREATE INDEX ix_jobs_payload ON jobs USING gin (payload jsonb_path_ops)"


def _build(url: str, rows: int) -> float:
    """Fill the table (labels index dropped while loading, then built); seconds taken."""
    begin = time.perf_counter()
    start = now_ms() - SPAN_MS - 60_000
    step = max(SPAN_MS // rows, 1)
    with psycopg.connect(psycopg_dsn(url), autocommit=True) as conn:
        conn.execute("DROP INDEX IF EXISTS ix_jobs_labels")
        conn.execute("DROP INDEX IF EXISTS ix_jobs_payload")  # measured without, then with
        chunk = 100_000
        for low in range(1, rows + 1, chunk):
            numbers = {"customers": CUSTOMERS, "label_customers": LABEL_CUSTOMERS,
                       "start": start, "step": step, "low": low,
                       "high": min(low + chunk - 1, rows)}  # fmt: skip
            statement = _FILL
            for name, number in numbers.items():  # integers only: no parameters, so '%' is modulo
                statement = statement.replace(f"%({name})s", str(int(number)))
            conn.execute(statement.encode())
        conn.execute("CREATE INDEX ix_jobs_labels ON jobs USING gin (labels jsonb_path_ops)")
        conn.execute("VACUUM ANALYZE jobs")
    return time.perf_counter() - begin


async def _mib(db: Database, relation: str) -> float:
    async with db.engine.connect() as conn:
        size = await conn.exec_driver_sql(f"SELECT pg_relation_size('{relation}')")
        return round(int(size.scalar_one()) / 2**20, 1)


async def _latency(call: Callable[[int], Awaitable[int]]) -> dict[str, float]:
    """p50/p99 ms of `call(sample)` over SAMPLES calls (after 5 warm-up calls), and how many
    jobs a page held on average."""
    for warm in range(5):
        await call(10_000 + warm)
    times: list[float] = []
    found: list[int] = []
    for sample in range(SAMPLES):
        begin = time.perf_counter()
        found.append(await call(sample))
        times.append((time.perf_counter() - begin) * 1000)
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(pct(times, 0.99), 2),
        "mean_page": round(statistics.fmean(found), 1),
    }


async def _insert_cost(store: JobStore, postgres: psutil.Process) -> dict[str, float]:
    """Per job: wall ms of single-job inserts (each its own commit) and of bulks of 1,000,
    and PostgreSQL's CPU µs in each."""
    defaults = JobDefaults(3, 60_000, FALLBACK_RETRY)
    rng = random.Random(7)

    def job() -> Any:
        n = rng.randrange(CUSTOMERS)
        payload = {"customer_id": n, "region": "eu-west", "email": f"user{n}@example.com",
                   "order": {"id": rng.randrange(10**9), "total": 12.5, "currency": "EUR"},
                   "tags": ["bulk", "priority-1"]}  # fmt: skip
        return JobSpec(type="email.send", payload=payload).new_job(
            "owner-1", defaults=defaults, now=now_ms()
        )

    singles = 300
    with CpuMeter({"postgres": postgres}) as single_cpu:
        begin = time.perf_counter()
        for _ in range(singles):
            await store.insert([job()])
        single_s = time.perf_counter() - begin
    bulks = 10
    with CpuMeter({"postgres": postgres}) as bulk_cpu:
        begin = time.perf_counter()
        for _ in range(bulks):
            await store.insert([job() for _ in range(1000)])
        bulk_s = time.perf_counter() - begin
    return {
        "single_ms_per_job": round(single_s * 1000 / singles, 3),
        "single_postgres_cpu_us_per_job": round(single_cpu.used["postgres"] * 1e6 / singles, 1),
        "bulk_us_per_job": round(bulk_s * 1e6 / (bulks * 1000), 1),
        "bulk_postgres_cpu_us_per_job": round(bulk_cpu.used["postgres"] * 1e6 / (bulks * 1000), 1),
    }


async def search_figures(base_url: str, rows: int, postgres: psutil.Process) -> list[Measured]:
    """Build the table, measure, drop the database; the figures."""
    url = fresh_database(base_url, "conveyor_search")
    migrate(url)
    build_s = _build(url, rows)
    db = Database(url)
    store = JobStore(db)
    figures: list[Measured] = []
    common = {"rows": rows, "page_size": PAGE, "samples": SAMPLES, "build_s": round(build_s, 1),
              "table_mib": await _mib(db, "jobs"),
              "labels_index_mib": await _mib(db, "ix_jobs_labels")}  # fmt: skip

    async def query(
        name: str, shown: str, target: float, make: Callable[[int], tuple[str, str | None]]
    ) -> Measured:
        """The latency of listing with the filter (and owner) `make(sample)` gives."""

        async def call(sample: int) -> int:
            text, owner = make(sample)
            return len(await store.list_jobs(owner, filter=parse(text), limit=PAGE))

        found = await _latency(call)
        return Measured(name, found["p99_ms"], "ms", target, {**common, **found, "filter": shown})

    try:
        figures += [
            await query("search_label_admin_p99", 'labels.customer = "c-N"', LABEL_TARGET_MS,
                        lambda s: (f'labels.customer = "c-{s * 37 % LABEL_CUSTOMERS}"', None)),
            await query("search_label_owner_p99", "labels.customer = c-N (one owner's)",
                        LABEL_TARGET_MS,
                        lambda s: (f"labels.customer = c-{s * 41 % LABEL_CUSTOMERS}",
                                   f"owner-{s % 8}")),
            await query("search_label_common_p99", "labels.team = team-N labels.env = prod",
                        LABEL_TARGET_MS,
                        lambda s: (f"labels.team = team-{s % 20} labels.env = prod", None)),
        ]  # fmt: skip
        without = await _insert_cost(store, postgres)
        figures.append(
            await query("search_payload_no_index_p99", "payload.customer_id = N",
                        PAYLOAD_TARGET_MS,
                        lambda s: (f"payload.customer_id = {s * 53 % CUSTOMERS}", None))
        )  # fmt: skip
        async with db.engine.begin() as conn:
            await conn.exec_driver_sql(_PAYLOAD_INDEX)
            await conn.exec_driver_sql("ANALYZE jobs")
        indexed_figure = await query(
            "search_payload_gin_index_p99", "payload.customer_id = N", PAYLOAD_TARGET_MS,
            lambda s: (f"payload.customer_id = {s * 59 % CUSTOMERS}", None),
        )  # fmt: skip
        indexed_figure.details["index"] = "gin (payload jsonb_path_ops)"
        indexed_figure.details["index_mib"] = await _mib(db, "ix_jobs_payload")
        indexed = await _insert_cost(store, postgres)
        extra = indexed["bulk_postgres_cpu_us_per_job"] - without["bulk_postgres_cpu_us_per_job"]
        figures += [
            indexed_figure,
            Measured("search_payload_index_insert_cost", round(extra, 1),
                         "postgres_cpu_us/job", None,
                         {"without_index": without, "with_payload_index": indexed}),
        ]  # fmt: skip
    finally:
        await store.close()
        await db.close()
    fresh_database(base_url, "conveyor_search")  # leaves an empty database: frees the disk
    return figures
