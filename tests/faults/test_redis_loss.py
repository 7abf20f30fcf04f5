"""Redis loses its data; PostgreSQL does not, and no job is lost.

PostgreSQL is the source of truth and Redis only the hot copy, so whatever Redis forgets the
reconciler (in `conveyor scheduler`) puts back from the database (see
`conveyor.scheduling.reconciler`).
Each test builds a stack of its own (Redis, a database, real api/worker/scheduler processes)
and checks the outcome in the database, where it is durable:

- a FLUSHALL in the middle of a run loses no job;
- a Redis restart without persistence (it comes back empty) loses no job, and every service
  rides out the outage by itself;
- committed jobs that never reached Redis (a submitter killed between commit and enqueue)
  are enqueued again by the reconciler and run exactly once, even with two schedulers
  reconciling at the same time.

Delivery is at least once: a job running when Redis forgets it is run again, so the first two
tests count re-runs instead of forbidding them. Run with `-s` to see each test's counts.
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

import grpc
import psycopg
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conveyor.client import AsyncClient, submit_request
from conveyor.db import Database, JobStore, migrate
from conveyor.db.bulk import psycopg_dsn
from conveyor.embedded import EmbeddedRedis, free_port
from conveyor.jobs.model import FALLBACK_RETRY, JobDefaults, JobSpec, JobState, now_ms
from conveyor.redis.keys import EPOCH_KEY, RECONCILE_LOCK, QueueKeys
from tests.handlers import lines
from tests.processes import Service, Stack, fresh_database, make_env

OWNER = "redisloss"
JOBS = 300
# Generous: this machine is shared with other test runs.
SETTLE_SECONDS = 150.0
POLL_SECONDS = 0.5

# Tests 1 and 2 push the periodic pass out of reach, so that recovery has to come from the
# reconciler noticing the loss (its `cv:epoch` marker gone), which it must do at once.
LOSS_TIMINGS = {
    "CONVEYOR_REDIS_CHECK_SECONDS": "0.2",
    "CONVEYOR_RECONCILE_INTERVAL_SECONDS": "3600",
}
# Test 3 relies on the periodic pass, made frequent here; the test also keeps dropping the pass
# lock, so that both schedulers reconcile on every turn and their passes overlap.
PERIODIC_TIMINGS = {
    "CONVEYOR_REDIS_CHECK_SECONDS": "0.05",
    "CONVEYOR_RECONCILE_INTERVAL_SECONDS": "0.25",
    "CONVEYOR_LOG_LEVEL": "DEBUG",  # passes that change nothing are logged at DEBUG
}

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

LOSS_DETECTED = "redis holds no epoch marker"
LONG_JOBS = 4
LONG_SECONDS = 4.0
PASS_RE = re.compile(
    r"reconciler: checked (\d+) unfinished jobs; restored (\d+), replayed (\d+), repaired (\d+)"
)


@dataclass
class LossStack:
    """One test's own servers and services; `run_log` is where the handlers log their runs."""

    stack: Stack
    server: EmbeddedRedis
    database_url: str
    run_log: Path

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.server.url, decode_responses=True, socket_timeout=10)


@pytest.fixture
def loss_stack(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[LossStack]:
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    services: list[Service] = []
    try:
        suffix = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[-30:]
        url = fresh_database(database_url, f"conveyor_redisloss_{suffix}")
        migrate(url)
        logs = tmp_path / "logs"
        logs.mkdir()
        stack = Stack(make_env(server.url, url), logs, services)
        yield LossStack(stack, server, url, tmp_path / "runs.log")
    finally:
        # A test that passed has stopped its services (and checked their exit codes); after
        # a failure, leave no process behind.
        for service in services:
            if service.proc.poll() is None:
                service.kill()
        server.stop()


# -- helpers ------------------------------------------------------------------------------


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


def redis_sets(client: redis.Redis, queue: str) -> dict[str, int]:
    """How many job ids the queue's ready, delayed and leases sets hold."""
    k = QueueKeys(queue)
    return {
        "ready": int(client.zcard(k.ready)),
        "delayed": int(client.zcard(k.delayed)),
        "running": int(client.zcard(k.leases)),
    }


def redis_states(client: redis.Redis, queue: str, ids: list[str]) -> dict[str, int]:
    """The hot-state `state` of each id Redis holds (ids it lacks are left out)."""
    k = QueueKeys(queue)
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(k.job(job_id), "state")
    states = pipe.execute()
    return {i: int(s) for i, s in zip(ids, states, strict=True) if s is not None}


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


async def health(addr: str) -> int:
    async with grpc.aio.insecure_channel(addr) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=2
        )
        return int(reply.status)


async def all_report(services: list[Service], status: int) -> bool:
    for service in services:
        try:
            if await health(service.addr) != status:
                return False
        except grpc.RpcError:
            return False
    return True


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


