"""Fixtures the end-to-end tests share beyond the suite's own (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.processes import Service, Stack


@pytest.fixture
def workers(stack: Stack) -> Iterator[list[Service]]:
    """Workers a test starts (`tests.e2e.test_queues.start_worker`); stopped cleanly after it."""
    started: list[Service] = []
    yield started
    for service in started:
        assert service.stop() == 0, service.tail()
