"""Metrics for Prometheus: each service serves its own on `/metrics` (CONVEYOR_METRICS_ADDR).

Each process has its own registry (process CPU, memory and GC come with it) holding only
the metrics its part can know, so a worker does not show an api's zeros:

- **api**: `conveyor_jobs_submitted_total{queue,type}`, `conveyor_rate_limited_total{kind}`,
  `conveyor_watch_streams`, `conveyor_watch_conversions_total`,
  `conveyor_job_outcomes_total{queue,type,outcome="cancelled"}` (a cancel is the api's
  write; a running handler it stops writes nothing),
  `conveyor_redis_writable` and `conveyor_enqueue_pending` (see `conveyor.api.pending_writes`),
  and the queue
  gauges, read from Redis when scraped:
  `conveyor_queue_depth`, `conveyor_queue_scheduled`, `conveyor_queue_running`,
  `conveyor_queue_oldest_age_seconds`, `conveyor_queue_paused` (all `{queue}`). Every api
  replica reports the same queue gauges: aggregate them with `max by (queue)`.
- **worker**: `conveyor_job_wait_seconds{queue,type}` (ready → claimed),
  `conveyor_job_run_seconds{queue,type,outcome}`,
  `conveyor_job_outcomes_total{queue,type,outcome}` (succeeded, retried, dead; counted
  once the database took the outcome), `conveyor_leases_reclaimed_total{queue}`,
  `conveyor_stale_writes_refused_total`, `conveyor_worker_running_jobs`,
  `conveyor_worker_concurrency`.
- **scheduler**: `conveyor_schedule_fires_total`, `conveyor_schedule_buckets_skipped_total`,
  `conveyor_retention_deleted_jobs_total`.

Users choose queue and type names, so labels are bounded by what the operator set up, not
by what users submit: `queue` is an existing queue (the default, one a worker serves or
served, one an admin configured) and `type` a known type (api: its own registry or one a
live worker announces; worker: one it has a handler for); any other name is counted under
`other` (`OTHER`, see `conveyor.api.known_names`). The queue gauges read existing queues only,
so a scrape costs the same however many names users made up.

Counters and histograms are updated where the event happens, on the event loop's thread,
without locks (`Counts`, `Histograms`); gauges that mirror state are computed at scrape
time, so an idle process does no work for them.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Gauge,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from conveyor.jobs.queues import QueueStats

log = logging.getLogger(__name__)

# The label value of every queue or type name that does not exist.
OTHER = "other"
DEFAULT_ADDRS = {
    "api": "127.0.0.1:9464",
    "worker": "127.0.0.1:9465",
    "scheduler": "127.0.0.1:9466",
}
SCRAPE_TIMEOUT_SECONDS = 5.0
# Seconds: from a millisecond handler to a long export.
RUN_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 3600)


def _registry() -> CollectorRegistry:
    """A process's registry: the default process, platform and GC collectors included."""
    registry = CollectorRegistry(auto_describe=True)
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


C = TypeVar("C", bound=Collector)


class _Metrics:
    def __init__(self) -> None:
        self.registry = _registry()

    def _add(self, collector: C) -> C:
        self.registry.register(collector)
        return collector


class Counts(Collector):
    """Counters by label values, for the hot path: a dict update, no lock.

    prometheus_client's own counters take a lock per increment (and `labels()` another),
    which came to about a tenth of a worker's CPU per no-op job. These are only ever
    updated from the service's event-loop thread; the scrape thread reads a copy, and
    copying a dict or list is atomic under the GIL.
    """

    def __init__(self, name: str, text: str, labels: Sequence[str] = ()) -> None:
        self.name, self.text, self.labels = name, text, list(labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, by: int = 1) -> None:
        values = self.values
        values[labels] = values.get(labels, 0) + by

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self.name, self.text, labels=self.labels)
        if not self.labels and not self.values:
            family.add_metric([], 0)
        for labels, count in list(self.values.items()):
            family.add_metric(list(labels), count)
        return [family]


class Histograms(Collector):
    """Histograms by label values, updated like `Counts` (loop thread, no lock). Each
    label set keeps a count per bucket (plus +Inf) and the sum; a scrape makes them
    cumulative."""

    def __init__(
        self, name: str, text: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.name, self.text, self.labels = name, text, list(labels)
        self.bounds = tuple(buckets)
        les: list[str] = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]
        self._les = [*les, "+Inf"]
        self.values: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        entry = self.values.get(labels)
        if entry is None:
            entry = self.values[labels] = [0.0] * (len(self.bounds) + 2)
        entry[bisect.bisect_left(self.bounds, value)] += 1  # the first bound >= value
        entry[-1] += value

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.text, labels=self.labels)
        for labels, entry in list(self.values.items()):
            counts = list(entry)
            cumulative = list(itertools.accumulate(counts[:-1]))
            family.add_metric(
                list(labels), list(zip(self._les, cumulative, strict=True)), sum_value=counts[-1]
            )
        return [family]


