"""The handler registry: `@handler("type")` binds a job type to a function.

A handler is `fn(payload, ctx)`, sync or async. Async handlers run on the worker's event
loop; sync ones in its thread pool (so they must poll `ctx.cancelled` to stop early).
Raising `PermanentError` skips the remaining attempts: the job goes straight to DEAD.
Raising `RateLimited(retry_after=...)` (a 429 from the service the handler calls) ends the
attempt without spending it: the job waits that long, and so do the other jobs of its rate
key (SubmitJobRequest.rate_key) in its queue.

`isolation="process"` runs each attempt in a child process instead (`conveyor.worker.isolation`):
it can be killed on cancel and on timeout, and `memory_limit_mb` caps what it may
allocate. It costs a forked process per attempt (from a pool forked ahead of need), so it
is for handlers that run untrusted input (templates, queries) or may misbehave; such a
handler must be a module-level function, which the child imports by name.

The payload is a plain dict, unless the type declares a pydantic model: either
`@handler("t", payload=Model)` or an annotation `def fn(payload: Model, ctx)`. Then the API
validates payloads of that type at submit (a bad one is INVALID_ARGUMENT with a violation
per field, before anything is stored) and the handler receives the parsed model.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from conveyor.config import ConfigurationError
from conveyor.errors import FieldViolation
from conveyor.jobs.retry import RetryOverrides

HandlerFn = Callable[..., Any]
F = TypeVar("F", bound=HandlerFn)
Isolation = Literal["thread", "process"]

BUILTIN_MODULES = (
    "conveyor.builtins.basic",
    "conveyor.builtins.bundle",
    "conveyor.builtins.csv_export",
    "conveyor.builtins.email",
    "conveyor.builtins.webhook",
)


class PermanentError(Exception):
    """A failure that retrying cannot fix (bad input, a refused request): no more attempts."""


# The longest a RateLimited may hold a job (and its key) back: a day, as a rate's window.
MAX_RETRY_AFTER_MS = 24 * 3600 * 1000


class RateLimited(Exception):
    """The service the handler calls pushed back (an HTTP 429 and its Retry-After): the
    attempt ends without counting against max_attempts, the job runs again after
    `retry_after` (a timedelta, or seconds), and until then no other job with its rate key
    starts in its queue (a job without a rate key waits alone). Clamped to 0-24 h."""

    def __init__(self, retry_after: timedelta | float, message: str = "") -> None:
        seconds = retry_after.total_seconds() if isinstance(retry_after, timedelta) else retry_after
        self.retry_after_ms = min(max(int(seconds * 1000), 0), MAX_RETRY_AFTER_MS)
        super().__init__(message or f"rate limited: retry after {self.retry_after_ms} ms")


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    name: str
    fn: HandlerFn
    is_async: bool
    timeout_seconds: float | None = None
    max_attempts: int | None = None
    retry: RetryOverrides | None = None
    payload_model: type[BaseModel] | None = None
    # How long a finished job of this type is kept (None: the server's default; 0: forever).
    retention_seconds: float | None = None
    # "thread" (the worker's thread pool or event loop) or "process" (a child of its own).
    isolation: Isolation = "thread"
    # A process-isolated attempt's allowance of memory (address space), in MiB.
    memory_limit_mb: int | None = None

    def violations(self, payload: dict[str, Any], prefix: str = "payload") -> list[FieldViolation]:
        """What is wrong with a payload of this type (nothing when it declares no model)."""
        if self.payload_model is None:
            return []
        try:
            self.payload_model.model_validate(payload)
        except ValidationError as exc:
            return payload_violations(exc, prefix)
        return []

    def parse(self, payload: dict[str, Any]) -> Any:
        """The payload as the handler takes it: the model, or the dict itself. A payload
        the model refuses is a PermanentError (running it again would not help).

        A batch's callback finds `batch` added to its payload (conveyor.jobs.dependencies)
        after its submit was checked; a model that does not declare the field (every
        built-in type's) gets the payload as it was submitted, so any type can be a
        callback. A model may declare `batch` to read it."""
        if self.payload_model is None:
            return payload
        if "batch" in payload and "batch" not in self.payload_model.model_fields:
            payload = {k: v for k, v in payload.items() if k != "batch"}
        try:
            return self.payload_model.model_validate(payload)
        except ValidationError as exc:
            why = "; ".join(f"{v.field}: {v.description}" for v in payload_violations(exc))
            raise PermanentError(f"invalid payload for {self.name}: {why}") from None


def payload_violations(exc: ValidationError, prefix: str = "payload") -> list[FieldViolation]:
    """Pydantic's errors as field violations named like the request's fields."""
    found = []
    for error in exc.errors(include_url=False, include_input=False):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        found.append(FieldViolation(f"{prefix}{path}", error["msg"]))
    return found


class Registry:
    def __init__(self) -> None:
        self._handlers: dict[str, HandlerSpec] = {}

    def register(
        self,
        name: str,
        fn: HandlerFn,
        *,
        timeout_seconds: float | None = None,
        max_attempts: int | None = None,
        retry: RetryOverrides | None = None,
        payload: type[BaseModel] | None = None,
        retention_seconds: float | None = None,
        isolation: Isolation = "thread",
        memory_limit_mb: int | None = None,
    ) -> HandlerSpec:
        existing = self._handlers.get(name)
        if existing is not None and existing.fn is not fn:
            raise ValueError(f"job type {name!r} is already registered to {existing.fn!r}")
        _check_isolation(name, fn, isolation, memory_limit_mb)
        spec = HandlerSpec(
            name,
            fn,
            _is_async(fn),
            timeout_seconds,
            max_attempts,
            retry,
            payload or _annotated_model(fn),
            retention_seconds,
            isolation,
            memory_limit_mb,
        )
        self._handlers[name] = spec
        return spec

    def get(self, name: str) -> HandlerSpec | None:
        return self._handlers.get(name)

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def specs(self) -> list[HandlerSpec]:
        """Every registered type, by name."""
        return [self._handlers[name] for name in self.names()]


def _check_isolation(name: str, fn: HandlerFn, isolation: str, memory_limit_mb: int | None) -> None:
    """Refuse at registration what could only fail at run time."""
    if isolation not in ("thread", "process"):
        raise ValueError(f"job type {name!r}: isolation must be 'thread' or 'process'")
    if memory_limit_mb is not None and isolation != "process":
        raise ValueError(f"job type {name!r}: memory_limit_mb needs isolation='process'")
    if memory_limit_mb is not None and memory_limit_mb < 16:
        raise ValueError(f"job type {name!r}: memory_limit_mb must be at least 16")
    if isolation == "process" and "<locals>" in getattr(fn, "__qualname__", "<locals>"):
        raise ValueError(
            f"job type {name!r}: a process-isolated handler must be a module-level function "
            "(its child process imports it by name)"
        )


def _annotated_model(fn: HandlerFn) -> type[BaseModel] | None:
    """The pydantic model a handler's first parameter is annotated with, if any."""
    try:
        params = list(inspect.signature(fn).parameters.values())
        hints = typing.get_type_hints(fn)
    except (TypeError, ValueError, NameError):
        return None
    if not params:
        return None
    hint = hints.get(params[0].name)
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return hint
    return None


def _seconds(value: float | timedelta | None) -> float | None:
    return value.total_seconds() if isinstance(value, timedelta) else value


def _is_async(fn: HandlerFn) -> bool:
    """Async functions, and objects whose `__call__` is async, run on the event loop."""
    call = getattr(fn, "__call__", None)  # noqa: B004 - the method itself is inspected
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


default_registry = Registry()


def handler(
    name: str,
    *,
    timeout: float | timedelta | None = None,
    max_attempts: int | None = None,
    retry: RetryOverrides | None = None,
    payload: type[BaseModel] | None = None,
    retention: float | timedelta | None = None,
    isolation: Isolation = "thread",
    memory_limit_mb: int | None = None,
    timeout_seconds: float | None = None,
    registry: Registry | None = None,
) -> Callable[[F], F]:
    """Register the decorated function as the handler of job type `name`.

    `timeout` (seconds or a timedelta), `max_attempts` and `retry` (see
    `conveyor.jobs.retry.retry`) are the type's defaults for jobs whose request leaves them
    unset; `retention` how long its finished jobs are kept (0: forever); `payload` a
    pydantic model its payloads must match (else taken from the first parameter's
    annotation). The API applies all of them at submit when it loads the same handler
    modules (`CONVEYOR_HANDLERS`); a type it does not know gets the server's defaults and
    its payloads are checked by the worker only. `isolation="process"` runs each attempt
    in a child process that cancel and timeout kill, with `memory_limit_mb` MiB to
    allocate (see the module docstring). `timeout_seconds` is the older spelling of
    `timeout`.
    """

    def decorate(fn: F) -> F:
        (registry or default_registry).register(
            name,
            fn,
            timeout_seconds=_seconds(timeout) or timeout_seconds,
            max_attempts=max_attempts,
            retry=retry,
            payload=payload,
            retention_seconds=_seconds(retention),
            isolation=isolation,
            memory_limit_mb=memory_limit_mb,
        )
        return fn

    return decorate


def load_modules(modules: Iterable[str]) -> None:
    """Import the built-ins and the given modules, whose decorators register handlers.

    The current folder is importable, as it is for `python -m`: `conveyor worker --handlers
    mypkg.reports` run from the app's folder finds `mypkg` (a console script's path starts
    at its own folder, not the current one). A module that cannot be found is a
    configuration error saying where it was looked for, not an import traceback."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    own = list(modules)
    if own and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in own:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise  # the module was found; something it imports is missing
            raise ConfigurationError(
                f"CONVEYOR_HANDLERS: handler module {module!r} not found (no {exc.name!r} "
                f"in the current folder {os.getcwd()} or on the Python path): run from the "
                "folder that holds it, or add that folder to PYTHONPATH"
            ) from None
