"""Retries against real processes: backoff delays stay within the job's policy bounds (read
from the recorded attempts), a job type's registered policy applies, a permanent error and
a timeout end attempts as documented, a waiting job shows RETRYING with its next run time
and why it waits, and RetryJob replays a dead job with a fresh budget."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from conveyor.client import (
    AsyncClient,
    Attempt,
    AttemptOutcome,
    Job,
    JobState,
    RetryPolicy,
    retry_policy,
)
from conveyor.errors import FailedPrecondition, NotFound
from conveyor.jobs.model import format_time
from conveyor.v1 import job_pb2
from tests.handlers import lines
from tests.processes import Stack


async def final(client: AsyncClient, job_id: str) -> Job:
    async with asyncio.timeout(30):
        return [u async for u in client.watch(job_id)][-1].job


def seconds(t: datetime | None) -> float:
    assert t is not None
    return t.timestamp()


def gaps(attempts: list[Attempt]) -> list[float]:
    """Seconds from each attempt's end to the next one's start."""
    return [seconds(b.start_time) - seconds(a.finish_time) for a, b in itertools.pairwise(attempts)]


async def test_backoff_delays_stay_within_the_policy_bounds(alice: AsyncClient) -> None:
    policy = retry_policy(initial=0.2, maximum=0.5, multiplier=2.0, jitter=0.5)
    job = await alice.submit("fail", {}, max_attempts=5, retry=policy)
    assert job.retry == RetryPolicy(
        initial_backoff=timedelta(seconds=0.2), max_backoff=timedelta(seconds=0.5),
        multiplier=2.0, jitter=0.5,
    )  # fmt: skip
    done = await final(alice, job.id)
    assert done.state == JobState.DEAD and done.attempt == 5
    attempts = await alice.attempts(job.id)
    assert [a.outcome for a in attempts] == [AttemptOutcome.FAILED] * 5
    assert all("RuntimeError: failed on purpose" in a.error for a in attempts)
    assert all("Traceback" in a.traceback for a in attempts)
    measured = gaps(attempts)
    print(f"\nbackoff gaps (ceilings 0.2, 0.4, 0.5, 0.5; jitter 0.5): {measured}")
    for gap, ceiling in zip(measured, [0.2, 0.4, 0.5, 0.5], strict=True):
        assert gap >= ceiling * 0.5 - 0.002, "never earlier than the policy allows"
        assert gap <= ceiling + 0.25, "no later than the policy plus the claim's wake-up"


async def test_a_job_types_registered_policy_applies(alice: AsyncClient) -> None:
    job = await alice.submit("test.policy")
    assert job.max_attempts == 4, "the type's max_attempts"
    assert job.retry is not None
    assert job.retry.initial_backoff == timedelta(milliseconds=300) and job.retry.jitter == 0
    done = await final(alice, job.id)
    assert done.state == JobState.DEAD and done.attempt == 4
    for gap, delay in zip(gaps(await alice.attempts(job.id)), [0.3, 0.6, 0.6], strict=True):
        assert delay - 0.002 <= gap <= delay + 1.0


async def test_a_permanent_error_skips_the_remaining_attempts(alice: AsyncClient) -> None:
    job = await alice.submit("fail", {"permanent": True, "message": "bad input"}, max_attempts=5)
    done = await final(alice, job.id)
    assert done.state == JobState.DEAD and done.attempt == 1
    assert "PermanentError: bad input" in done.error


async def test_a_timeout_ends_a_stuck_attempt_as_a_failure(alice: AsyncClient) -> None:
    job = await alice.submit(
        "sleep",
        {"seconds": 30},
        max_attempts=2,
        timeout=timedelta(seconds=0.3),
        retry=retry_policy(initial=0.05),
    )
    done = await final(alice, job.id)
    assert done.state == JobState.DEAD and done.attempt == 2
    attempts = await alice.attempts(job.id)
    assert [a.outcome for a in attempts] == [AttemptOutcome.TIMED_OUT] * 2
    assert "timed out after 0.3s" in done.error


async def test_a_waiting_job_shows_retrying_its_next_run_and_why(alice: AsyncClient) -> None:
    job = await alice.submit("fail", {}, max_attempts=3, retry=retry_policy(initial=60, jitter=0))
    async with asyncio.timeout(30):
        async for update in alice.watch(job.id):
            if update.job.state == JobState.RETRYING:
                break
    waiting = await alice.get(job.id)
    assert waiting.state == JobState.RETRYING and waiting.attempt == 1
    assert 55 <= seconds(waiting.run_at) - seconds(waiting.start_time) <= 61
    assert waiting.blocked_reason == (
        f"waiting for backoff until {format_time(waiting.raw.run_at.ToMilliseconds())} "
        "after attempt 1 of 3 failed"
    )
    assert waiting.raw.blocked == job_pb2.BlockedReason(
        kind=job_pb2.BLOCKED_KIND_BACKOFF, until=waiting.raw.run_at, attempt=1, max_attempts=3
    )
    await alice.cancel(job.id)


async def test_a_queued_job_says_why_it_waits(stack: Stack, alice: AsyncClient) -> None:
    """Guards GetJob's blocked_reason and its structured twin `blocked` for a queue never
    served, a place in line and a type the queue's workers lack; and that a running or a
    cancelled job has neither."""
    job = await alice.submit("noop", queue="nobody-serves-this")
    unserved = await alice.get(job.id)
    assert unserved.blocked_reason == (
        "no worker has ever served queue 'nobody-serves-this' and no admin configured it: "
        "the job waits until a worker serves that queue"
    )
    assert unserved.raw.blocked == job_pb2.BlockedReason(
        kind=job_pb2.BLOCKED_KIND_QUEUE_NEVER_SERVED, queue="nobody-serves-this"
    )
    queue = "one-slot"
    # Built-in handlers only: tests.handlers' types are the API's, not this worker's.
    alone = {**stack.worker_env(), "CONVEYOR_HANDLERS": ""}
    worker = stack.start("worker", "--queues", queue, "--concurrency", "1", env=alone)
    busy = await alice.submit("sleep", {"seconds": 30}, queue=queue)
    async with asyncio.timeout(30):
        async for update in alice.watch(busy.id):
            if update.job.state == JobState.RUNNING:
                break
    running = await alice.get(busy.id)
    assert running.blocked_reason == "" and running.blocked is None
    behind = await alice.submit("noop", queue=queue)
    in_line = await alice.get(behind.id)
    assert (
        in_line.blocked_reason == f"waiting for a worker slot (0 job(s) ahead in queue {queue!r})"
    )
    assert in_line.raw.blocked == job_pb2.BlockedReason(
        kind=job_pb2.BLOCKED_KIND_IN_LINE, queue=queue, jobs_ahead=0
    )
    # A type the API loads (its CONVEYOR_HANDLERS) that this queue's worker lacks; a type
    # no one loads is refused (tests/security/test_names.py).
    api_only = await alice.submit("test.sync_steps", queue=queue)
    unhandled = await alice.get(api_only.id)
    assert unhandled.blocked_reason == (
        f"no live worker on queue {queue!r} handles job type 'test.sync_steps'"
    )
    assert unhandled.raw.blocked == job_pb2.BlockedReason(
        kind=job_pb2.BLOCKED_KIND_NO_WORKER_FOR_TYPE, queue=queue, job_type="test.sync_steps"
    )
    # The waiting jobs first: cancelling `busy` frees the slot `behind` waits for.
    for pending in (job, behind, api_only, busy):
        await alice.cancel(pending.id)
    cancelled = await alice.get(behind.id)
    assert cancelled.blocked_reason == "" and cancelled.blocked is None
    assert worker.stop() == 0


async def test_retry_job_replays_a_dead_job_with_a_fresh_budget(
    alice: AsyncClient, bob: AsyncClient, tmp_path: Path
) -> None:
    log = tmp_path / "effects.log"
    payload = {"log": str(log), "fail_until": 3}
    job = await alice.submit("test.effect", payload, max_attempts=2, retry=retry_policy(initial=0))
    dead = await final(alice, job.id)
    assert dead.state == JobState.DEAD and dead.attempt == 2

    with pytest.raises(NotFound):
        await bob.retry(job.id)
    replayed = await alice.retry(job.id, max_attempts=2)
    assert replayed.max_attempts == 4
    assert replayed.state in (JobState.QUEUED, JobState.RUNNING)
    done = await final(alice, job.id)
    assert done.state == JobState.SUCCEEDED and done.attempt == 4
    assert [a.attempt for a in await alice.attempts(job.id)] == [1, 2, 3, 4]
    effects = [line for line in lines(log) if line.startswith("effect")]
    assert effects == [f"effect {job.id} 1"], "once() holds across retries and replays"
    with pytest.raises(FailedPrecondition):
        await alice.retry(job.id)


async def test_once_holds_across_retries_in_sync_handlers_too(
    alice: AsyncClient, tmp_path: Path
) -> None:
    log = tmp_path / "effects.log"
    job = await alice.submit(
        "test.sync_effect",
        {"log": str(log), "fail_until": 2},
        max_attempts=3,
        retry=retry_policy(initial=0),
    )
    done = await final(alice, job.id)
    assert done.state == JobState.SUCCEEDED and done.attempt == 3
    assert lines(log) == [f"effect {job.id} 1"]


async def test_an_admin_may_replay_anyones_dead_job(stack: Stack, alice: AsyncClient) -> None:
    job = await alice.submit("fail", {"permanent": True})
    assert (await final(alice, job.id)).state == JobState.DEAD
    admin_key = stack.create_key("ops-replay", "admin")
    async with AsyncClient(stack.api_addr, api_key=admin_key) as admin:
        replayed = await admin.retry(job.id, max_attempts=1)
    assert replayed.owner == "alice" and replayed.max_attempts == 2
    assert (await final(alice, job.id)).attempt == 2
