"""Reading what the services show of themselves, as an operator's tools would.

- `SpanCollector`: a real OTLP/gRPC trace receiver in the test process. Services and the CLI
  export to it with the SDK's own exporter (`OTEL_EXPORTER_OTLP_ENDPOINT`), and it keeps
  every span in memory, so a test can follow one trace across processes.
- `scrape`: a service's `/metrics`, parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from conveyor.embedded import free_port
from tests.processes import Service

KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclass(frozen=True)
class ExportedSpan:
    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    status: int  # 0 unset, 1 ok, 2 error
    start_ns: int
    end_ns: int


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class SpanCollector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[ExportedSpan] = []
        self._changed = threading.Condition()
        self.port = free_port()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)  # type: ignore[no-untyped-call]
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        found = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        ExportedSpan(
                            service=str(resource.get("service.name", "")),
                            name=span.name,
                            kind=KINDS.get(span.kind, str(span.kind)),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            status=span.status.code,
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                        )
                    )
        with self._changed:
            self.spans += found
            self._changed.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to export here, soon after each span ends."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(None)

    def _wait(self, done: Callable[[list[ExportedSpan]], bool], timeout: float) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: done(self.spans), timeout):
                names = sorted({(s.service, s.name) for s in self.spans})
                raise AssertionError(f"spans did not arrive in {timeout}s; have {names}")

    async def wait_for(
        self, done: Callable[[list[ExportedSpan]], bool], seconds: float = 20.0
    ) -> list[ExportedSpan]:
        """Block (on a condition, not a poll) until `done(spans)` holds."""
        await asyncio.to_thread(self._wait, done, seconds)
        return list(self.spans)

    def trace(self, trace_id: str) -> list[ExportedSpan]:
        return [s for s in self.spans if s.trace_id == trace_id]


def spans_collector() -> Iterator[SpanCollector]:
    collector = SpanCollector()
    collector.start()
    try:
        yield collector
    finally:
        collector.stop()


Sample = tuple[str, tuple[tuple[str, str], ...]]


def scrape(service: Service) -> dict[Sample, float]:
    """Every sample of a service's /metrics, by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://{service.metrics_addr}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Sample, float], name: str, **labels: str) -> float:
    """One sample's value (0 when absent: a counter never incremented has no child)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