def _outcomes() -> Counts:
    return Counts(
        "conveyor_job_outcomes",
        "Outcomes written: succeeded, retried, dead (workers), cancelled (api).",
        ["queue", "type", "outcome"],
    )


class ApiMetrics(_Metrics):
    def __init__(self) -> None:
        super().__init__()
        self.submitted = self._add(
            Counts(
                "conveyor_jobs_submitted",
                "Jobs accepted (new, not idempotent repeats).",
                ["queue", "type"],
            )
        )
        self.rate_limited = self._add(
            Counts("conveyor_rate_limited", "Calls refused by an owner's rate limit.", ["kind"])
        )
        self.watch_streams = Gauge(
            "conveyor_watch_streams", "WatchJob streams open now.", registry=self.registry
        )
        self.watch_conversions = self._add(
            Counts(
                "conveyor_watch_conversions",
                "Job changes decoded and converted into WatchJob answers: a published change "
                "once per api process however many streams watch the job (see "
                "conveyor.api.feeds); a snapshot or catch-up once per stream that reads it.",
            )
        )
        self.outcomes = self._add(_outcomes())
        self.redis_writable = Gauge(
            "conveyor_redis_writable",
            "1 while Redis takes writes; 0 while it refuses them (out of memory, a read-only "
            "replica) or cannot be reached, as the health probe saw it.",
            registry=self.registry,
        )
        self.redis_writable.set(1)
        self.enqueue_pending = Gauge(
            "conveyor_enqueue_pending",
            "Jobs whose committed change (submit, replay, cancel) this api still owes Redis.",
            registry=self.registry,
        )

    def watch_queues(
        self,
        stats: Callable[[], Awaitable[Sequence[QueueStats]]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Serve the queue gauges, read through `stats` on `loop` at each scrape."""
        self.registry.register(QueueCollector(stats, loop))


class WorkerMetrics(_Metrics):
    def __init__(self) -> None:
        super().__init__()
        self.wait = self._add(
            Histograms(
                "conveyor_job_wait_seconds",
                "From ready (submitted, due or retry time) to claimed.",
                ["queue", "type"],
                WAIT_BUCKETS,
            )
        )
        self.run = self._add(
            Histograms(
                "conveyor_job_run_seconds",
                "How long attempts ran, by outcome.",
                ["queue", "type", "outcome"],
                RUN_BUCKETS,
            )
        )
        self.outcomes = self._add(_outcomes())
        self.reclaimed = self._add(
            Counts(
                "conveyor_leases_reclaimed",
                "Jobs claimed again after their lease expired.",
                ["queue"],
            )
        )
        self.stale_writes = self._add(
            Counts(
                "conveyor_stale_writes_refused",
                "Outcomes of lost attempts that the database's fence refused.",
            )
        )
        self.stale_claims = self._add(
            Counts(
                "conveyor_stale_claims_dropped",
                "Claims dropped before their handler started: their lease had run out "
                "while the worker stalled (frozen, paused, starved).",
                ["queue"],
            )
        )
        self.running = Gauge(
            "conveyor_worker_running_jobs", "Handlers running now.", registry=self.registry
        )
        self.concurrency = Gauge(
            "conveyor_worker_concurrency",
            "Handlers this worker runs at once.",
            registry=self.registry,
        )
        self.overruns = self._add(
            Counts(
                "conveyor_handler_overruns",
                "Thread-mode handlers that ran on past their attempt's timeout or cancel.",
            )
        )
        self.overrunning = Gauge(
            "conveyor_worker_overrunning_handlers",
            "Thread-mode handlers running past their attempt's end now; each holds a slot.",
            registry=self.registry,
        )

    def watch_processes(self, started: Callable[[], int], killed: Callable[[], int]) -> None:
        """Count the children of process isolation, read at each scrape."""
        for collector in (
            _CountCollector(
                "conveyor_isolated_processes_started",
                "Children forked for process-isolated attempts.",
                started,
            ),
            _CountCollector(
                "conveyor_isolated_processes_killed",
                "Process-isolated attempts whose child was killed or died before reporting.",
                killed,
            ),
        ):
            self.registry.register(collector)

    def claimed(self, queue: str, job_type: str, waited_seconds: float) -> None:
        self.wait.observe((queue, job_type), waited_seconds)

    def ended(self, queue: str, job_type: str, outcome: str, ran_seconds: float) -> None:
        """An attempt's outcome was written."""
        key = (queue, job_type, outcome)
        self.outcomes.inc(*key)
        self.run.observe(key, ran_seconds)


class SchedulerMetrics(_Metrics):
    """Counters the emitter and sweeper already keep, read at scrape time."""

    def __init__(
        self,
        fires: Callable[[], int] = lambda: 0,
        deleted: Callable[[], int] = lambda: 0,
        skipped: Callable[[], int] = lambda: 0,
    ) -> None:
        super().__init__()
        for collector in (
            _CountCollector(
                "conveyor_schedule_fires", "Schedule buckets that became a job here.", fires
            ),
            # Missed fires dropped on purpose: the footprint of a scheduler outage (or of
            # schedules paused past their buckets' misfire grace), which no job shows.
            _CountCollector(
                "conveyor_schedule_buckets_skipped",
                "Missed schedule buckets that their catch-up policy left without a job.",
                skipped,
            ),
            _CountCollector(
                "conveyor_retention_deleted_jobs", "Expired jobs deleted by this sweeper.", deleted
            ),
        ):
            self.registry.register(collector)


class _CountCollector(Collector):
    def __init__(self, name: str, text: str, read: Callable[[], int]) -> None:
        self._name, self._text, self._read = name, text, read

    def collect(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self._name, self._text, value=self._read())]


class QueueCollector(Collector):
    """The queue gauges, read from Redis when Prometheus scrapes.

    The scrape runs on the metrics server's thread; the read runs on the service's event
    loop (its connection pool), and a scrape that cannot get an answer in time reports no
    queue gauges rather than stale ones.
    """

    def __init__(
        self,
        stats: Callable[[], Awaitable[Sequence[QueueStats]]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._stats = stats
        self._loop = loop

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        try:
            found = asyncio.run_coroutine_threadsafe(self._read(), self._loop).result(
                SCRAPE_TIMEOUT_SECONDS
            )
        except Exception as exc:
            log.warning("metrics: queue gauges unavailable: %s", exc)
            return []
        depth, scheduled, running, oldest, paused = families
        for stats in found:
            name = [stats.settings.name]
            depth.add_metric(name, stats.queued)
            scheduled.add_metric(name, stats.scheduled + stats.retrying)
            running.add_metric(name, stats.running)
            oldest.add_metric(name, (stats.oldest_wait_ms or 0) / 1000)
            paused.add_metric(name, 1.0 if stats.settings.paused else 0.0)
        return families

    async def _read(self) -> Sequence[QueueStats]:
        return await self._stats()

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        def gauge(name: str, text: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=["queue"])

        return [
            gauge("conveyor_queue_depth", "Jobs ready to run, waiting for a worker."),
            gauge("conveyor_queue_scheduled", "Jobs waiting for their run or retry time."),
            gauge("conveyor_queue_running", "Jobs running now (leased)."),
            gauge("conveyor_queue_oldest_age_seconds", "How long the oldest ready job waited."),
            gauge("conveyor_queue_paused", "1 while the queue is paused."),
        ]


class MetricsServer:
    """Prometheus text on http://addr/metrics, served from a thread."""

    def __init__(self, registry: CollectorRegistry, addr: str) -> None:
        host, _, port = addr.rpartition(":")
        self.host = host.strip("[]") or "0.0.0.0"
        self.server, self._thread = start_http_server(int(port), self.host, registry=registry)
        self.port: int = self.server.server_port

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(registry: CollectorRegistry, addr: str, service: str) -> MetricsServer | None:
    """Serve `registry` where CONVEYOR_METRICS_ADDR says (see `DEFAULT_ADDRS`); None when
    it is `off`, or when the port is taken: metrics are worth a warning, not an outage."""
    if addr.strip().lower() == "off":
        return None
    where = addr.strip() or DEFAULT_ADDRS[service]
    try:
        server = MetricsServer(registry, where)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        log.warning(
            "metrics not served: cannot listen on %s (CONVEYOR_METRICS_ADDR): %s",
            where,
            reason.lower(),
        )
        return None
    log.info("%s metrics on http://%s:%d/metrics", service, server.host, server.port)
    return server


def catalogue() -> dict[str, str]:
    """Every Conveyor series any service exposes, by the name PromQL uses (`_total` for
    counters; histograms by family), with its type: what dashboards and scalers may query."""
    api = ApiMetrics()
    families = [
        *api.registry.collect(),
        *QueueCollector._families(),
        *WorkerMetrics().registry.collect(),
        *SchedulerMetrics().registry.collect(),
    ]
    return {
        f"{m.name}_total" if m.type == "counter" else m.name: m.type
        for m in families
        if m.name.startswith("conveyor_")
    }


def metric_names(registry: CollectorRegistry) -> set[str]:
    """The names a registry exposes (Prometheus adds _total, _bucket and so on to these)."""
    return {metric.name for metric in registry.collect()}


__all__ = [
    "OTHER",
    "ApiMetrics",
    "MetricsServer",
    "SchedulerMetrics",
    "WorkerMetrics",
    "metric_names",
    "serve_metrics",
]
