"""A full Redis (`maxmemory` reached, `noeviction`) refuses writes while it still answers.

A committed job is accepted whatever Redis says afterwards: SubmitJob answers OK (a client
told otherwise resubmits and makes a duplicate), GetJob says why the job waits, the API
retries the enqueue within seconds (not at the reconciler's next pass), and its health
reports the condition without taking the API out of service (see `conveyor.api.pending_writes`).
Before a commit, a refusal is UNAVAILABLE with an ErrorInfo and a RetryInfo, never INTERNAL.

Each test starts a Redis of its own, filled with one big key and then capped below what it
holds; deleting the key gives it room again. Run with `-s` to see the counts.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import pytest
import redis
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conveyor.api.pending_writes import REDIS_WRITES_HEALTH
from conveyor.api.ratelimit import Kind, Limit, RateLimiter
from conveyor.client import AsyncClient, Job, submit_request
from conveyor.client import types as sdk
from conveyor.config import Settings
from conveyor.db import migrate
from conveyor.db.bulk import psycopg_dsn
from conveyor.embedded import EmbeddedRedis
from conveyor.errors import RedisRefused
from conveyor.jobs.model import FALLBACK_RETRY, JobDefaults, JobSpec, JobState
from conveyor.redis import RedisQueue, connect
from conveyor.v1 import job_pb2
from tests.observability import scrape, value
from tests.processes import Service, Stack, fresh_database, make_env

OWNER = "redisfull"
SINGLES = 40
BULK = 10
FILLER = "filler"
FILLER_BYTES = 16 << 20
OOM_REASON = "committed; waiting to be enqueued: redis refused it (out of memory)"
WARNING_RE = re.compile(
    r"committed \d+ jobs? but could not enqueue (it|them): redis refused (it|them) "
    r"\(out of memory\); "
    r"this process retries every 0\.1 to 2 s until redis takes (it|them) \(the reconciler's "
    r"pass, within 600 s, if this process stops first\)"
)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class FullRedis:
    """A Redis of one test's own, which `fill` makes refuse writes and `free` frees."""

    server: EmbeddedRedis

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.server.url, socket_timeout=10)

    def fill(self) -> None:
        """One big key, and `maxmemory` at half its size: every write is refused
        (`noeviction`) until the key is gone, whatever else Redis frees meanwhile."""
        with self.client() as client:
            client.set(FILLER, b"x" * FILLER_BYTES)
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", FILLER_BYTES // 2)
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                client.set("probe", "1")

    def free(self) -> None:
        with self.client() as client:
            client.delete(FILLER)


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[FullRedis]:
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        yield FullRedis(server)
    finally:
        server.stop()


@pytest.fixture
def full_stack(
    full_redis: FullRedis, database_url: str, tmp_path: Path
) -> Iterator[tuple[Stack, str]]:
    """An api and a worker on the test's own Redis and database; no scheduler, and a
    reconciler interval of 600 s in their settings, so that only the API's own retries
    can enqueue what Redis refused within the test."""
    url = fresh_database(database_url, "conveyor_redisfull")
    migrate(url)
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**make_env(full_redis.server.url, url), "CONVEYOR_RECONCILE_INTERVAL_SECONDS": "600"}
    stack = Stack(env, logs)
    try:
        yield stack, url
    finally:
        for service in stack.services:
            if service.proc.poll() is None:
                service.kill()


@pytest.fixture
async def client(full_stack: tuple[Stack, str]) -> AsyncIterator[AsyncClient]:
    stack, _ = full_stack
    stack.start("api")
    stack.start("worker", "--concurrency", "8")
    async with AsyncClient(stack.api_addr, api_key=stack.create_key(OWNER)) as client:
        yield client


