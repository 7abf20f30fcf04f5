"""Dependency outages against a stack of its own: health follows Redis and PostgreSQL, and a
submission while PostgreSQL is down is UNAVAILABLE and writes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conveyor.client import AsyncClient
from conveyor.embedded import EmbeddedPostgres, EmbeddedRedis
from conveyor.errors import Unavailable
from conveyor.store import migrate
from tests.processes import Stack, make_env


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[EmbeddedRedis, EmbeddedPostgres]]:
    redis = EmbeddedRedis(tmp_path / "redis")
    pg = EmbeddedPostgres(tmp_path / "pg")
    redis.start()
    pg.start()
    migrate(pg.url)
    yield redis, pg
    redis.stop()
    pg.stop()


async def health(addr: str) -> int:
    async with grpc.aio.insecure_channel(addr) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=2
        )
        return int(reply.status)


async def until_health(addr: str, status: int) -> None:
    """Poll the health RPC: the server has no push channel to tell us (Watch is not served)."""
    async with asyncio.timeout(15):
        while True:
            if await health(addr) == status:
                return
            await asyncio.sleep(0.2)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_and_submissions_follow_the_dependencies(
    servers: tuple[EmbeddedRedis, EmbeddedPostgres], tmp_path: Path
) -> None:
    redis, pg = servers
    stack = Stack(make_env(redis.url, pg.url), tmp_path)
    api = stack.start("api")
    key = stack.create_key("outage")
    async with AsyncClient(stack.api_addr, api_key=key) as client:
        redis.stop()
        await until_health(api.addr, NOT_SERVING)
        redis.start()
        await until_health(api.addr, SERVING)

        before = len((await client.list(page_size=1000)).jobs)
        pg.stop()
        await until_health(api.addr, NOT_SERVING)
        with pytest.raises(Unavailable):
            await client.submit("noop")
        pg.start()
        await until_health(api.addr, SERVING)
        assert len((await client.list(page_size=1000)).jobs) == before, "nothing half-written"
        job = await client.submit("noop")
        assert job.id
    assert api.stop() == 0
