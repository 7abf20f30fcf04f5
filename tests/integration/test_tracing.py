"""Traces in-process, read from the SDK's in-memory exporter: a worker's spans continue the
trace the job was submitted in, and a handler's own spans (async, or sync in its thread)
are children of its attempt. Across real processes: tests/e2e/test_observability.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conveyor.config import Settings
from conveyor.db import JobStore
from conveyor.handlers import JobContext, Registry, SyncJobContext
from conveyor.jobs.model import FALLBACK_RETRY, JobDefaults, JobSpec, JobState, now_ms
from conveyor.redis import RedisQueue
from conveyor.telemetry import tracing
from conveyor.worker.runner import Worker
from tests.builders import running_worker

pytestmark = pytest.mark.usefixtures("clean")


class Memory(InMemorySpanExporter):
    """Keeps spans, and says when an attempt's span has ended (exports run on the loop's
    thread: SimpleSpanProcessor exports as each span ends)."""

    def __init__(self) -> None:
        super().__init__()
        self.attempted = asyncio.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = super().export(spans)
        if any(s.name == "job.attempt" for s in spans):
            self.attempted.set()
        return result


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[Memory]:
    """Tracing on for this test only, into memory (the global provider is left alone)."""
    memory = Memory()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr(tracing, "_provider", provider)
    yield memory
    provider.shutdown()


async def traced_async(payload: dict[str, Any], ctx: JobContext) -> None:
    with tracing.tracer().start_as_current_span("async.child"):
        await asyncio.sleep(0)


def traced_sync(payload: dict[str, Any], ctx: SyncJobContext) -> None:
    with tracing.tracer().start_as_current_span("sync.child"):
        pass


@pytest.fixture
async def worker(settings: Settings) -> AsyncIterator[tuple[Worker, JobStore, RedisQueue]]:
    registry = Registry()
    registry.register("traced.async", traced_async)
    registry.register("traced.sync", traced_sync)
    async with running_worker(settings, registry) as parts:
        yield parts


def _named(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    [found] = [s for s in spans if s.name == name]
    return found


@pytest.mark.parametrize("job_type", ["traced.async", "traced.sync"])
async def test_attempt_spans_continue_the_submit_trace_and_hold_the_handlers_own(
    exporter: Memory,
    worker: tuple[Worker, JobStore, RedisQueue],
    job_type: str,
) -> None:
    _, store, queue = worker
    with tracing.tracer().start_as_current_span("submit") as submit:
        job = JobSpec(type=job_type).new_job(
            "alice", defaults=JobDefaults(3, 10_000, FALLBACK_RETRY), now=now_ms()
        )
        job.trace_parent = tracing.current_traceparent()
    assert job.trace_parent.split("-")[2] == format(submit.get_span_context().span_id, "016x")
    await store.insert([job])
    await queue.enqueue([job])

    await asyncio.wait_for(exporter.attempted.wait(), 10)  # ends once the outcome is written
    spans = exporter.get_finished_spans()
    stored = await store.get(job.id)
    assert stored is not None and stored.state is JobState.SUCCEEDED
    assert stored.trace_parent == job.trace_parent  # kept in the row for restores

    submit_id = submit.get_span_context().span_id
    queued, attempt = _named(spans, "job.queued"), _named(spans, "job.attempt")
    child = _named(spans, job_type.replace("traced.", "") + ".child")
    trace_id = submit.get_span_context().trace_id
    assert {s.context.trace_id for s in (queued, attempt, child)} == {trace_id}
    assert queued.parent is not None and queued.parent.span_id == submit_id
    assert attempt.parent is not None and attempt.parent.span_id == submit_id
    assert child.parent is not None and child.parent.span_id == attempt.context.span_id
    assert attempt.attributes is not None
    assert attempt.attributes["conveyor.job.outcome"] == "succeeded"
    assert attempt.attributes["conveyor.job.attempt"] == 1


async def test_no_trace_context_when_tracing_is_off() -> None:
    assert not tracing.enabled()
    assert tracing.current_traceparent() == ""
    assert tracing.server_interceptors() == ()
    with tracing.attempt_span("", {}, ready_ms=0, claimed_ms=0) as span:
        assert span is None
