"""Logs: one JSON object a line (for collectors), or a readable console format in dev mode.

Every line carries what it happened to: the worker binds `job_id`, `attempt`, `job_type` and
`queue` for the time an attempt runs (`bind_job`; contextvars, so each job's task has its
own), and lines written inside a traced span carry `trace_id` and `span_id`, which find
the trace in Jaeger. Stdlib `logging` calls go through the same formatter, so library
logs are JSON too.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from opentelemetry import trace

from conveyor.telemetry import tracing


def _trace_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Add the current span's ids (W3C hex, as Jaeger and Tempo show them)."""
    if tracing.enabled():
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            event["trace_id"] = format(context.trace_id, "032x")
            event["span_id"] = format(context.span_id, "016x")
    return event


# The job a task is running: one variable set once per attempt (structlog's
# bind_contextvars sets one variable per key, which cost more than the rest of the logging
# set-up per no-op job).
_JOB: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "conveyor_job", default=None
)


def bind_job(job_id: str, attempt: int, job_type: str, queue: str) -> None:
    """Name the job in every line logged from this context on (a task's own copy)."""
    _JOB.set({"job_id": job_id, "attempt": attempt, "job_type": job_type, "queue": queue})


def _job_fields(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    job = _JOB.get()
    if job is not None:
        for key, value in job.items():
            event.setdefault(key, value)
    return event


class _UnsentAnswers(logging.Filter):
    """grpc logs an error with a traceback when it cannot send an answer because the client
    has gone (cancelled, timed out, or refused an answer over its size limit, as a large
    SubmitJobs answer can be) before grpc noticed. That is the client's doing, not a fault
    of the server: keep it as one line at INFO, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if type(error).__name__ == "ExecuteBatchError":  # grpc._cython.cygrpc's, untyped
            record.msg = f"{record.getMessage()}: the client went away before its answer was sent"
            record.args = ()
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_UNSENT_ANSWERS = _UnsentAnswers()


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Route stdlib logging through structlog's formatter, once per process."""
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            _job_fields,
            _trace_ids,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("grpc._cython.cygrpc").addFilter(_UNSENT_ANSWERS)
