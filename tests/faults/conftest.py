"""Fixtures the fault tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.embedded import EmbeddedRedis
from tests.faults.losses import LossStack, loss_stack_of


@pytest.fixture
def loss_stack(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[LossStack]:
    """A stack of the test's own on a single Redis (see `loss_stack_of`)."""
    server = EmbeddedRedis(tmp_path / "redis")
    with loss_stack_of(server, database_url, tmp_path, request.node.name) as env:
        yield env