async def run_through_loss(
    env: LossStack, queue: str, label: str, lose_data: Callable[[], Awaitable[None]]
) -> None:
    """Submit JOBS jobs, call `lose_data` once some have succeeded and most still wait, then
    check that every job ends SUCCEEDED in the database and that Redis settles."""
    stack = env.stack
    scheduler = start_loss_stack(env, queue)
    key = stack.create_key(OWNER)
    client = env.client()

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
        at_fault = redis_sets(client, queue)
        running_at_fault = set(client.zrange(QueueKeys(queue).leases, 0, -1))
        jobs = await db_jobs(conn, queue)
        done_before = count_state(jobs, JobState.SUCCEEDED)
        detected_before = scheduler.log.read_text(errors="replace").count(LOSS_DETECTED)
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
        lost = JOBS - count_state(jobs, JobState.SUCCEEDED)
        dead = count_state(jobs, JobState.DEAD)
        assert settled and lost == 0, diagnose(env, queue, jobs, ids)
        assert dead == 0

    # Redis converges too: nothing left in line or leased, every hot state it holds finished
    # (jobs that finished before the loss are simply gone from it). A copy restored from a
    # read that raced a job's last write runs again here, and is refused by the database.
    async def redis_settled() -> bool:
        if any(redis_sets(client, queue).values()):
            return False
        states = redis_states(client, queue, ids)
        return all(s == int(JobState.SUCCEEDED) for s in states.values())

    assert await wait_until(stack, redis_settled, 60), (
        f"redis still holds unfinished work: {redis_sets(client, queue)}, states "
        f"{Counter(redis_states(client, queue, ids).values())}\n{diagnose(env, queue, jobs, ids)}"
    )

    stop_all(stack)
    logged = [line.split() for line in lines(env.run_log)]
    started = Counter(job_id for what, job_id, _ in logged if what == "started")
    effects = Counter(job_id for what, job_id, _ in logged if what == "effect")
    never = [i for i in ids if started[i] == 0]
    rerun = sum(started[i] - 1 for i in ids if started[i] > 1)
    long_running = sum(1 for i in ids[:LONG_JOBS] if i in running_at_fault)
    detected = scheduler.log.read_text(errors="replace").count(LOSS_DETECTED) - detected_before
    print(
        f"\nredis {label}: {JOBS} jobs, {lost} lost, {rerun} re-run "
        f"({sum(1 for i in ids if started[i] > 1)} jobs started more than once; at the fault "
        f"{done_before} succeeded, {at_fault['running']} running ({long_running} long ones), "
        f"{at_fault['ready']} queued in redis; loss noticed {detected}x by the reconciler)"
    )
    assert not never, f"SUCCEEDED without ever starting: {never[:10]}"
    twice = [(i, n) for i, n in effects.items() if n > 1]
    assert not twice, f"ctx.once let an effect happen twice across the loss: {twice[:10]}"
    assert detected >= 1, "the reconciler never noticed that Redis lost its data"


