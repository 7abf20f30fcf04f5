"""The handler registry: what runs on the event loop, what in the thread pool."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from conveyor.handlers import JobContext, RateLimited, Registry, handler


def sync_handler(payload: dict[str, Any], ctx: JobContext) -> None:
    """Runs in the thread pool."""


async def async_handler(payload: dict[str, Any], ctx: JobContext) -> None:
    """Runs on the event loop."""


class CallableHandler:
    async def __call__(self, payload: dict[str, Any], ctx: JobContext) -> None:
        """An object with an async __call__ runs on the event loop too."""


def test_async_handlers_are_told_apart_from_sync_ones() -> None:
    registry = Registry()
    assert not registry.register("a", sync_handler).is_async
    assert registry.register("b", async_handler).is_async
    assert registry.register("c", CallableHandler()).is_async
    assert registry.names() == ["a", "b", "c"]


def test_a_type_cannot_be_bound_to_two_functions() -> None:
    registry = Registry()
    registry.register("report", sync_handler)
    registry.register("report", sync_handler)  # the same function again is harmless
    with pytest.raises(ValueError, match="already registered"):
        registry.register("report", async_handler)


def test_decorator_registers_with_its_options() -> None:
    registry = Registry()

    @handler("export", timeout_seconds=5, max_attempts=2, registry=registry)
    async def export(payload: dict[str, Any], ctx: JobContext) -> None:
        """A decorated handler."""

    spec = registry.get("export")
    assert spec is not None and spec.fn is export
    assert (spec.timeout_seconds, spec.max_attempts) == (5, 2)


def test_rate_limited_takes_a_timedelta_or_seconds_clamped_to_a_day() -> None:
    """Guards RateLimited's retry_after: a timedelta or seconds, in ms, never negative and
    never past a day (a bad Retry-After must not park a key for good)."""
    assert RateLimited(timedelta(milliseconds=1500)).retry_after_ms == 1500
    assert RateLimited(0.25).retry_after_ms == 250
    assert RateLimited(-3).retry_after_ms == 0
    assert RateLimited(timedelta(days=30)).retry_after_ms == 24 * 3600 * 1000
    assert str(RateLimited(2)) == "rate limited: retry after 2000 ms"
