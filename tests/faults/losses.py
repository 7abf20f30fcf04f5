"""What the Redis-loss fault tests share: a stack of their own per test (a Redis, one
server or a cluster, a database, real api/worker/scheduler processes), and a run of JOBS
jobs through a fault that makes Redis lose or move data, checked in the database.

Delivery is at least once: a job running when Redis forgets it is run again, so the runs
count re-runs instead of forbidding them. Run with `-s` to see each run's counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis

from conveyor.client import AsyncClient, submit_request
from conveyor.db import migrate
from conveyor.db.bulk import psycopg_dsn
from conveyor.embedded import EmbeddedRedis, EmbeddedRedisCluster
from conveyor.jobs.model import JobState
from conveyor.jobs.shards import placements
from conveyor.redis.connection import seed_nodes
from conveyor.redis.keys import EPOCH_KEY, QueueKeys
from tests.handlers import lines
from tests.processes import Service, Stack, fresh_database, make_env

OWNER = "redisloss"
JOBS = 300
# Generous: this machine is shared with other test runs.
SETTLE_SECONDS = 150.0
POLL_SECONDS = 0.5

# The runs push the periodic pass out of reach, so that recovery has to come from the
# reconciler noticing the loss (its `cv:epoch` marker gone, or a Redis process replaced),
# which it must do at once.
LOSS_TIMINGS = {
    "CONVEYOR_REDIS_CHECK_SECONDS": "0.2",
    "CONVEYOR_RECONCILE_INTERVAL_SECONDS": "3600",
}
LOSS_DETECTED = "redis holds no epoch marker"
LONG_JOBS = 4
LONG_SECONDS = 4.0


@dataclass
class LossStack:
    """One test's own servers and services; `run_log` is where the handlers log their runs."""

    stack: Stack
    server: EmbeddedRedis | EmbeddedRedisCluster
    database_url: str
    run_log: Path

    def client(self) -> Any:
        """A client of the test's Redis (redis-py's sync cluster client on a cluster)."""
        if isinstance(self.server, EmbeddedRedisCluster):
            host, port = seed_nodes(self.server.url)[0]
            return redis.RedisCluster(host=host, port=port, decode_responses=True)
        return redis.Redis.from_url(self.server.url, decode_responses=True, socket_timeout=10)


@contextlib.contextmanager
def loss_stack_of(
    server: EmbeddedRedis | EmbeddedRedisCluster, database_url: str, folder: Path, name: str
) -> Iterator[LossStack]:
    """A stack on `server` (started here, stopped after) and a database of its own named
    after the test; no service is started yet."""
    server.start()
    services: list[Service] = []
    try:
        suffix = re.sub(r"[^a-z0-9]+", "_", name.lower())[-30:]
        url = fresh_database(database_url, f"conveyor_redisloss_{suffix}")
        migrate(url)
        logs = folder / "logs"
        logs.mkdir()
        cluster = isinstance(server, EmbeddedRedisCluster)
        stack = Stack(make_env(server.url, url, cluster=cluster), logs, services)
        yield LossStack(stack, server, url, folder / "runs.log")
    finally:
        # A test that passed has stopped its services (and checked their exit codes); after
        # a failure, leave no process behind.
        for service in services:
            if service.proc.poll() is None:
                service.kill()
        server.stop()


# -- helpers -------------------------------------------------------------------------------


def check_alive(stack: Stack) -> None:
    """Fail at once, with its log, if a service died (none is killed on purpose here)."""
    for service in stack.services:
        code = service.proc.poll()
        if code is not None and not service.killed:
            raise AssertionError(
                f"{service.name} exited with code {code} ({service.log}):\n{service.tail(60)}"
            )


async def wait_until(
    stack: Stack,
    condition: Callable[[], Awaitable[bool]],
    seconds: float,
    interval: float = POLL_SECONDS,
) -> bool:
    """Poll `condition` (there is no push channel for what these tests wait on) until it
    holds or `seconds` pass; fails early if a service dies meanwhile."""
    deadline = time.monotonic() + seconds
    while True:
        check_alive(stack)
        if await condition():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)


async def db_jobs(conn: psycopg.AsyncConnection[Any], queue: str) -> dict[str, tuple[int, int]]:
    """(state, attempt) of every job of `queue`, read from the database."""
    cur = await conn.execute("SELECT id, state, attempt FROM jobs WHERE queue = %s", (queue,))
    return {str(r[0]): (int(r[1]), int(r[2])) for r in await cur.fetchall()}


def count_state(jobs: dict[str, tuple[int, int]], state: JobState) -> int:
    return sum(1 for s, _ in jobs.values() if s == int(state))


