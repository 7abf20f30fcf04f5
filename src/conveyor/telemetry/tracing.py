"""Traces: one trace per job, from the client's call through the API, the time in the queue
and every attempt on a worker.

Configured only by the OpenTelemetry SDK's own variables. Tracing is on when an exporter is
named: `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) for OTLP/gRPC,
or `OTEL_TRACES_EXPORTER=console`; `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
turns it off. The rest (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`, …) is read by the SDK.

When it is off nothing is installed: `enabled()` is False, no span is made, no interceptor
is added, and jobs carry no trace context, so the hot path pays one boolean test.

How the context travels: the API stores the W3C `traceparent` of the call that submitted a
job in the job itself (`Job.trace_parent`: its row and its Redis hash), so it survives the
queue, a Redis restore from the database and any number of retries. A worker that claims
the job records the wait as a `job.queued` span (from when the job became ready to the
claim) and runs the attempt inside a `job.attempt` span, both children of the submit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from conveyor.config import ConfigurationError

TRACER_NAME = "conveyor"
_PROPAGATOR = TraceContextTextMapPropagator()
# The SDK provider once configured (None: tracing is off). Conveyor's own spans and its
# interceptors use it directly; it is also installed globally for handlers' own spans.
_provider: trace.TracerProvider | None = None

# Span attributes: messaging conventions where they fit, conveyor.* for the rest.
JOB_ID = "messaging.message.id"
QUEUE = "messaging.destination.name"
SYSTEM = "messaging.system"
JOB_TYPE = "conveyor.job.type"
ATTEMPT = "conveyor.job.attempt"
OUTCOME = "conveyor.job.outcome"


def enabled() -> bool:
    """Whether this process traces (see the module docstring)."""
    return _provider is not None


def _wanted() -> str | None:
    """The exporter the environment asks for: "otlp", "console" or None (off)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    named = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named == "none":
        return None
    if named in ("", "otlp"):
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return "otlp" if endpoint or named == "otlp" else None
    if named == "console":
        return "console"
    raise ConfigurationError("OTEL_TRACES_EXPORTER: not supported here; use otlp, console or none")


def configure_tracing(service_name: str) -> bool:
    """Install the SDK's tracer provider if the environment asks for an exporter; returns
    whether tracing is on. `service_name` applies unless OTEL_SERVICE_NAME says otherwise."""
    global _provider
    wanted = _wanted()
    if wanted is None:
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    exporter: SpanExporter
    if wanted == "console":
        exporter = ConsoleSpanExporter()
    else:
        protocol = os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
        )
        if protocol not in ("", "grpc"):
            raise ConfigurationError(
                "OTEL_EXPORTER_OTLP_PROTOCOL: Conveyor exports OTLP over gRPC only "
                "(set grpc, or leave it unset)"
            )
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    resource = Resource.create({SERVICE_NAME: service_name})
    if os.environ.get("OTEL_SERVICE_NAME"):
        resource = Resource.create()  # the SDK reads OTEL_SERVICE_NAME itself
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    return True


def tracer() -> trace.Tracer:
    return (_provider or trace.get_tracer_provider()).get_tracer(TRACER_NAME)


# -- the job's trace context --------------------------------------------------------------


def current_traceparent() -> str:
    """The W3C traceparent of the current span ("" when not tracing or no span)."""
    if _provider is None:
        return ""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent", "")


def job_context(trace_parent: str) -> otel_context.Context | None:
    """The context a job's spans are children of (None: the job carries none)."""
    if _provider is None or not trace_parent:
        return None
    return _PROPAGATOR.extract({"traceparent": trace_parent})


def job_attributes(
    job_id: str, job_type: str, queue: str, attempt: int | None = None
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        SYSTEM: "conveyor",
        JOB_ID: job_id,
        JOB_TYPE: job_type,
        QUEUE: queue,
    }
    if attempt is not None:
        attributes[ATTEMPT] = attempt
    return attributes


def record_wait(
    parent: otel_context.Context, attributes: dict[str, Any], ready_ms: int, claimed_ms: int
) -> None:
    """The time a job waited in its queue, as a finished span (ready → claimed)."""
    span = tracer().start_span(
        "job.queued",
        context=parent,
        kind=SpanKind.INTERNAL,
        attributes=attributes,
        start_time=min(ready_ms, claimed_ms) * 1_000_000,
    )
    span.end(end_time=claimed_ms * 1_000_000)


