"""Flow control across real worker processes: priorities, strict and weighted queue order,
PauseQueue/ResumeQueue, a queue's concurrency cap and rate limit (measured from the
database's start and finish times), GetQueueStats and ListWorkers.

Each test has queues of its own and starts the workers that serve them, so what it
measures is its own jobs only.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import timedelta
from pathlib import Path

import grpc
import psycopg
import pytest
from google.protobuf.duration_pb2 import Duration

from conveyor.client import AsyncClient, Job, JobState, submit_request
from conveyor.db.bulk import psycopg_dsn
from conveyor.errors import InvalidArgument, PermissionDenied
from conveyor.jobs.model import format_time
from conveyor.v1 import api_key_service_pb2 as kpb
from conveyor.v1 import job_pb2
from conveyor.v1.api_key_service_pb2_grpc import ApiKeyServiceStub
from tests.handlers import lines
from tests.processes import Keys, Service, Stack

S = JobState
TERMINAL = {S.SUCCEEDED, S.DEAD, S.CANCELLED}


def start_worker(stack: Stack, started: list[Service], queues: str, concurrency: int) -> Service:
    service = stack.start(
        "worker", "--queues", queues, "--concurrency", str(concurrency), env=stack.worker_env()
    )
    started.append(service)
    return service


async def until_done(client: AsyncClient, job_ids: list[str], within: float = 60) -> None:
    """Wait (on each job's stream, no polling) until every job has ended."""

    async def one(job_id: str) -> None:
        async for update in client.watch(job_id):
            if update.job.state in TERMINAL:
                return

    async with asyncio.timeout(within):
        await asyncio.gather(*(one(j) for j in job_ids))


async def until_running(admin: AsyncClient, queue: str, count: int) -> None:
    """Wait until `count` jobs of the queue hold a lease (the workers have filled a cap).
    Queue stats have no stream to wait on, so this looks every 20 ms, for 10 s at most."""
    async with asyncio.timeout(10):
        while (await admin.queue_stats(queue))[0].running < count:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def until_blocked(client: AsyncClient, job_id: str, reason: str) -> Job:
    """Wait until GetJob says why the job waits, starting with `reason`, and return the job.
    Blocked reasons have no stream to wait on, so this looks every 20 ms, for 10 s at most."""
    async with asyncio.timeout(10):
        while not (job := await client.get(job_id)).blocked_reason.startswith(reason):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return job


def spans(stack: Stack, job_ids: list[str]) -> list[tuple[int, int]]:
    """(start, finish) of each job's last attempt, in ms, from the database, in the
    order of `job_ids`."""
    with psycopg.connect(psycopg_dsn(stack.env["CONVEYOR_DATABASE_URL"])) as conn:
        rows = conn.execute(
            "SELECT id, start_time, finish_time FROM jobs WHERE id = ANY(%s) AND state = %s",
            (job_ids, S.SUCCEEDED),
        ).fetchall()
    assert len(rows) == len(job_ids), "every job succeeded"
    found = {job_id: (int(start), int(finish)) for job_id, start, finish in rows}
    return [found[job_id] for job_id in job_ids]


def most_at_once(intervals: list[tuple[int, int]]) -> int:
    """The largest number of intervals that overlap at one moment."""
    return max(sum(1 for s, f in intervals if s <= start < f) for start, _ in intervals)


def most_in_window(starts: list[int], window_ms: int) -> int:
    """The most starts within any window of `window_ms`."""
    starts = sorted(starts)
    return max(sum(1 for t in starts if s <= t < s + window_ms) for s in starts)


async def test_priorities_order_a_mixed_backlog(
    stack: Stack, workers: list[Service], alice: AsyncClient, tmp_path: Path
) -> None:
    """Guards the priority rule: higher first, FIFO within a priority. A backlog of 60
    jobs with mixed priorities, then one worker with one slot: the run order is the
    backlog sorted by priority (descending), submission order within each."""
    log = tmp_path / "order.log"
    rng = random.Random(6)
    priorities = [rng.randrange(10) for _ in range(60)]
    jobs = await alice.submit_many(
        [
            submit_request("test.touch", {"log": str(log)}, queue="prio", priority=p)
            for p in priorities
        ]
    )
    start_worker(stack, workers, "prio", 1)
    await until_done(alice, [j.id for j in jobs])
    ran = [line.split()[0] for line in lines(log)]
    expected = [j.id for j in sorted(jobs, key=lambda j: -j.priority)]  # a stable sort
    assert ran == expected
    print("\npriorities: 60 jobs over 10 priorities ran in priority order, FIFO within each")


async def test_a_later_higher_priority_job_overtakes_the_waiting_ones(
    stack: Stack, workers: list[Service], alice: AsyncClient, tmp_path: Path
) -> None:
    """Guards priority under a running load: a priority-9 job submitted while priority-1
    jobs wait runs next, ahead of all of them (strict priority; see the README for why a
    low priority can wait indefinitely under a sustained higher-priority load)."""
    log = tmp_path / "order.log"
    low = await alice.submit_many(
        [
            submit_request("test.touch", {"log": str(log), "seconds": 0.2}, queue="mixed",
                           priority=1)
            for _ in range(12)
        ]
    )  # fmt: skip
    start_worker(stack, workers, "mixed", 1)
    async with asyncio.timeout(30):  # the worker is under way
        async for update in alice.watch(low[1].id):
            if update.job.state in TERMINAL:
                break
    urgent = await alice.submit("test.touch", {"log": str(log)}, queue="mixed", priority=9)
    # The jobs done by now (the urgent one may have run already: it is not counted); the job
    # running now is the next line, then the urgent one.
    done_before = len([line for line in lines(log) if not line.startswith(urgent.id)])
    await until_done(alice, [urgent.id, *(j.id for j in low)])
    ran = [line.split()[0] for line in lines(log)]
    position = ran.index(urgent.id)
    assert done_before <= position <= done_before + 1, (
        f"the urgent job ran {position}th; {done_before} had finished when it was submitted"
    )
    assert [r for r in ran if r != urgent.id] == [j.id for j in low], "FIFO among the rest"


async def test_strict_and_weighted_queue_order(
    stack: Stack, workers: list[Service], alice: AsyncClient, tmp_path: Path
) -> None:
    """Guards CONVEYOR_WORKER_QUEUES: `a,b` drains `a` before touching `b`; `a:3,b:1`
    serves both from the start, `a` about three times as often."""
    strict_log, weighted_log = tmp_path / "strict.log", tmp_path / "weighted.log"

    async def backlog(queue: str, log: Path, count: int) -> list[str]:
        made = await alice.submit_many(
            [submit_request("test.touch", {"log": str(log)}, queue=queue) for _ in range(count)]
        )
        return [j.id for j in made]

    strict_a = await backlog("strict-a", strict_log, 20)
    strict_b = await backlog("strict-b", strict_log, 20)
    start_worker(stack, workers, "strict-a,strict-b", 1)
    await until_done(alice, strict_a + strict_b)
    assert [line.split()[0] for line in lines(strict_log)] == strict_a + strict_b

    weighted_a = await backlog("weighted-a", weighted_log, 60)
    weighted_b = await backlog("weighted-b", weighted_log, 60)
    start_worker(stack, workers, "weighted-a:3,weighted-b:1", 1)
    await until_done(alice, weighted_a + weighted_b)
    first = [line.split()[0] for line in lines(weighted_log)][:40]
    from_a = sum(1 for job_id in first if job_id in set(weighted_a))
    print(f"\nweighted 3:1: of the first 40 jobs run, {from_a} from a, {40 - from_a} from b")
    assert 40 - from_a >= 1, "the lighter queue is not starved"
    assert from_a > 40 - from_a, "the heavier queue is served more"


async def test_a_paused_queue_runs_nothing_until_resumed(
    stack: Stack, workers: list[Service], alice: AsyncClient, admin: AsyncClient
) -> None:
    """Guards PauseQueue across workers: with two workers on it, a paused queue starts
    nothing (its jobs say why), and ResumeQueue releases every job at once."""
    paused = await admin.pause_queue("held")
    assert paused.paused
    start_worker(stack, workers, "held", 2)
    start_worker(stack, workers, "held", 2)
    jobs = await alice.submit_many([submit_request("noop", queue="held") for _ in range(20)])
    await asyncio.sleep(1.5)  # what is asserted is that nothing happens for a while
    states = {(await alice.get(j.id)).state for j in jobs}
    assert states == {S.QUEUED}
    waiting = await alice.get(jobs[0].id)
    assert waiting.blocked_reason == "queue 'held' is paused"
    assert waiting.raw.blocked == job_pb2.BlockedReason(
        kind=job_pb2.BLOCKED_KIND_PAUSED, queue="held"
    )
    [stats] = await admin.queue_stats("held")
    assert stats.paused and stats.queued == 20 and stats.running == 0
    assert stats.queued_by_priority[5] == 20 and stats.HasField("oldest_wait")
    resumed_at = time.monotonic()
    await admin.resume_queue("held")
    await until_done(alice, [j.id for j in jobs], within=30)
    took = time.monotonic() - resumed_at
    print(f"\npause: 20 jobs held 1.5 s by a paused queue; all done {took:.2f}s after resume")
    assert took < 0.5, "resume wakes the blocked workers at once (measured 0.09 s)"
    [after] = await admin.queue_stats("held")
    assert not after.paused and after.queued == 0 and after.succeeded_last_minute == 20


async def test_a_concurrency_limit_holds_across_two_workers(
    stack: Stack, workers: list[Service], alice: AsyncClient, admin: AsyncClient
) -> None:
    """Guards max_running: a queue limited to 3 never has a 4th job running, though its
    two workers have 4 slots each (measured from the database), and it does reach 3."""
    await admin.update_queue_limits("capped", max_running=3)
    start_worker(stack, workers, "capped", 4)
    start_worker(stack, workers, "capped", 4)
    jobs = await alice.submit_many(
        [submit_request("sleep", {"seconds": 0.15, "steps": 1}, queue="capped")
         for _ in range(30)]
    )  # fmt: skip
    await until_running(admin, "capped", 3)
    held = await alice.get(jobs[-1].id)
    assert held.blocked_reason == "queue 'capped' is at its concurrency limit (3 of 3 running)"
    assert held.raw.blocked == job_pb2.BlockedReason(
        kind=job_pb2.BLOCKED_KIND_QUEUE_CONCURRENCY_LIMIT, queue="capped", running=3, limit=3
    )
    await until_done(alice, [j.id for j in jobs])
    peak = most_at_once(spans(stack, [j.id for j in jobs]))
    print(f"\nconcurrency limit 3 over 2 workers x 4 slots: at most {peak} running at once")
    assert peak == 3


async def test_a_rate_limit_is_not_exceeded(
    stack: Stack, workers: list[Service], alice: AsyncClient, admin: AsyncClient
) -> None:
    """Guards the rate limit: 5 starts per second, across two workers, for 10 seconds:
    no window of one second holds a 6th start (measured from the database)."""
    await admin.update_queue_limits("rated", rate_jobs=5, rate_interval=1.0)
    start_worker(stack, workers, "rated", 4)
    start_worker(stack, workers, "rated", 4)
    jobs = await alice.submit_many([submit_request("noop", queue="rated") for _ in range(50)])
    rated = await until_blocked(alice, jobs[-1].id, "queue 'rated' is rate limited")
    opens = rated.raw.blocked.until.ToMilliseconds()
    assert rated.blocked_reason == (
        f"queue 'rated' is rate limited (5 per 1000 ms) until {format_time(opens)}"
    )
    assert rated.raw.blocked == job_pb2.BlockedReason(
        kind=job_pb2.BLOCKED_KIND_RATE_LIMITED, queue="rated", rate_jobs=5,
        rate_interval=Duration(seconds=1), until=rated.raw.blocked.until,
    )  # fmt: skip
    assert 0 < opens - rated.raw.create_time.ToMilliseconds() <= 30_000, "the window opens soon"
    await until_done(alice, [j.id for j in jobs], within=30)
    starts = [start for start, _ in spans(stack, [j.id for j in jobs])]
    busiest = most_in_window(starts, 1000)
    seconds = (max(starts) - min(starts)) / 1000
    print(f"\nrate limit 5/s: 50 jobs over {seconds:.1f}s, at most {busiest} in any 1 s window")
    assert busiest == 5 and seconds >= 9.0


async def test_a_flooding_owner_does_not_starve_another(
    stack: Stack, workers: list[Service], alice: AsyncClient, bob: AsyncClient,
    admin: AsyncClient,
) -> None:  # fmt: skip
    """Guards the per-owner cap (fairness): alice floods a queue capped at 2 running jobs
    per owner; bob's jobs, submitted after all of hers, start at once on the free slots
    instead of after her backlog, and alice never has a third job running."""
    await admin.update_queue_limits("fair", max_running_per_owner=2)
    start_worker(stack, workers, "fair", 4)
    flood = await alice.submit_many(
        [submit_request("sleep", {"seconds": 0.2, "steps": 1}, queue="fair") for _ in range(40)]
    )
    await until_running(admin, "fair", 2)  # alice's first two are under way
    parked = await alice.get(flood[-1].id)
    quiet = await bob.submit_many(
        [submit_request("sleep", {"seconds": 0.2, "steps": 1}, queue="fair") for _ in range(4)]
    )
    await until_done(bob, [j.id for j in quiet], within=30)
    bob_waited = [
        start - job.raw.create_time.ToMilliseconds()
        for job, (start, _) in zip(quiet, spans(stack, [j.id for j in quiet]), strict=True)
    ]
    alice_left = 0
    for job in flood:
        alice_left += (await alice.get(job.id)).state == S.QUEUED
    await until_done(alice, [j.id for j in flood], within=60)
    peak = most_at_once(spans(stack, [j.id for j in flood]))
    print(
        f"\nfairness: with alice's 40-job flood ahead, bob's 4 jobs waited at most "
        f"{max(bob_waited)} ms ({alice_left} of alice's still queued when bob's were done); "
        f"alice peaked at {peak} running"
    )
    # Her running count may have dropped since the claim parked the job; the cap has not.
    running = parked.raw.blocked.running
    assert parked.raw.blocked == job_pb2.BlockedReason(
        kind=job_pb2.BLOCKED_KIND_OWNER_CONCURRENCY_LIMIT, queue="fair", owner="alice",
        running=running, limit=2,
    )  # fmt: skip
    assert 0 <= running <= 2
    assert parked.blocked_reason == (
        f"owner 'alice' is at its concurrency limit in queue 'fair' ({running} of 2 running)"
    )
    assert max(bob_waited) < 1000 and alice_left >= 20  # measured 212 ms
    assert peak == 2


async def test_a_keys_concurrency_cap_holds_its_jobs_back_only(
    stack: Stack, workers: list[Service], keys: Keys, alice: AsyncClient, admin: AsyncClient
) -> None:
    """Guards the per-key cap: a key allowed 1 running job per queue never has 2, though
    the queue has free slots, and another key's jobs start past its backlog at once."""
    async with grpc.aio.insecure_channel(stack.api_addr) as channel:
        service = ApiKeyServiceStub(channel)
        meta = (("authorization", f"Bearer {keys.admin}"),)
        request = kpb.CreateApiKeyRequest(owner="keycap-carol")
        made = await service.CreateApiKey(request, metadata=meta)
        await service.UpdateApiKeyLimits(
            kpb.UpdateApiKeyLimitsRequest(id=made.key.id, max_running_jobs=1), metadata=meta
        )
    start_worker(stack, workers, "keycap", 4)
    async with AsyncClient(stack.api_addr, api_key=made.secret) as carol:
        backlog = await carol.submit_many(
            [submit_request("sleep", {"seconds": 0.2, "steps": 1}, queue="keycap")
             for _ in range(8)]
        )  # fmt: skip
        await until_running(admin, "keycap", 1)
        held = await carol.get(backlog[-1].id)
        others = await alice.submit_many([submit_request("noop", queue="keycap") for _ in range(3)])
        await until_done(alice, [j.id for j in others], within=10)
        still_queued = 0
        for job in backlog:
            still_queued += (await carol.get(job.id)).state == S.QUEUED
        await until_done(carol, [j.id for j in backlog], within=30)
    peak = most_at_once(spans(stack, [j.id for j in backlog]))
    print(f"\nkey cap 1: carol's 8 jobs peaked at {peak} running; alice's 3 ran while "
          f"{still_queued} of carol's waited")  # fmt: skip
    assert held.blocked_reason == (
        f"API key {made.key.id} is at its concurrency limit in queue 'keycap' (1 of 1 running)"
    )
    assert held.raw.blocked == job_pb2.BlockedReason(
        kind=job_pb2.BLOCKED_KIND_API_KEY_CONCURRENCY_LIMIT, queue="keycap",
        api_key_id=made.key.id, running=1, limit=1,
    )  # fmt: skip
    assert peak == 1 and still_queued >= 5


async def test_a_delayed_job_waits_for_its_time_then_runs(
    stack: Stack, workers: list[Service], alice: AsyncClient
) -> None:
    """Guards delayed jobs: SCHEDULED (saying until when) for its delay, then run by a
    worker that was blocked, not polling: the claim script told it when to wake."""
    start_worker(stack, workers, "later", 1)
    job = await alice.submit("noop", queue="later", delay=timedelta(seconds=0.8))
    assert job.state == S.SCHEDULED
    waiting = await alice.get(job.id)
    assert waiting.blocked_reason == f"scheduled for {format_time(job.raw.run_at.ToMilliseconds())}"
    assert waiting.raw.blocked == job_pb2.BlockedReason(
        kind=job_pb2.BLOCKED_KIND_SCHEDULED, until=job.raw.run_at
    )
    await until_done(alice, [job.id], within=10)
    [(start, _)] = spans(stack, [job.id])
    late = start - job.raw.run_at.ToMilliseconds()
    print(f"\ndelay 0.8 s: started {late} ms after its run_at")
    assert 0 <= late < 300


async def test_limits_are_validated_and_admin_only(admin: AsyncClient, alice: AsyncClient) -> None:
    with pytest.raises(InvalidArgument) as bad:
        await admin.update_queue_limits("x", max_running=-1, rate_jobs=5, rate_interval=0)
    assert {v.field for v in bad.value.violations} == {
        "limits.max_running",
        "limits.rate_interval",
    }
    with pytest.raises(InvalidArgument):
        await admin.pause_queue("not a queue!")
    with pytest.raises(PermissionDenied):
        await alice.pause_queue("default")
    with pytest.raises(PermissionDenied):
        await alice.workers()


async def test_list_workers_shows_live_workers_and_forgets_dead_ones(
    stack: Stack, workers: list[Service], admin: AsyncClient
) -> None:
    """Guards the registry: a worker is listed with its queues and concurrency while it
    lives, and drops out after it is killed (its announcement expires; no one has to
    notice the death)."""
    service = start_worker(stack, workers, "listed-a:2,listed-b:1", 3)
    # A worker serves once its first announcement was tried for up to 5 s (its own thread,
    # see conveyor.worker.announcer): on a loaded machine the registry may see it later.
    async with asyncio.timeout(10):
        while not (listed := await admin.workers("listed-a")):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert len(listed) == 1
    [worker] = listed
    assert list(worker.queues) == ["listed-a", "listed-b"] and worker.concurrency == 3
    assert "noop" in worker.types and worker.HasField("last_heartbeat")
    workers.remove(service)
    service.kill()
    async with asyncio.timeout(10):
        while await admin.workers("listed-a"):  # noqa: ASYNC110
            await asyncio.sleep(0.2)  # the registry forgets on expiry: nothing to wait on
