"""The handler registry: `@handler("type")` binds a job type to a function.

A handler is `fn(payload: dict, ctx: JobContext)`, sync or async. Async handlers run on the
worker's event loop; sync ones in its thread pool (so they must poll `ctx.cancelled` to stop
early). Raising `PermanentError` skips the remaining attempts: the job goes straight to DEAD.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from conveyor.retry import RetryOverrides

HandlerFn = Callable[..., Any]
F = TypeVar("F", bound=HandlerFn)

BUILTIN_MODULES = ("conveyor.handlers.builtins",)


class PermanentError(Exception):
    """A failure that retrying cannot fix (bad input, a refused request): no more attempts."""


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    name: str
    fn: HandlerFn
    is_async: bool
    timeout_seconds: float | None = None
    max_attempts: int | None = None
    retry: RetryOverrides | None = None


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
    ) -> HandlerSpec:
        existing = self._handlers.get(name)
        if existing is not None and existing.fn is not fn:
            raise ValueError(f"job type {name!r} is already registered to {existing.fn!r}")
        spec = HandlerSpec(name, fn, _is_async(fn), timeout_seconds, max_attempts, retry)
        self._handlers[name] = spec
        return spec

    def get(self, name: str) -> HandlerSpec | None:
        return self._handlers.get(name)

    def names(self) -> list[str]:
        return sorted(self._handlers)


def _is_async(fn: HandlerFn) -> bool:
    """Async functions, and objects whose `__call__` is async, run on the event loop."""
    call = getattr(fn, "__call__", None)  # noqa: B004 - the method itself is inspected
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


default_registry = Registry()


def handler(
    name: str,
    *,
    timeout_seconds: float | None = None,
    max_attempts: int | None = None,
    retry: RetryOverrides | None = None,
    registry: Registry | None = None,
) -> Callable[[F], F]:
    """Register the decorated function as the handler of job type `name`.

    `timeout_seconds`, `max_attempts` and `retry` (see `conveyor.retry.retry`) are the type's
    defaults for jobs whose request leaves them unset. The API applies them at submit when it
    loads the same handler modules (`CONVEYOR_HANDLERS`); a type it does not know gets the
    server's defaults.
    """

    def decorate(fn: F) -> F:
        (registry or default_registry).register(
            name, fn, timeout_seconds=timeout_seconds, max_attempts=max_attempts, retry=retry
        )
        return fn

    return decorate


def load_modules(modules: Iterable[str]) -> None:
    """Import the built-ins and the given modules, whose decorators register handlers."""
    for module in (*BUILTIN_MODULES, *modules):
        importlib.import_module(module)
