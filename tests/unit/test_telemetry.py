"""Telemetry set-up: which OTEL_* settings turn tracing on (and which are refused), where
metrics are served (and that a taken port is a warning, not a crash), what a scrape shows
when Redis does not answer, and what a JSON log line carries."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading
import urllib.request
from collections.abc import Iterator, Sequence

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from conveyor.config import ConfigurationError
from conveyor.jobs.queues import QueueStats
from conveyor.telemetry import bind_job, configure_logging, tracing
from conveyor.telemetry.metrics import (
    ApiMetrics,
    Counts,
    Histograms,
    QueueCollector,
    SchedulerMetrics,
    WorkerMetrics,
    metric_names,
    serve_metrics,
)

OTEL = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
)


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in OTEL:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, None),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, None),
    ],
)
def test_tracing_is_on_only_when_an_exporter_is_named(
    otel_env: pytest.MonkeyPatch, env: dict[str, str], wanted: str | None
) -> None:
    for name, value in env.items():
        otel_env.setenv(name, value)
    assert tracing._wanted() == wanted


def test_unset_tracing_installs_nothing(otel_env: pytest.MonkeyPatch) -> None:
    assert tracing.configure_tracing("conveyor-test") is False
    assert not tracing.enabled()
    assert tracing.server_interceptors() == ()
    assert tracing.aio_client_interceptors() == []


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("OTEL_TRACES_EXPORTER", "zipkin", "OTEL_TRACES_EXPORTER"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf", "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ],
)
def test_unsupported_exporters_are_configuration_errors(
    otel_env: pytest.MonkeyPatch, name: str, value: str, named: str
) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    otel_env.setenv(name, value)
    with pytest.raises(ConfigurationError, match=named):
        tracing.configure_tracing("conveyor-test")
    assert not tracing.enabled()


# -- metrics ------------------------------------------------------------------------------


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return str(reply.read().decode())


def test_each_service_exposes_only_its_own_metrics() -> None:
    api, worker, scheduler = ApiMetrics(), WorkerMetrics(), SchedulerMetrics(fires=lambda: 3)
    assert {"conveyor_jobs_submitted", "conveyor_watch_streams"} <= metric_names(api.registry)
    assert "conveyor_job_run_seconds" not in metric_names(api.registry)
    assert {"conveyor_job_run_seconds", "conveyor_stale_writes_refused"} <= metric_names(
        worker.registry
    )
    assert scheduler.registry.get_sample_value("conveyor_schedule_fires_total") == 3
    for metrics in (api, worker, scheduler):
        assert "process_resident_memory_bytes" in metric_names(metrics.registry)


def test_lock_free_histograms_and_counts_expose_what_prometheus_client_would() -> None:
    """Counts and Histograms replace prometheus_client's locked metrics on the hot path:
    their exposition must be the same, bucket for bucket."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    bounds = (0.01, 0.1, 1.0)
    histogram = Histograms("t_seconds", "t", ["queue"], bounds)
    counts = Counts("t_events", "e", ["queue"])
    ours.register(histogram)
    ours.register(counts)
    reference = Histogram("t_seconds", "t", ["queue"], buckets=bounds, registry=theirs)
    reference_counts = Counter("t_events", "e", ["queue"], registry=theirs)
    for value in (0.0, 0.01, 0.05, 0.1, 0.5, 1.0, 7.0, 0.003):
        queue = "a" if value < 0.5 else "b"
        histogram.observe((queue,), value)
        reference.labels(queue).observe(value)
        counts.inc(queue)
        reference_counts.labels(queue).inc()

    def samples(registry: CollectorRegistry) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
        return {
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for family in registry.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        }

    assert samples(ours) == samples(theirs)
    assert ("t_seconds_bucket", (("le", "0.01"), ("queue", "a")), 3.0) in samples(ours)


def test_metrics_are_served_and_a_taken_port_is_only_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = WorkerMetrics()
    metrics.ended("default", "noop", "succeeded", 0.002)
    server = serve_metrics(metrics.registry, "127.0.0.1:0", "worker")
    assert server is not None
    try:
        text = _get(f"http://127.0.0.1:{server.port}/metrics")
        assert (
            'conveyor_job_outcomes_total{outcome="succeeded",queue="default",type="noop"} 1.0'
            in text
        )
        with caplog.at_level(logging.WARNING):
            assert serve_metrics(metrics.registry, f"127.0.0.1:{server.port}", "worker") is None
        assert "metrics not served" in caplog.text
    finally:
        server.stop()
    assert serve_metrics(metrics.registry, "off", "worker") is None


def test_queue_gauges_are_left_out_when_redis_does_not_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def failing() -> Sequence[QueueStats]:
        raise ConnectionError("redis is down")

    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    try:
        runner.start()
        collector = QueueCollector(failing, loop)
        with caplog.at_level(logging.WARNING):
            assert list(collector.collect()) == []
        assert "queue gauges unavailable" in caplog.text
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(5)
        loop.close()


# -- logs ---------------------------------------------------------------------------------


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_log_lines_name_the_job_they_are_about(
    root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", "json")

    def attempt() -> None:
        bind_job("0193e0a2-0000-7000-8000-000000000001", 2, "report.build", "reports")
        logging.getLogger("conveyor.job.report.build").info("rendered %d pages", 12)

    contextvars.copy_context().run(attempt)  # as each job's task has its own context
    logging.getLogger("conveyor").info("outside any job")
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first["event"] == "rendered 12 pages"
    assert (first["job_id"], first["attempt"], first["job_type"], first["queue"]) == (
        "0193e0a2-0000-7000-8000-000000000001",
        2,
        "report.build",
        "reports",
    )
    assert first["level"] == "info" and first["logger"] == "conveyor.job.report.build"
    assert "job_id" not in second


def test_an_answer_grpc_could_not_send_is_one_line_without_a_traceback(
    root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """grpc logs ExecuteBatchError with a traceback when a client leaves (or refuses an
    answer over its size limit) before grpc noticed; that is one INFO line instead."""
    from grpc._cython import cygrpc  # type: ignore[attr-defined]  # untyped private module

    configure_logging("INFO", "json")
    method = "/conveyor.v1.JobService/SubmitJobs"
    try:
        raise cygrpc.ExecuteBatchError('Failed "execute_batch"')
    except Exception:
        logging.getLogger("grpc._cython.cygrpc").exception(
            "ExecuteBatchError raised in core by servicer method [%s]", method
        )
    [line] = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert record["level"] == "info" and "exception" not in record
    assert record["event"] == (
        f"ExecuteBatchError raised in core by servicer method [{method}]: "
        "the client went away before its answer was sent"
    )