@contextlib.contextmanager
def attempt_span(
    trace_parent: str, attributes: dict[str, Any], *, ready_ms: int | None, claimed_ms: int
) -> Iterator[Span | None]:
    """An attempt's `job.attempt` span (a consumer of the submit), current for the block;
    first the `job.queued` span when `ready_ms` is given. None: the job carries no trace."""
    parent = job_context(trace_parent)
    if parent is None:
        yield None
        return
    if ready_ms is not None:
        record_wait(parent, attributes, ready_ms, claimed_ms)
    attempt = tracer().start_span(
        "job.attempt", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    )
    with trace.use_span(attempt, end_on_exit=True, set_status_on_exception=False):
        yield attempt


def set_outcome(span: Span | None, outcome: str, error: str = "") -> None:
    """Say how the attempt ended on its span (ERROR status unless it succeeded)."""
    if span is None:
        return
    span.set_attribute(OUTCOME, outcome)
    if error:
        span.set_status(Status(StatusCode.ERROR, error[:500]))


def annotate(**attributes: Any) -> None:
    """Add attributes to the current span (the API's call span), when tracing."""
    if _provider is not None:
        trace.get_current_span().set_attributes(attributes)


@contextlib.contextmanager
def span(name: str, attributes: dict[str, Any] | None = None) -> Iterator[None]:
    """An internal span around a block, when tracing (a no-op otherwise)."""
    if _provider is None:
        yield
        return
    with tracer().start_as_current_span(name, attributes=attributes):
        yield


def start_root(name: str) -> Callable[[], None]:
    """Start `name` as the current span for what follows (a CLI command, whose calls
    become its children); returns what ends it. A no-op when not tracing."""
    if _provider is None:
        return lambda: None
    root = tracer().start_span(name, kind=SpanKind.INTERNAL)
    token = otel_context.attach(trace.set_span_in_context(root))

    def end() -> None:
        otel_context.detach(token)
        root.end()

    return end


# -- gRPC ---------------------------------------------------------------------------------


def _not_probes() -> Any:
    """Health probes every few seconds (and reflection) are not worth a trace each."""
    from opentelemetry.instrumentation.grpc import filters

    return filters.negate(
        filters.any_of(
            filters.service_prefix("grpc.health."), filters.service_prefix("grpc.reflection.")
        )
    )


def server_interceptors() -> Sequence[grpc.aio.ServerInterceptor[Any, Any]]:
    """The OpenTelemetry server interceptor when tracing (a span per call, continuing the
    client's trace from the call's `traceparent` metadata)."""
    if _provider is None:
        return ()
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return (aio_server_interceptor(_provider, filter_=_not_probes()),)  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def client_stream_span(method: str) -> Iterator[list[tuple[str, str]]]:
    """A CLIENT span for a blocking server stream, made here rather than by the
    interceptor (which turns such a call into a plain generator that cannot be cancelled);
    yields the metadata that carries its context. Not made current: the caller's code runs
    between the stream's messages."""
    if _provider is None:
        yield []
        return
    service, _, name = method.strip("/").rpartition("/")
    call = tracer().start_span(
        method,
        kind=SpanKind.CLIENT,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
    )
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(call))
    try:
        yield list(carrier.items())
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        call.set_status(Status(StatusCode.ERROR, str(code)))
        raise
    finally:
        call.end()


def traced_channel(channel: grpc.Channel) -> grpc.Channel:
    """A blocking channel whose unary calls are client spans carrying the trace context
    (server streams: `client_stream_span`)."""
    if _provider is None:
        return channel
    from opentelemetry.instrumentation.grpc import client_interceptor
    from opentelemetry.instrumentation.grpc.grpcext import intercept_channel

    interceptor = client_interceptor(_provider, filter_=_not_probes())  # type: ignore[no-untyped-call]
    return intercept_channel(channel, interceptor)  # type: ignore[no-untyped-call,no-any-return]


def aio_client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for a grpc.aio channel (given when the channel is made)."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors as interceptors

    return list(interceptors(_provider, filter_=_not_probes()))  # type: ignore[no-untyped-call]