def redis_sets(client: Any, queue: str, shards: int = 1) -> dict[str, int]:
    """How many job ids the queue's ready, delayed and leases sets hold (in all shards)."""
    keys = [QueueKeys(p) for p in placements(queue, shards)]
    return {
        "ready": sum(int(client.zcard(k.ready)) for k in keys),
        "delayed": sum(int(client.zcard(k.delayed)) for k in keys),
        "running": sum(int(client.zcard(k.leases)) for k in keys),
    }


def redis_states(client: Any, queue: str, ids: list[str], shards: int = 1) -> dict[str, int]:
    """The hot-state `state` of each id Redis holds, in whichever shard (ids it lacks are
    left out)."""
    found: dict[str, int] = {}
    for place in placements(queue, shards):
        pipe = client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(QueueKeys(place).job(job_id), "state")
        states = pipe.execute()
        found.update({i: int(s) for i, s in zip(ids, states, strict=True) if s is not None})
    return found


def diagnose(env: LossStack, queue: str, jobs: dict[str, tuple[int, int]], ids: list[str]) -> str:
    """Where the unfinished jobs stand in the database and in Redis, and the services' logs."""
    stuck = [i for i in ids if jobs.get(i, (0, 0))[0] != int(JobState.SUCCEEDED)]
    out = [f"{len(stuck)} of {len(ids)} jobs not SUCCEEDED in the DB; logs in {env.stack.logs}"]
    try:
        client = env.client()
        k = QueueKeys(queue)
        out.append(f"redis sets: {redis_sets(client, queue)}; epoch {client.get(EPOCH_KEY)!r}")
        for job_id in stuck[:10]:
            state, attempt = jobs.get(job_id, (-1, -1))
            hot = client.hgetall(k.job(job_id))
            where = {
                "ready": client.zscore(k.ready, job_id),
                "delayed": client.zscore(k.delayed, job_id),
                "leases": client.zscore(k.leases, job_id),
            }
            out.append(
                f"  {job_id}: db state {state} attempt {attempt}; redis {hot!r}; sets {where}"
            )
    except redis.RedisError as exc:
        out.append(f"redis unreadable: {exc}")
    for service in env.stack.services:
        out.append(f"--- {service.name} ({service.log}):\n{service.tail(25)}")
    return "\n".join(out)


def stop_all(stack: Stack) -> None:
    codes = stack.stop_all()
    assert all(code == 0 for code in codes.values()), f"unclean shutdown: {codes}"


def start_loss_stack(env: LossStack, queue: str) -> Service:
    """api, two workers (4 slots each) serving `queue`, and one scheduler; its scheduler."""
    stack = env.stack
    stack.env.update(LOSS_TIMINGS)
    stack.start("api")
    stack.start("worker", "--queues", queue, "--concurrency", "4")
    stack.start("worker", "--queues", queue, "--concurrency", "4", env=stack.worker_env())
    return stack.start("scheduler")


@dataclass(frozen=True)
class LossCounts:
    """What a run through a fault counted: jobs started more than once (`rerun`), the
    leases held when the fault came, and the seconds from the fault until every job had
    succeeded."""

    jobs: int
    lost: int
    rerun: int
    running_at_fault: int
    seconds: float


