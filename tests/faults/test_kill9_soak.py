"""Kill -9 soak: 0 jobs lost across 100 kill -9 of workers during a 2,000-job run.

Guards the issue's reliability requirement end to end, with real processes: an api and a
pool of workers (their own Redis and PostgreSQL database) run 2,000 `test.touch` jobs while
a killer, each time a replacement worker is serving, SIGKILLs the oldest worker that its
WorkerControl status shows running jobs, 100 times. The jobs go in in waves paced by the
kills, so every kill lands mid-run. Once the kills are done the surviving workers finish the
run, and the database must show every job SUCCEEDED (none lost, none DEAD), each with one
SUCCEEDED attempt as its last and only LOST attempts before it (killed workers' attempts,
reclaimed after their 2 s lease and run again); the touch log must show every job ran.

Run with `pytest -s` to see the one-line summary of the counts.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import TupleRow

from conveyor.cli.dev import wait_serving
from conveyor.client import AsyncClient, submit_request
from conveyor.db import migrate
from conveyor.db.bulk import psycopg_dsn
from conveyor.embedded import EmbeddedRedis
from tests.processes import CONVEYOR, Service, Stack, fresh_database, make_env, worker_status

QUEUE = "kill9"
JOBS = 2000
KILLS = 100
POOL = 3  # workers serving between kills; a kill happens once a 4th is serving
STARTING = 2  # replacement workers starting at once (a start takes a second or two)
CONCURRENCY = 8
SECONDS = 0.5  # per job
MAX_ATTEMPTS = 100  # the most allowed: repeated kills cannot exhaust a job, so DEAD is a loss
# The jobs go in as the kills go on: before each kill, enough to keep TARGET unfinished,
# but RESERVE are held back for each kill still to come, and the rest before the last one.
TARGET = 2 * POOL * CONCURRENCY
RESERVE = 10
READY_SECONDS = 60.0  # for a worker to start
VICTIM_SECONDS = 60.0  # for a live worker to be running a job
DRAIN_SECONDS = 300.0  # for the survivors to finish the run

SUCCEEDED, DEAD = 4, 6  # JobState
OUTCOME_SUCCEEDED, OUTCOME_LOST = 1, 4  # AttemptOutcome
FINISHED = (4, 6, 7)  # SUCCEEDED, DEAD, CANCELLED


@pytest.fixture
def soak_stack(database_url: str, tmp_path: Path) -> Iterator[Stack]:
    """An api of its own over its own Redis and database; workers are started by the test.
    Teardown kills whatever the test left running (the test stops the rest gracefully)."""
    redis = EmbeddedRedis(tmp_path / "redis")
    redis.start()
    url = fresh_database(database_url, "conveyor_kill9")
    migrate(url)
    logs = tmp_path / "logs"
    logs.mkdir()
    stack = Stack(make_env(redis.url, url), logs)
    try:
        stack.start("api")
        yield stack
    finally:
        for service in stack.services:
            if service.proc.poll() is None:
                service.proc.kill()
                service.proc.wait()
        redis.stop()


@dataclass
class Pool:
    """The workers of the soak: started in parallel (so not through `Stack.start`, whose log
    names race), each with a worker id of its own so a LOST attempt names its victim."""

    stack: Stack
    started: int = 0
    live: deque[Service] = field(default_factory=deque)  # serving, oldest first
    ids: dict[int, str] = field(default_factory=dict)  # pid -> worker id

    async def start(self) -> Service:
        for _ in range(3):  # a free port taken meanwhile by another test is no Conveyor bug
            self.started += 1
            worker_id = f"kill9-w{self.started:03d}"
            env = {**self.stack.env, **self.stack.worker_env(), "CONVEYOR_WORKER_ID": worker_id}
            log = self.stack.logs / f"{worker_id}.log"
            proc = _spawn_worker(env, log)
            service = Service("worker", proc, log, env["CONVEYOR_WORKER_ADDR"])
            self.stack.services.append(service)
            self.ids[proc.pid] = worker_id
            serving = await asyncio.to_thread(wait_serving, service.addr, READY_SECONDS)
            if serving and proc.poll() is None:
                return service
            if proc.poll() is None:
                service.kill()
                raise AssertionError(f"{worker_id} did not become ready:\n{service.tail()}")
            self.stack.services.remove(service)  # it exited: nothing to stop at the end
            print(f"{worker_id} exited at start ({proc.returncode}), retrying:\n{service.tail()}")
        raise AssertionError(f"workers keep failing to start; see the logs in {self.stack.logs}")


def _spawn_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [CONVEYOR, "worker", "--queues", QUEUE, "--concurrency", str(CONCURRENCY)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def unfinished(conn: psycopg.AsyncConnection[TupleRow]) -> int:
    cur = await conn.execute("SELECT count(*) FROM jobs WHERE state <> ALL(%s)", (list(FINISHED),))
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.timeout(600)
async def test_no_job_lost_across_100_kill_9_of_workers(soak_stack: Stack, tmp_path: Path) -> None:
    stack = soak_stack
    began = time.monotonic()
    touch_log = tmp_path / "touch.log"
    payload = {"log": str(touch_log), "seconds": SECONDS}
    dsn = psycopg_dsn(stack.env["CONVEYOR_DATABASE_URL"])
    key = stack.create_key("kill9")
    admin = stack.create_key("kill9-ops", "admin")
    pool = Pool(stack)
    submitted: list[str] = []
    kills = kills_while_unfinished = 0
    victims: list[str] = []

    async def top_up() -> None:
        """Submit the next jobs: up to TARGET unfinished, within what later kills leave."""
        later = KILLS - kills - 1  # kills after the next one
        short = TARGET - await unfinished(conn) if later else JOBS
        total = min(JOBS - RESERVE * later, len(submitted) + short)
        if total > len(submitted):
            requests = [
                submit_request("test.touch", payload, queue=QUEUE, max_attempts=MAX_ATTEMPTS)
                for _ in range(total - len(submitted))
            ]
            for batch in range(0, len(requests), 1000):
                jobs = await client.submit_many(requests[batch : batch + 1000])
                submitted.extend(job.id for job in jobs)

    async def victim() -> Service:
        """The oldest live worker running a job right now (by its WorkerControl status)."""
        deadline = time.monotonic() + VICTIM_SECONDS
        while True:
            for worker in pool.live:
                if (await worker_status(worker, admin)).running_jobs:
                    return worker
            assert time.monotonic() < deadline, (
                f"no live worker ran a job for {VICTIM_SECONDS} s before kill {kills + 1}"
                f" ({len(submitted)} submitted); logs in {stack.logs}"
            )
            await top_up()
            await asyncio.sleep(0.1)

    async with (
        AsyncClient(stack.api_addr, api_key=key, timeout=60) as client,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
    ):
        pool.live.extend(await asyncio.gather(*(pool.start() for _ in range(POOL))))

        # The killer: each time a replacement is serving, kill -9 the oldest worker that is
        # running a job, so POOL workers serve between kills and several always survive.
        starting: set[asyncio.Task[Service]] = set()
        launched = 0
        try:
            while kills < KILLS:
                while len(starting) < STARTING and launched < KILLS:
                    starting.add(asyncio.create_task(pool.start()))
                    launched += 1
                done, starting = await asyncio.wait(starting, return_when=asyncio.FIRST_COMPLETED)
                pool.live.extend(task.result() for task in done)
                while len(pool.live) > POOL:
                    await top_up()
                    doomed = await victim()
                    if await unfinished(conn) > 0:
                        kills_while_unfinished += 1
                    doomed.kill()
                    pool.live.remove(doomed)
                    kills += 1
                    victims.append(pool.ids[doomed.proc.pid])
        finally:
            for task in starting:
                task.cancel()
        kill_seconds = time.monotonic() - began
        assert len(submitted) == JOBS

        # The survivors finish the run; the database is polled (no push channel for
        # "all done"), failing fast on a DEAD job.
        deadline = time.monotonic() + DRAIN_SECONDS
        while True:
            cur = await conn.execute("SELECT state, count(*) FROM jobs GROUP BY state")
            states = {state: n for state, n in await cur.fetchall()}
            if states.get(SUCCEEDED, 0) == JOBS or states.get(DEAD, 0) > 0:
                break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)

        cur = await conn.execute("SELECT id, state, attempt FROM jobs")
        jobs = {job_id: (state, attempt) for job_id, state, attempt in await cur.fetchall()}
        cur = await conn.execute(
            "SELECT job_id, attempt, outcome, worker_id FROM job_attempts ORDER BY job_id, attempt"
        )
        attempts: dict[str, list[tuple[int, int, str]]] = {}
        for job_id, number, outcome, worker_id in await cur.fetchall():
            attempts.setdefault(job_id, []).append((number, outcome, worker_id))

    running = [s for s in stack.services if not s.killed]
    stopped = await asyncio.gather(*(asyncio.to_thread(s.stop) for s in running))
    codes = {f"{s.name}-{s.proc.pid}": code for s, code in zip(running, stopped, strict=True)}
    elapsed = time.monotonic() - began

    # -- what the database holds ----------------------------------------------------------
    not_done = {i: jobs[i] for i in jobs if jobs[i][0] != SUCCEEDED}
    lost_jobs = set(submitted) - set(jobs)
    lost_attempts = [a for rows in attempts.values() for a in rows if a[1] == OUTCOME_LOST]
    victims_hit = {worker_id for _, _, worker_id in lost_attempts} & set(victims)
    max_attempt = max((attempt for _, attempt in jobs.values()), default=0)
    bad_history = {
        job_id: attempts.get(job_id, [])
        for job_id, (_, attempt) in jobs.items()
        if not _history_ok(attempts.get(job_id, []), attempt)
    }
    # Attempts the history lacks: none, even when a reclaimer is killed before it records
    # the attempt it took over from (the lost attempts pass on to the next reclaimer).
    gaps = {
        job_id: (attempt, attempts.get(job_id, []))
        for job_id, (_, attempt) in jobs.items()
        if attempt != len(attempts.get(job_id, []))
    }
    missing = sum(attempt - len(rows) for attempt, rows in gaps.values())
    ran = Counter(line.split()[0] for line in touch_log.read_text().splitlines())
    never_ran = set(submitted) - set(ran)

    print(
        f"\nkill9 soak: {len(jobs)} jobs, {kills} kills ({kills_while_unfinished} while jobs "
        f"were unfinished, {len(victims_hit)} with attempts in flight), "
        f"{len(lost_jobs) + len(not_done)} lost, {states.get(DEAD, 0)} dead, "
        f"{len(lost_attempts)} attempts lost and re-run, max attempt {max_attempt}, "
        f"{sum(ran.values())} executions, {missing} attempts missing from job_attempts; "
        f"kills done at {kill_seconds:.0f} s, all done at {elapsed:.0f} s"
    )
    for job_id, (attempt, rows) in list(gaps.items())[:5]:
        print(f"  job {job_id}: attempt {attempt}, recorded (attempt, outcome, worker) {rows}")
    where = f"(service logs in {stack.logs})"
    assert len(submitted) == JOBS and len(jobs) == JOBS, f"{len(jobs)} jobs in the database"
    assert not lost_jobs, f"jobs missing from the database: {sorted(lost_jobs)[:10]} {where}"
    assert not not_done, (
        f"{len(not_done)} jobs not SUCCEEDED (id: (state, attempt)): "
        f"{dict(list(not_done.items())[:10])}; states {states} {where}"
    )
    assert not bad_history, (
        f"{len(bad_history)} jobs whose attempts do not end in one SUCCEEDED after LOST ones: "
        f"{dict(list(bad_history.items())[:5])} {where}"
    )
    assert not gaps, f"{len(gaps)} jobs with attempts missing from their history {where}"
    assert not never_ran, f"jobs never executed: {sorted(never_ran)[:10]} {where}"
    assert kills == KILLS and kills_while_unfinished == KILLS
    assert len(victims_hit) >= KILLS // 2, (
        f"only {len(victims_hit)} killed workers have LOST attempts on record {where}"
    )
    assert all(code == 0 for code in codes.values()), f"unclean shutdown: {codes} {where}"


def _history_ok(rows: list[tuple[int, int, str]], attempt: int) -> bool:
    """One SUCCEEDED attempt, the job's last (its `attempt`), only LOST ones before it."""
    if not rows or rows[-1][0] != attempt or rows[-1][1] != OUTCOME_SUCCEEDED:
        return False
    return all(outcome == OUTCOME_LOST for _, outcome, _ in rows[:-1])