async def health(addr: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(addr) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
        return int(reply.status)


async def until_health(addr: str, service: str, status: int) -> None:
    """Poll: the probe runs every second, and Health.Watch is not served."""
    async with asyncio.timeout(10):
        while True:
            if await health(addr, service) == status:
                return
            await asyncio.sleep(0.1)


def states(database_url: str) -> dict[str, tuple[JobState, int]]:
    """Every job of the test's owner: its state and recorded attempts, from the database."""
    with psycopg.connect(psycopg_dsn(database_url)) as conn:
        rows = conn.execute(
            "SELECT j.id, j.state, count(a.job_id) FROM jobs j "
            "LEFT JOIN job_attempts a ON a.job_id = j.id WHERE j.owner = %s GROUP BY j.id",
            (OWNER,),
        ).fetchall()
    return {str(job_id): (JobState(state), int(n)) for job_id, state, n in rows}


async def until_settled(database_url: str, expected: dict[str, JobState]) -> float:
    """Seconds until every job has its expected state in the database."""
    start = time.monotonic()
    async with asyncio.timeout(20):
        while True:
            now = states(database_url)
            if all(now.get(job_id, (None, 0))[0] is want for job_id, want in expected.items()):
                return time.monotonic() - start
            await asyncio.sleep(0.05)


async def submit_while_full(client: AsyncClient) -> tuple[list[Job], int]:
    """SINGLES concurrent submits and one bulk of BULK: the jobs answered, and how many
    calls failed."""
    singles = [client.submit("noop", {"n": i}) for i in range(SINGLES)]
    bulk = client.submit_many([submit_request("noop", {"bulk": i}) for i in range(BULK)])
    answers = await asyncio.gather(*singles, return_exceptions=True)
    batch = (await asyncio.gather(bulk, return_exceptions=True))[0]
    jobs = [a for a in answers if isinstance(a, Job)]
    jobs += batch if isinstance(batch, list) else []
    refused = [a for a in [*answers, batch] if isinstance(a, BaseException)]
    for error in refused:
        print(f"refused: {error!r}")
    return jobs, len(refused)


def api_of(stack: Stack) -> Service:
    return next(s for s in stack.services if s.name == "api")


async def test_submits_to_a_full_redis_are_accepted_once_and_run_when_it_has_room(
    full_redis: FullRedis, full_stack: tuple[Stack, str], client: AsyncClient
) -> None:
    """Every submit while Redis refuses writes answers OK with exactly one row each (before:
    INTERNAL, and the jobs ran 58 s later at the reconciler's pass); GetJob says why they
    wait; cancel and RetryJob answer as the database says; health stays SERVING and reports
    the condition by name; once Redis has room the API's retries run every job in seconds."""
    stack, database_url = full_stack
    api = api_of(stack)
    warm = await client.submit("noop")  # the worker is up and claiming
    await until_settled(database_url, {warm.id: JobState.SUCCEEDED})

    full_redis.fill()
    jobs, failed = await submit_while_full(client)
    print(f"\nredis full: {SINGLES + BULK} submits, {len(jobs)} OK, {failed} failed")
    assert failed == 0 and len(jobs) == SINGLES + BULK

    for job in (jobs[0], jobs[-1]):  # a single submit's and a bulk's
        seen = await client.get(job.id)
        assert seen.state == sdk.JobState.QUEUED
        assert seen.blocked_reason == OOM_REASON
        assert seen.raw.blocked == job_pb2.BlockedReason(
            kind=job_pb2.BLOCKED_KIND_ENQUEUE_PENDING, cause="redis refused it (out of memory)"
        )
    # A cancel and a replay are committed too, and answered as the database has them.
    cancelled, replayed = jobs[1].id, jobs[2].id
    assert (await client.cancel(cancelled)).state == sdk.JobState.CANCELLED
    assert (await client.get(cancelled)).state == sdk.JobState.CANCELLED
    assert (await client.cancel(replayed)).state == sdk.JobState.CANCELLED
    assert (await client.retry(replayed)).state == sdk.JobState.QUEUED

    await until_health(api.addr, REDIS_WRITES_HEALTH, NOT_SERVING)
    assert await health(api.addr) == SERVING
    assert value(scrape(api), "conveyor_redis_writable") == 0
    assert WARNING_RE.search(api.log.read_text()), api.tail()

    rows = states(database_url)
    duplicates = len(rows) - 1 - len({job.id for job in jobs})
    print(f"redis full: {len(rows) - 1} rows for {len(jobs)} accepted jobs, {duplicates} dup")
    assert set(rows) == {warm.id, *(job.id for job in jobs)} and duplicates == 0

    full_redis.free()
    expected = {job.id: JobState.SUCCEEDED for job in jobs} | {cancelled: JobState.CANCELLED}
    seconds = await until_settled(database_url, expected)
    print(f"redis full: all {len(expected)} jobs settled {seconds:.2f} s after it had room")
    assert seconds < 2.0, "run at once once Redis has room (measured 0.13-0.72 s)"
    assert states(database_url)[cancelled] == (JobState.CANCELLED, 0)  # it never ran
    await until_health(api.addr, REDIS_WRITES_HEALTH, SERVING)
    assert value(scrape(api), "conveyor_redis_writable") == 1
    assert stack.stop_all() == {"api-0": 0, "worker-1": 0}


async def test_a_refusal_before_any_commit_is_unavailable_with_details(
    full_redis: FullRedis, database_url: str
) -> None:
    """Redis refusing a write is `RedisRefused` (UNAVAILABLE, ErrorInfo + RetryInfo), not a
    bare ResponseError that the error boundary answers INTERNAL; a script's own error stays
    a bug; the rate limiter lets calls through a Redis that refuses writes, as it does
    through one it cannot reach; the health probe names the condition."""
    settings = Settings(redis_url=full_redis.server.url, database_url=database_url)
    client = connect(settings.redis_url)
    queue = RedisQueue(client, settings)
    try:
        full_redis.fill()
        job = JobSpec(type="noop").new_job(
            OWNER, defaults=JobDefaults(3, 60_000, FALLBACK_RETRY), now=0
        )
        with pytest.raises(RedisRefused) as refused:
            await queue.enqueue([job])
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        details = refused.value.details()
        info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
        assert details[0].Unpack(info) and info.metadata["redis"] == "out of memory"
        assert details[1].Unpack(retry) and retry.retry_delay.seconds == 1
        limiter = RateLimiter(client, queue.scripts)
        await limiter.take(OWNER, Kind.SUBMIT, Limit(10, 10))  # let through, not refused
        with pytest.raises(redis.exceptions.ResponseError):  # a bug stays one
            await client.eval("return redis.call('NOSUCHCOMMAND')", 0)
        assert await queue.refused_writes() == "out of memory"
        full_redis.free()
        assert await queue.refused_writes() is None
    finally:
        await client.aclose()


async def until_logged(service: Service, text: str) -> None:
    """Poll a service's log for `text` (what it says when it meets the condition)."""
    deadline = time.monotonic() + 10
    while text not in service.log.read_text(errors="replace"):
        assert service.proc.poll() is None, f"{service.name} died:\n{service.tail()}"
        assert time.monotonic() < deadline, f"{service.name} never said {text!r}:\n{service.tail()}"
        await asyncio.sleep(0.1)


async def test_worker_and_reconciler_ride_out_a_full_redis(
    full_redis: FullRedis, full_stack: tuple[Stack, str]
) -> None:
    """A worker's announcements and the scheduler's reconciler meet Redis refusing
    their scripts, back off as from an outage, and work again once it has room (before: the
    refusal was no outage, so it ended the loop that met it)."""
    stack, database_url = full_stack
    env = {"CONVEYOR_RECONCILE_INTERVAL_SECONDS": "0.3", "CONVEYOR_REDIS_CHECK_SECONDS": "0.1"}
    stack.start("api")
    worker = stack.start("worker")
    scheduler = stack.start("scheduler", env=env)
    full_redis.fill()
    await until_logged(scheduler, "reconciler: redis refused the write (out of memory)")
    await until_logged(worker, "not announced: redis refused the write (out of memory)")
    full_redis.free()
    async with AsyncClient(stack.api_addr, api_key=stack.create_key(OWNER)) as client:
        job = await client.submit("noop")
        seconds = await until_settled(database_url, {job.id: JobState.SUCCEEDED})
    print(f"\nredis full then freed: a job submitted after ran in {seconds:.2f} s")
    assert stack.stop_all() == {"api-0": 0, "worker-1": 0, "scheduler-2": 0}