async def run_through_loss(
    env: LossStack,
    queue: str,
    label: str,
    lose_data: Callable[[], Awaitable[None]],
    *,
    noticed: str | None = LOSS_DETECTED,
    shards: int = 1,
) -> LossCounts:
    """Submit JOBS jobs, call `lose_data` once some have succeeded and most still wait, then
    check that every job ends SUCCEEDED in the database and that Redis settles. `noticed`:
    what the scheduler must log (at least once) on noticing the fault; None: nothing.
    `shards`: the queue is created with that many shards first."""
    stack = env.stack
    scheduler = start_loss_stack(env, queue)
    key = stack.create_key(OWNER)
    client = env.client()
    if shards > 1:
        async with AsyncClient(stack.api_addr, api_key=stack.create_key("ops", "admin")) as ops:
            await ops.update_queue_limits(queue, shards=shards)

    async def epoch_set() -> bool:
        return bool(client.exists(EPOCH_KEY))

    assert await wait_until(stack, epoch_set, 30, 0.1), "the reconciler never set its marker"

    # `test.effect` logs "started <id> <attempt>" as each run begins (so re-runs are counted
    # even when a run is stopped half-way) and "effect <id> <attempt>" for its side effect,
    # which `ctx.once` lets happen at most once per job. Mostly short jobs, which a worker
    # usually finishes and records before it notices that its lease is gone; the first
    # LONG_JOBS (claimed first) are still running at the fault, so their workers must stop
    # them and they must run again from the database's copy.
    rng = random.Random(20240611)
    seconds = [LONG_SECONDS] * LONG_JOBS + [
        round(rng.uniform(0.05, 0.2), 3) for _ in range(JOBS - LONG_JOBS)
    ]
    requests = [
        submit_request(
            "test.effect", {"log": str(env.run_log), "seconds": s}, queue=queue, max_attempts=10
        )
        for s in seconds
    ]
    async with AsyncClient(stack.api_addr, api_key=key) as api:
        ids = [job.id for job in await api.submit_many(requests)]
    assert len(set(ids)) == JOBS

    dsn = psycopg_dsn(env.database_url)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        jobs: dict[str, tuple[int, int]] = {}

        async def some_succeeded() -> bool:
            nonlocal jobs
            jobs = await db_jobs(conn, queue)
            return count_state(jobs, JobState.SUCCEEDED) >= JOBS // 10

        assert await wait_until(stack, some_succeeded, SETTLE_SECONDS, 0.1), diagnose(
            env, queue, jobs, ids
        )
        at_fault = redis_sets(client, queue, shards)
        running_at_fault = {
            job_id
            for place in placements(queue, shards)
            for job_id in client.zrange(QueueKeys(place).leases, 0, -1)
        }
        jobs = await db_jobs(conn, queue)
        done_before = count_state(jobs, JobState.SUCCEEDED)
        detected_before = scheduler.log.read_text(errors="replace").count(noticed or "\0")
        faulted = time.monotonic()
        await lose_data()
        assert JOBS - done_before >= JOBS // 2, (
            f"only {JOBS - done_before} jobs were unfinished when Redis lost its data: "
            "the fault came too late to prove anything"
        )

        async def all_succeeded() -> bool:
            nonlocal jobs
            jobs = await db_jobs(conn, queue)
            return count_state(jobs, JobState.SUCCEEDED) == JOBS

        settled = await wait_until(stack, all_succeeded, SETTLE_SECONDS)
        recovered = time.monotonic() - faulted
        lost = JOBS - count_state(jobs, JobState.SUCCEEDED)
        dead = count_state(jobs, JobState.DEAD)
        assert settled and lost == 0, diagnose(env, queue, jobs, ids)
        assert dead == 0

    # Redis converges too: nothing left in line or leased, every hot state it holds finished
    # (jobs that finished before the loss are simply gone from it). A copy restored from a
    # read that raced a job's last write runs again here, and is refused by the database.
    async def redis_settled() -> bool:
        if any(redis_sets(client, queue, shards).values()):
            return False
        states = redis_states(client, queue, ids, shards)
        return all(s == int(JobState.SUCCEEDED) for s in states.values())

    assert await wait_until(stack, redis_settled, 60), (
        f"redis still holds unfinished work: {redis_sets(client, queue, shards)}, states "
        f"{Counter(redis_states(client, queue, ids, shards).values())}\n"
        f"{diagnose(env, queue, jobs, ids)}"
    )

    stop_all(stack)
    logged = [line.split() for line in lines(env.run_log)]
    started = Counter(job_id for what, job_id, _ in logged if what == "started")
    effects = Counter(job_id for what, job_id, _ in logged if what == "effect")
    never = [i for i in ids if started[i] == 0]
    rerun = sum(started[i] - 1 for i in ids if started[i] > 1)
    long_running = sum(1 for i in ids[:LONG_JOBS] if i in running_at_fault)
    detected = scheduler.log.read_text(errors="replace").count(noticed or "\0") - detected_before
    print(
        f"\nredis {label}: {JOBS} jobs, {lost} lost, {rerun} re-run "
        f"({sum(1 for i in ids if started[i] > 1)} jobs started more than once; at the fault "
        f"{done_before} succeeded, {at_fault['running']} running ({long_running} long ones), "
        f"{at_fault['ready']} queued in redis; loss noticed {detected}x by the reconciler; "
        f"all succeeded {recovered:.1f} s after the fault)"
    )
    assert not never, f"SUCCEEDED without ever starting: {never[:10]}"
    twice = [(i, n) for i, n in effects.items() if n > 1]
    assert not twice, f"ctx.once let an effect happen twice across the loss: {twice[:10]}"
    assert noticed is None or detected >= 1, f"the reconciler never logged {noticed!r}"
    return LossCounts(JOBS, lost, rerun, at_fault["running"], recovered)
