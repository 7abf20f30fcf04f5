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
import re
from collections import Counter

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conveyor.db import Database, JobStore
from conveyor.db.bulk import psycopg_dsn
from conveyor.embedded import EmbeddedRedis, free_port
from conveyor.jobs.model import FALLBACK_RETRY, JobDefaults, JobSpec, JobState, now_ms
from conveyor.redis.keys import EPOCH_KEY, RECONCILE_LOCK
from tests.faults.losses import (
    JOBS,
    OWNER,
    SETTLE_SECONDS,
    LossStack,
    count_state,
    db_jobs,
    diagnose,
    redis_sets,
    run_through_loss,
    stop_all,
    wait_until,
)
from tests.handlers import lines
from tests.processes import Service

# Test 3 relies on the periodic pass, made frequent here; the test also keeps dropping the pass
# lock, so that both schedulers reconcile on every turn and their passes overlap.
PERIODIC_TIMINGS = {
    "CONVEYOR_REDIS_CHECK_SECONDS": "0.05",
    "CONVEYOR_RECONCILE_INTERVAL_SECONDS": "0.25",
    "CONVEYOR_LOG_LEVEL": "DEBUG",  # passes that change nothing are logged at DEBUG
}

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

PASS_RE = re.compile(
    r"reconciler: checked (\d+) unfinished jobs; restored (\d+), replayed (\d+), repaired (\d+)"
)


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
    server = env.server
    assert isinstance(server, EmbeddedRedis)

    async def restart() -> None:
        services = list(env.stack.services)
        server.stop()
        leftovers = [
            p.name for p in server.directory.iterdir() if p.name.startswith(("dump", "append"))
        ]
        assert not leftovers, f"Redis persisted {leftovers}: the restart would not be empty"
        # Down until every service has seen the outage (its health follows Redis).
        assert await wait_until(env.stack, lambda: all_report(services, NOT_SERVING), 30, 0.1), (
            "services did not notice that Redis went away"
        )
        server.start()
        log = server.log_path.read_text(errors="replace")
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
