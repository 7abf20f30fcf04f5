"""Dependency outages against a stack of its own: health follows Redis and PostgreSQL; a
submission while PostgreSQL is down is UNAVAILABLE and writes nothing; workers hold their
outcomes through a database outage; submissions while Redis is down are kept and run later."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conveyor.client import AsyncClient, AttemptOutcome, JobState
from conveyor.db import migrate
from conveyor.embedded import EmbeddedPostgres, EmbeddedRedis
from conveyor.errors import Unavailable
from conveyor.v1 import job_pb2
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
    # No SDK retries: each refusal is the server's own answer, seen at once.
    async with AsyncClient(stack.api_addr, api_key=key, submit_retry=None) as client:
        redis.stop()
        await until_health(api.addr, NOT_SERVING)
        redis.start()
        await until_health(api.addr, SERVING)

        before = len((await client.list(page_size=1000)).items)
        pg.stop()
        await until_health(api.addr, NOT_SERVING)
        answers: Counter[str] = Counter()
        for i in range(20):
            try:
                await client.submit("noop", idempotency_key=f"outage-{i}")
                answers["OK"] += 1
            except Unavailable:
                answers["UNAVAILABLE"] += 1
        pg.start()
        await until_health(api.addr, SERVING)
        after = len((await client.list(page_size=1000)).items)
        print(
            f"\npostgres outage: {answers['UNAVAILABLE']} of 20 submits UNAVAILABLE, "
            f"{answers['OK']} accepted, {after - before} rows written"
        )
        assert answers == {"UNAVAILABLE": 20}, "every submit is refused while it is down"
        assert after == before, "nothing half-written"
        job = await client.submit("noop")
        assert job.id
    assert api.stop() == 0


async def test_workers_keep_results_through_a_database_outage(
    servers: tuple[EmbeddedRedis, EmbeddedPostgres], tmp_path: Path
) -> None:
    """The handler ends while PostgreSQL is down: the worker holds the outcome (and the
    lease), and writes it once the database is back; nothing runs twice."""
    redis, pg = servers
    stack = Stack(make_env(redis.url, pg.url), tmp_path)
    api = stack.start("api")
    worker = stack.start("worker")
    key = stack.create_key("outage")
    async with AsyncClient(stack.api_addr, api_key=key) as client:
        job = await client.submit("sleep", {"seconds": 1.0, "steps": 4})
        async with asyncio.timeout(20):
            async for update in client.watch(job.id):
                if update.job.state == JobState.RUNNING:
                    break
        pg.stop()
        async with asyncio.timeout(20):
            async for update in client.watch(job.id):
                if update.job.progress >= 100:  # the handler has returned
                    break
        await asyncio.sleep(1.5)  # past the handler's end, the outcome cannot be written
        assert (await client.get(job.id)).state == JobState.RUNNING
        pg.start()
        async with asyncio.timeout(30):
            final = [u async for u in client.watch(job.id)][-1].job
        assert final.state == JobState.SUCCEEDED and final.attempt == 1
        attempts = await client.attempts(job.id)
        assert [(a.attempt, a.outcome) for a in attempts] == [(1, AttemptOutcome.SUCCEEDED)]
    assert worker.stop() == 0 and api.stop() == 0


async def test_submissions_while_redis_is_down_are_kept_and_run_later(
    servers: tuple[EmbeddedRedis, EmbeddedPostgres], tmp_path: Path
) -> None:
    """With Redis down the API still accepts jobs (committed to PostgreSQL: accepted means
    durable) and serves them from the database; when Redis is back the reconciler enqueues
    them and they run."""
    redis, pg = servers
    env = {**make_env(redis.url, pg.url), "CONVEYOR_REDIS_CHECK_SECONDS": "0.2"}
    stack = Stack(env, tmp_path)
    api = stack.start("api")
    scheduler = stack.start("scheduler")
    worker = stack.start("worker")
    key = stack.create_key("outage")
    async with AsyncClient(stack.api_addr, api_key=key) as client:
        redis.stop()
        await until_health(api.addr, NOT_SERVING)
        jobs = [await client.submit("noop") for _ in range(5)]
        for job in jobs:
            stored = await client.get(job.id)
            assert stored.state == JobState.QUEUED
            assert stored.blocked_reason == "the queue (redis) cannot be reached"
            assert stored.raw.blocked == job_pb2.BlockedReason(
                kind=job_pb2.BLOCKED_KIND_QUEUE_UNREACHABLE
            )
        redis.start()
        await until_health(api.addr, SERVING)
        for job in jobs:
            async with asyncio.timeout(30):
                final = [u async for u in client.watch(job.id)][-1].job
            assert final.state == JobState.SUCCEEDED
    print(f"\nredis outage: {len(jobs)} jobs accepted while redis was down, all ran")
    assert stack.stop_all() == {"api-0": 0, "scheduler-1": 0, "worker-2": 0}
    del api, scheduler, worker
