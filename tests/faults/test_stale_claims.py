"""A worker frozen between its claim and its handler's start must not start the handler once
its lease has run out (issue 19, item 2).

The freeze is timed exactly, against real processes: Redis is paused for writes (CLIENT
PAUSE WRITE) so the worker's claim script waits in Redis; the worker is then SIGSTOPped, and
Redis unpaused, so the claim executes (a fresh lease) while the worker cannot read the
answer. When the worker wakes, its handler would start a millisecond later with that claim.
The stack has a Redis of its own, so the pause touches no other test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from redis import Redis

from conveyor.client import AsyncClient, Job, JobState
from conveyor.redis.keys import QueueKeys
from tests.handlers import lines
from tests.processes import Service, Stack, own_stack

QUEUE = "stalled"
LEASE = 2.0  # seconds (the FAST settings'), heartbeat 0.4 s
DROPPED = "dropped before its handler started"


@pytest.fixture(scope="module")
def paused_stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """An API on a Redis of its own (this module pauses it)."""
    folder = tmp_path_factory.mktemp("stale-claims")
    with own_stack(database_url, folder, "conveyor_stale_claims") as stack:
        stack.start("api")
        yield stack


@pytest.fixture
async def client(paused_stack: Stack) -> AsyncIterator[AsyncClient]:
    key = paused_stack.create_key("alice")
    async with AsyncClient(paused_stack.api_addr, api_key=key) as alice:
        yield alice


def redis_of(stack: Stack) -> Redis:
    return Redis.from_url(stack.env["CONVEYOR_REDIS_URL"], decode_responses=True)


def wait_until(predicate: Callable[[], bool], what: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def claim_waiting_in_redis(redis: Redis) -> bool:
    """A client whose script call waits on the pause: the worker's claim (the API is idle,
    an idle worker renews no lease, and the announcer's connection has a name)."""
    return any(
        "b" in c["flags"] and c["cmd"] == "evalsha" and not c.get("name")
        for c in redis.client_list()
    )


async def freeze_on_a_fresh_claim(
    stack: Stack, client: AsyncClient, effects: Path
) -> tuple[Service, Job]:
    """Submit a job due in 3 s, hold the worker's claim of it in Redis, SIGSTOP the worker,
    and let the claim execute: the worker holds a fresh lease it cannot act on.

    The worker claims only when woken or when a job falls due (its periodic claim is 30 s
    away): the submit's wake token makes it claim at once (nothing is due yet) and learn
    the due time, so the claim that Redis holds is the one made when the job is due."""
    env = {**stack.worker_env(), "CONVEYOR_CLAIM_WAIT_SECONDS": "30"}
    frozen = stack.start("worker", "--queues", QUEUE, "--concurrency", "1", env=env)
    redis = redis_of(stack)
    try:
        job = await client.submit(
            "test.effect",
            {"log": str(effects), "key": "effect"},
            queue=QUEUE,
            delay=timedelta(seconds=3),
            max_attempts=5,
        )
        # Past the claim the wake token caused (milliseconds), before the due time.
        await asyncio.sleep(1.5)
        redis.client_pause(30_000, all=False)  # writes (and every script) wait
        try:
            job_key = QueueKeys(QUEUE).job_prefix + job.id
            assert redis.hget(job_key, "state") != "3", "claimed before Redis was paused"
            wait_until(lambda: claim_waiting_in_redis(redis), "the worker's claim")
            os.kill(frozen.proc.pid, signal.SIGSTOP)
        finally:
            redis.client_unpause()
        wait_until(lambda: redis.hget(job_key, "state") == "3", "the claim to execute")
    finally:
        redis.close()
    return frozen, job


def started(effects: Path, job_id: str, attempt: int) -> bool:
    return f"started {job_id} {attempt}" in lines(effects)


async def test_a_worker_woken_past_its_lease_drops_the_claim_another_worker_ran(
    paused_stack: Stack, client: AsyncClient, tmp_path: Path
) -> None:
    """Guards the check before a handler starts: the frozen worker's claim (attempt 1) ran
    out, another worker reclaimed the job and finished it as attempt 2; when the frozen
    worker wakes, it drops its claim instead of running the handler a second time
    (before: it started attempt 1's handler 1 ms after waking, 6 s after the job had
    succeeded elsewhere)."""
    effects = tmp_path / "effects.log"
    frozen, job = await freeze_on_a_fresh_claim(paused_stack, client, effects)
    try:
        rescuer = paused_stack.start("worker", "--queues", QUEUE, env=paused_stack.worker_env())
        async with asyncio.timeout(20):
            final = [u async for u in client.watch(job.id)][-1].job
        assert (final.state, final.attempt) == (JobState.SUCCEEDED, 2)
        assert started(effects, job.id, 2) and not started(effects, job.id, 1)
    finally:
        woke = time.monotonic()
        os.kill(frozen.proc.pid, signal.SIGCONT)

    wait_until(
        lambda: DROPPED in frozen.log.read_text() or started(effects, job.id, 1),
        "the woken worker to drop its claim or start the handler",
    )
    reacted = time.monotonic() - woke
    handler_runs = sum(line.startswith(f"started {job.id}") for line in lines(effects))
    print(
        f"\nstale claim: handler runs {handler_runs} (1 expected), woken worker "
        f"{'dropped' if DROPPED in frozen.log.read_text() else 'RAN'} its claim "
        f"{reacted * 1000:.0f} ms after SIGCONT"
    )
    assert not started(effects, job.id, 1), "the woken worker ran a job it no longer held"
    assert handler_runs == 1
    after = await client.get(job.id)
    assert (after.state, after.attempt) == (JobState.SUCCEEDED, 2)
    assert frozen.stop() == 0 and rescuer.stop() == 0


async def test_a_worker_woken_past_its_lease_runs_a_claim_nobody_took(
    paused_stack: Stack, client: AsyncClient, tmp_path: Path
) -> None:
    """Guards the other side of the check: a lease that ran out while no other worker
    could take the job is still this claim's (the job carries its token), so the woken
    worker renews it and runs the job as attempt 1, instead of wasting an attempt."""
    effects = tmp_path / "effects.log"
    frozen, job = await freeze_on_a_fresh_claim(paused_stack, client, effects)
    await asyncio.sleep(LEASE + 0.5)  # the lease runs out while the worker is frozen
    os.kill(frozen.proc.pid, signal.SIGCONT)
    async with asyncio.timeout(20):
        final = [u async for u in client.watch(job.id)][-1].job
    assert (final.state, final.attempt) == (JobState.SUCCEEDED, 1)
    assert lines(effects)[:2] == [f"started {job.id} 1", f"effect {job.id} 1"]
    assert DROPPED not in frozen.log.read_text()
    assert frozen.stop() == 0
