"""Fixtures the end-to-end tests share beyond the suite's own (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium import webdriver

from conveyor.embedded import free_port
from tests.e2e.browsing import new_browser, wait_ready
from tests.processes import Service, Stack


@pytest.fixture
def workers(stack: Stack) -> Iterator[list[Service]]:
    """Workers a test starts (`tests.e2e.test_queues.start_worker`); stopped cleanly after it."""
    started: list[Service] = []
    yield started
    for service in started:
        assert service.stop() == 0, service.tail()


@pytest.fixture(scope="module")
def dashboard(stack: Stack) -> Iterator[str]:
    """`conveyor dashboard` on a free port, pointed at the stack's API; its base URL."""
    addr = f"127.0.0.1:{free_port()}"
    service = stack.spawn("dashboard", env={"CONVEYOR_DASHBOARD_ADDR": addr})
    url = f"http://{addr}"
    wait_ready(service, url)
    yield url
    assert service.stop() == 0, service.tail()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    """A headless Chromium for one test (modules using it carry `browsing.dashboard_tests`)."""
    driver = new_browser()
    yield driver
    driver.quit()