async def insert_orphans_and_wait(
    env: LossStack, queue: str
) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """Commit JOBS `test.touch` rows straight into the database, as a submitter killed
    between commit and enqueue leaves them, in a few batches (so that passes meet jobs in
    every state); then wait until the database holds them all SUCCEEDED."""
    defaults = JobDefaults(5, 60_000, FALLBACK_RETRY)
    db = Database(env.database_url)
    store = JobStore(db)
    ids: list[str] = []
    try:
        for _batch in range(6):
            made = [
                JobSpec(
                    type="test.touch",
                    payload={"log": str(env.run_log), "seconds": 0.05},
                    queue=queue,
                ).new_job(OWNER, defaults=defaults, now=now_ms())
                for _ in range(JOBS // 6)
            ]
            stored = await store.insert(made)
            assert all(not isinstance(r, Exception) for r in stored), stored
            ids += [job.id for job in made]
            await asyncio.sleep(0.2)
    finally:
        await store.close()
        await db.close()

    dsn = psycopg_dsn(env.database_url)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        jobs: dict[str, tuple[int, int]] = {}

        async def all_succeeded() -> bool:
            nonlocal jobs
            jobs = await db_jobs(conn, queue)
            return count_state(jobs, JobState.SUCCEEDED) == len(ids)

        settled = await wait_until(env.stack, all_succeeded, SETTLE_SECONDS)
        assert settled, diagnose(env, queue, jobs, ids)
    return ids, jobs


# -- tests --------------------------------------------------------------------------------


@pytest.mark.timeout(300)
async def test_no_job_lost_after_redis_flushall(loss_stack: LossStack) -> None:
    """Guards "0 jobs lost after Redis FLUSHALL": jobs committed and waiting or running when
    Redis is flushed all end SUCCEEDED in the database (none lost, none DEAD)."""
    env = loss_stack

    async def flushall() -> None:
        env.client().flushall()

    await run_through_loss(env, "flushloss", "flushall", flushall)


@pytest.mark.timeout(300)
async def test_no_job_lost_after_redis_restart_without_persistence(
    loss_stack: LossStack,
) -> None:
    """Guards "0 jobs lost after a Redis restart with persistence off": Redis is stopped and
    started again empty mid-run; every service notices (NOT_SERVING), recovers by itself
    (SERVING again, no crash) and every job ends SUCCEEDED in the database.

    EmbeddedRedis runs with `--save ''` and `--appendonly no`; the test checks that no RDB or
    AOF file was left behind, so the restarted Redis really starts empty."""
    env = loss_stack

    async def restart() -> None:
        services = list(env.stack.services)
        env.server.stop()
        leftovers = [
            p.name for p in env.server.directory.iterdir() if p.name.startswith(("dump", "append"))
        ]
        assert not leftovers, f"Redis persisted {leftovers}: the restart would not be empty"
        # Down until every service has seen the outage (its health follows Redis).
        assert await wait_until(env.stack, lambda: all_report(services, NOT_SERVING), 30, 0.1), (
            "services did not notice that Redis went away"
        )
        env.server.start()
        log = env.server.log_path.read_text(errors="replace")
        assert "DB loaded from" not in log, "the restarted Redis loaded data from disk"
        assert await wait_until(env.stack, lambda: all_report(services, SERVING), 30, 0.2), (
            "services did not recover after Redis came back"
        )

    await run_through_loss(env, "restartloss", "restart (persistence off)", restart)


@pytest.mark.timeout(300)
async def test_reconciler_enqueues_committed_jobs_missing_from_redis_exactly_once(
    loss_stack: LossStack,
) -> None:
    """Guards "the reconciler finds committed jobs that are not in Redis (process killed
    between commit and enqueue) and enqueues them again, idempotently": job rows are inserted
    straight into the database (never enqueued) while two schedulers reconcile at the same
    time; every job runs exactly once (one line each in the handler's log, attempt 1), and
    the two reconcilers together restore each job exactly once.

    The replicas normally take turns through a lock; the test keeps deleting it (as if every
    pass outlived it on a slow machine), so both reconcile on every turn, concurrently, while
    the jobs are inserted, restored, claimed, run and recorded."""
    env = loss_stack
    stack = env.stack
    queue = "orphans"
    stack.start("worker", "--queues", queue, "--concurrency", "4")
    stack.start("worker", "--queues", queue, "--concurrency", "4", env=stack.worker_env())
    schedulers = [
        stack.start("scheduler", env=PERIODIC_TIMINGS),
        stack.start(
            "scheduler",
            env={**PERIODIC_TIMINGS, "CONVEYOR_SCHEDULER_ADDR": f"127.0.0.1:{free_port()}"},
        ),
    ]
    client = env.client()

    async def epoch_set() -> bool:
        return bool(client.exists(EPOCH_KEY))

    # Past the start-up pass (no marker yet): the rows below are found by periodic passes.
    assert await wait_until(stack, epoch_set, 30, 0.1), "the reconciler never set its marker"

    async def drop_the_lock() -> None:
        while True:
            client.delete(RECONCILE_LOCK)
            await asyncio.sleep(0.02)

    contention = asyncio.create_task(drop_the_lock())
    try:
        ids, jobs = await insert_orphans_and_wait(env, queue)
    finally:
        contention.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await contention

    async def redis_settled() -> bool:
        return not any(redis_sets(client, queue).values())

    assert await wait_until(stack, redis_settled, 60), diagnose(env, queue, jobs, ids)
    stop_all(stack)

    runs = [line.split() for line in lines(env.run_log)]
    ran = Counter(job_id for job_id, _ in runs)
    twice = sorted(i for i, n in ran.items() if n > 1)
    missing = [i for i in ids if ran[i] == 0]
    per_scheduler = []
    for scheduler in schedulers:
        passes = PASS_RE.findall(scheduler.log.read_text(errors="replace"))
        per_scheduler.append((len(passes), sum(int(p[1]) for p in passes)))
    restored = sum(r for _, r in per_scheduler)
    print(
        f"\nreconciler, 2 schedulers: {len(ids)} jobs committed but never enqueued, "
        f"{restored} restored ({' + '.join(f'{r} in {n} passes' for n, r in per_scheduler)}), "
        f"{len(missing)} lost, {len(twice)} run twice"
    )
    assert not missing, f"never ran: {missing[:10]}"
    assert not twice, f"ran more than once: {[(i, ran[i]) for i in twice[:10]]}"
    assert set(ran) == set(ids), f"unexpected ids in the log: {sorted(set(ran) - set(ids))[:10]}"
    assert all(attempt == "1" for _, attempt in runs), "a job ran as a later attempt"
    assert all(attempt == 1 for _, attempt in jobs.values()), "the database saw a second attempt"
    assert all(n >= 3 for n, _ in per_scheduler), f"a scheduler hardly reconciled: {per_scheduler}"
    assert restored == len(ids), f"{restored} restores for {len(ids)} jobs: not idempotent"
