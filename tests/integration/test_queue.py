"""The Redis queue's Lua scripts against a real Redis: order, delays, leases, fencing, cancel."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from conveyor.config import Settings
from conveyor.jobs.blocked import Blocked
from conveyor.jobs.model import FALLBACK_RETRY, Job, JobDefaults, JobSpec, JobState, now_ms
from conveyor.jobs.queues import QueueSettings
from conveyor.redis import Cancelled, QueueKeys, RedisQueue, connect
from tests.builders import ended

pytestmark = pytest.mark.usefixtures("clean")


@pytest.fixture
async def queue(settings: Settings) -> AsyncIterator[RedisQueue]:
    client = connect(settings.redis_url)
    yield RedisQueue(client, settings)
    await client.aclose()


def new(priority: int = 5, run_at: int | None = None, **kw: object) -> Job:
    spec = JobSpec(type="noop", priority=priority, run_at=run_at)
    job = spec.new_job("alice", defaults=JobDefaults(2, 1000, FALLBACK_RETRY), now=now_ms())
    for name, value in kw.items():
        setattr(job, name, value)
    return job


async def claim(queue: RedisQueue, count: int = 10, lease_ms: int = 10_000) -> list[Job]:
    claims, _ = await queue.claim("default", count, worker_id="w", token="t", lease_ms=lease_ms)
    return [c.job for c in claims]


async def test_higher_priority_first_then_fifo(queue: RedisQueue) -> None:
    jobs = [new(5), new(9), new(5), new(0), new(9)]
    await queue.enqueue(jobs)
    order = [j.id for j in await claim(queue)]
    expected = [jobs[1].id, jobs[4].id, jobs[0].id, jobs[2].id, jobs[3].id]
    assert order == expected


async def test_claim_takes_a_lease_and_bumps_the_attempt(queue: RedisQueue) -> None:
    await queue.enqueue([new()])
    [job] = await claim(queue)
    assert job.state is JobState.RUNNING and job.attempt == 1 and job.start_time
    assert await claim(queue) == []


async def test_enqueue_is_idempotent(queue: RedisQueue) -> None:
    job = new()
    await queue.enqueue([job])
    await queue.enqueue([job])
    assert len(await claim(queue)) == 1


async def test_delayed_job_is_promoted_when_due(queue: RedisQueue) -> None:
    job = new(run_at=now_ms() + 300)
    job.state = JobState.SCHEDULED
    await queue.enqueue([job])
    claims, next_wake = await queue.claim("default", 1, worker_id="w", token="t", lease_ms=1000)
    assert claims == [] and next_wake >= job.run_at - 5
    redis = queue.redis
    assert await redis.blpop([QueueKeys("default").wake], timeout=1)  # workers were woken
    await redis.delete(QueueKeys("default").wake)
    await asyncio.sleep(0.35)
    assert [j.id for j in await claim(queue)] == [job.id]


async def test_expired_lease_puts_the_job_back_as_a_new_attempt(queue: RedisQueue) -> None:
    await queue.enqueue([new()])
    [first] = await claim(queue, lease_ms=100)
    await asyncio.sleep(0.15)
    [again] = await claim(queue)
    assert again.id == first.id and again.attempt == 2


async def test_a_stale_lease_cannot_finish_the_job(queue: RedisQueue) -> None:
    await queue.enqueue([new()])
    claims, _ = await queue.claim("default", 1, worker_id="a", token="old", lease_ms=100)
    await asyncio.sleep(0.15)
    fresh, _ = await queue.claim("default", 1, worker_id="b", token="new", lease_ms=10_000)
    job = fresh[0].job
    end = ended(job.id, JobState.SUCCEEDED)
    assert await queue.finish_many([(job, claims[0].lease, end)]) == [False]
    assert not await queue.progress(job, claims[0].lease, 50, "stale")
    assert await queue.finish_many([(job, fresh[0].lease, end)]) == [True]
    hot = await queue.hot("default", job.id)
    assert hot is not None and hot["state"] == str(int(JobState.SUCCEEDED))


async def test_heartbeat_renews_held_leases_and_reports_lost_ones(queue: RedisQueue) -> None:
    await queue.enqueue([new(), new()])
    claims, _ = await queue.claim("default", 2, worker_id="w", token="t", lease_ms=10_000)
    leases = {c.job.id: c.lease for c in claims}
    await queue.cancel("default", claims[0].job.id, now_ms())
    assert await queue.heartbeat("default", leases, 10_000) == [claims[0].job.id]


async def test_cancel_takes_a_queued_job_out_of_line(queue: RedisQueue) -> None:
    job = new()
    await queue.enqueue([job])
    assert await queue.cancel("default", job.id, now_ms()) == Cancelled(JobState.QUEUED)
    assert await claim(queue) == []
    assert await queue.cancel("default", job.id, now_ms()) == Cancelled(JobState.CANCELLED)


async def test_every_change_is_an_event_with_the_next_sequence(queue: RedisQueue) -> None:
    """Events after the first are kept for resuming watchers; the enqueue event (1) is
    published only, since a watch from sequence 0 starts from the job's snapshot, and a
    queued job then costs no stream (about 4.7 KB of Redis each)."""
    job = new()
    await queue.enqueue([job])
    assert not await queue.redis.exists(QueueKeys("default").events(job.id))
    hot = await queue.hot("default", job.id)
    assert hot is not None and hot["seq"] == "1"
    claims, _ = await queue.claim("default", 1, worker_id="w", token="t", lease_ms=10_000)
    await queue.progress(job, claims[0].lease, 50, "half")
    events = await queue.events_after("default", job.id, 0)
    assert [int(e["seq"]) for e in events] == [2, 3]
    assert [e["state"] for e in events] == ["3", "3"]
    assert events[1]["progress_message"] == "half" and "payload" not in events[1]
    assert [int(e["seq"]) for e in await queue.events_after("default", job.id, 2)] == [3]


async def test_the_enqueue_event_is_the_job_as_stored_and_one_wake_per_job(
    queue: RedisQueue,
) -> None:
    """Guards enqueue.lua's shortcut: a new job's event is built from the fields in hand
    rather than read back from its hash, so a watcher already subscribed (a job whose
    enqueue was owed, see conveyor.api.pending_writes) must get exactly what `emit` would
    send: the stored hash less the workers' fields and the payload, at sequence 1. And the
    workers are woken once per job placed, in one push, up to the wake list's 64."""
    keys = QueueKeys("default")
    jobs = [new(payload={"k": "v"}) for _ in range(70)]
    async with queue.redis.pubsub() as watcher:
        await watcher.subscribe(keys.channel(jobs[0].id))
        await watcher.get_message(timeout=1)  # the subscription's confirmation
        assert await queue.redis.delete(keys.wake) == 0
        await queue.enqueue(jobs[:3])
        assert await queue.redis.llen(keys.wake) == 3
        await queue.enqueue(jobs[3:])
        assert await queue.redis.llen(keys.wake) == 64
        message = await watcher.get_message(ignore_subscribe_messages=True, timeout=5)
    assert message is not None
    stored = await queue.redis.hgetall(keys.job_prefix + jobs[0].id)
    private = {"payload", "lease", "worker", "lost", "exhausted", "gone"}
    expected = {k: v for k, v in stored.items() if k not in private}
    assert json.loads(message["data"]) == expected and expected["seq"] == "1"


async def test_an_ended_job_keeps_its_events_for_the_ttl_in_a_compact_log(
    queue: RedisQueue, settings: Settings
) -> None:
    """A job's event log takes the memory its events need, running or ended (a stream took a
    preallocated 4 KB node, and a DUMP/RESTORE per ended job to shed it), and expires with
    its hash; a resume still reads every retained event, and a cancelled job's likewise."""
    done, cancelled = new(), new()
    await queue.enqueue([done, cancelled])
    claims, _ = await queue.claim("default", 2, worker_id="w", token="t", lease_ms=10_000)
    leases = {c.job.id: c.lease for c in claims}
    await queue.progress(done, leases[done.id], 50, "half")
    keys = QueueKeys("default")
    running_bytes = await queue.redis.memory_usage(keys.events(done.id))
    end = ended(done.id, JobState.SUCCEEDED)
    assert await queue.finish_many([(done, leases[done.id], end)]) == [True]
    await queue.cancel("default", cancelled.id, now_ms())
    assert [int(e["seq"]) for e in await queue.events_after("default", done.id, 0)] == [2, 3, 4]
    assert [int(e["seq"]) for e in await queue.events_after("default", done.id, 3)] == [4]
    assert await queue.events_after("default", done.id, 4) == []
    assert [e["state"] for e in await queue.events_after("default", cancelled.id, 1)] == [
        "3",
        str(int(JobState.CANCELLED)),
    ]
    ended_bytes = await queue.redis.memory_usage(keys.events(done.id))
    assert running_bytes and ended_bytes and running_bytes < 1500 and ended_bytes < 2000, (
        running_bytes,
        ended_bytes,
    )
    for job in (done, cancelled):
        for key in (keys.job(job.id), keys.events(job.id)):
            ttl = await queue.redis.ttl(key)
            assert settings.hot_state_ttl_seconds - 5 <= ttl <= settings.hot_state_ttl_seconds


async def test_an_event_stream_left_from_before_the_log_goes_when_its_job_ends(
    queue: RedisQueue,
) -> None:
    """A job running across the upgrade that made its event log a list keeps the stream the
    old code wrote (`cv:{Q}:events:<id>`, no expiry while it ran): ending the job deletes
    it, finished or cancelled, so no such stream outlives its job."""
    done, cancelled = new(), new()
    await queue.enqueue([done, cancelled])
    claims, _ = await queue.claim("default", 2, worker_id="w", token="t", lease_ms=10_000)
    leases = {c.job.id: c.lease for c in claims}
    tag = QueueKeys("default").tag
    old = {job.id: f"{tag}:events:{job.id}" for job in (done, cancelled)}
    for key in old.values():
        await queue.redis.xadd(key, {"j": "{}"}, id="2-1")
    assert await queue.finish_many([(done, leases[done.id], ended(done.id, JobState.SUCCEEDED))])
    await queue.cancel("default", cancelled.id, now_ms())
    assert await queue.redis.exists(*old.values()) == 0


async def test_a_redis_that_denies_dump_and_restore_still_ends_jobs(
    queue: RedisQueue, settings: Settings
) -> None:
    """Managed Redis often denies @dangerous commands (DUMP, RESTORE): no script needs
    them, and the job ends as anywhere else, its event log kept with its expiry.

    The user gets every pub/sub channel (`&*`) explicitly: Redis 7 gives a new ACL user none
    (`acl-pubsub-default resetchannels`), where 6.2 gave all, and the scripts publish."""
    user, password = "conveyor-no-restore", "s3cret-test-only"
    await queue.redis.acl_setuser(user, enabled=True, reset=True, passwords=[f"+{password}"],
                                  keys=["*"], channels=["*"],
                                  commands=["+@all", "-dump", "-restore"])  # fmt: skip
    url = settings.redis_url.replace("redis://", f"redis://{user}:{password}@", 1)
    limited = connect(url)
    try:
        denied = RedisQueue(limited, settings)
        job = new()
        await denied.enqueue([job])
        claims, _ = await denied.claim("default", 1, worker_id="w", token="t", lease_ms=10_000)
        end = ended(job.id, JobState.SUCCEEDED)
        assert await denied.finish_many([(job, claims[0].lease, end)]) == [True]
        hot = await denied.hot("default", job.id)
        assert hot is not None and hot["state"] == str(int(JobState.SUCCEEDED))
        assert [int(e["seq"]) for e in await denied.events_after("default", job.id, 0)] == [2, 3]
        assert await limited.ttl(QueueKeys("default").events(job.id)) > 0
    finally:
        await limited.aclose()
        await queue.redis.acl_deluser(user)


async def test_scripts_are_reloaded_after_redis_forgets_them(queue: RedisQueue) -> None:
    await queue.redis.script_flush()
    await queue.enqueue([new(), new()])  # a pipeline of EVALSHA answered with NOSCRIPT
    await queue.redis.script_flush()
    assert len(await claim(queue)) == 2  # a single EVALSHA answered with NOSCRIPT


async def test_reconcile_restores_what_redis_lost_and_is_idempotent(queue: RedisQueue) -> None:
    waiting, later = new(), new(run_at=now_ms() + 60_000)
    await queue.enqueue([waiting, later])
    await queue.redis.flushall()
    refs = [(waiting.id, 0), (later.id, 0)]
    assert await queue.reconcile("default", refs) == (0, [waiting.id, later.id])
    assert await queue.restore([waiting, later]) == (2, 0)
    assert await queue.restore([waiting, later]) == (0, 0), "idempotent"
    assert await queue.reconcile("default", refs) == (0, [])
    assert [j.id for j in await claim(queue)] == [waiting.id]


async def test_reconcile_repairs_a_job_missing_from_its_set(queue: RedisQueue) -> None:
    queued, running = new(), new()
    await queue.enqueue([queued, running])
    [claimed] = await claim(queue, count=1)
    keys = QueueKeys("default")
    await queue.redis.zrem(keys.ready, queued.id if claimed.id == running.id else running.id)
    await queue.redis.zrem(keys.leases, claimed.id)
    assert await queue.reconcile("default", [(queued.id, 0), (running.id, 0)]) == (2, [])
    again, _ = await queue.claim("default", 10, worker_id="w2", token="t2", lease_ms=10_000)
    assert sorted(c.job.id for c in again) == sorted([queued.id, running.id])
    [reclaimed] = [c for c in again if c.job.id == claimed.id]
    assert reclaimed.lost, "a running job without a deadline is reclaimed"


async def test_release_puts_a_job_back_in_line_without_counting_the_attempt(
    queue: RedisQueue,
) -> None:
    job = new()
    await queue.enqueue([job])
    claims, _ = await queue.claim("default", 1, worker_id="w", token="t", lease_ms=10_000)
    held = claims[0]
    assert await queue.release("default", [(held.job, "not-my-lease")]) == 0
    assert await queue.release("default", [(held.job, held.lease)]) == 1
    [again] = await claim(queue)
    assert again.id == job.id and again.attempt == 1


async def test_a_reclaim_on_the_last_attempt_is_exhausted(queue: RedisQueue) -> None:
    await queue.enqueue([new(max_attempts=1)])
    await claim(queue, lease_ms=50)
    async with asyncio.timeout(5):
        while True:  # until the 50 ms lease has run out
            claims, _ = await queue.claim("default", 1, worker_id="w2", token="t2", lease_ms=9999)
            if claims:
                break
            await asyncio.sleep(0.02)
    [last] = claims
    assert last.exhausted and [x.attempt for x in last.lost] == [1]
    assert last.job.attempt == 1, "no attempt beyond the maximum"


async def test_parked_jobs_are_queued_cancellable_and_released_with_the_cap(
    queue: RedisQueue,
) -> None:
    """Guards the per-owner cap's bookkeeping: jobs parked behind their owner's cap count
    as queued (by priority) in the stats, say why they wait, leave their parked set when
    cancelled or when a lease of their owner ends, and all return when the cap is lifted;
    another owner's job is claimed past them."""
    await queue.configure(QueueSettings("default", max_running_per_owner=1))
    mine = [new() for _ in range(4)]
    theirs = new(owner="bob")
    await queue.enqueue([*mine, theirs])
    first = await claim(queue, count=2)
    assert [j.id for j in first] == [mine[0].id, theirs.id]  # alice's others were parked
    stats = await queue.queue_stats("default")
    assert stats.queued == 3 and stats.running == 2 and stats.queued_by_priority[5] == 3
    blocked = (await queue.waiting("default", mine[1].id)).blocked("default")
    assert blocked == Blocked.owner_concurrency_limit("default", "alice", running=1, limit=1)
    assert blocked.text == (
        "owner 'alice' is at its concurrency limit in queue 'default' (1 of 1 running)"
    )
    assert await queue.cancel("default", mine[3].id, now_ms()) == Cancelled(JobState.QUEUED)
    assert (await queue.queue_stats("default")).queued == 2
    lease = (await queue.hot("default", mine[0].id) or {})["lease"]
    done = ended(first[0].id, JobState.SUCCEEDED)
    assert await queue.finish_many([(first[0], lease, done)]) == [True]
    [next_one] = await claim(queue, count=5)  # her lease ended: her best parked job is back
    assert next_one.id == mine[1].id
    await queue.configure(QueueSettings("default"))  # the cap is lifted
    assert [j.id for j in await claim(queue, count=5)] == [mine[2].id]
    assert (await queue.queue_stats("default")).queued == 0


async def test_events_carry_every_public_field_without_reading_the_payload(
    queue: RedisQueue,
) -> None:
    """Guards the events' field list (PUBLIC in _common.lua): events are built from it, not
    from the whole hash, so each event of a claim, a progress report and a finish must
    still equal the job's hash less its payload and the workers' fields, and a field
    Job.to_hot gains must be added there too."""
    job = new(idempotency_key="k1", retention_ms=60_000, key_id="key-1", key_cap=5,
              trace_parent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")  # fmt: skip
    job.payload = {"big": "x" * 1000}
    await queue.enqueue([job])
    [held] = (await queue.claim("default", 1, worker_id="w", token="t", lease_ms=10_000))[0]
    private = {"payload", "lease", "worker", "lost", "exhausted", "gone"}
    key = QueueKeys("default").job(job.id)

    async def public() -> dict[str, str]:
        stored: dict[str, str] = await queue.redis.hgetall(key)  # type: ignore[assignment]
        return {k: v for k, v in stored.items() if k not in private}

    assert (await queue.events_after("default", job.id, 1))[-1] == await public()
    await queue.progress(job, held.lease, 50, "half")
    assert (await queue.events_after("default", job.id, 2))[-1] == await public()
    assert await queue.finish_many([(job, held.lease, ended(job.id, JobState.SUCCEEDED))])
    [last] = await queue.events_after("default", job.id, 3)
    assert last == await public()
    assert set(last) == set(job.to_hot()) - {"payload"} | {"seq", "start_time", "finish_time"}


async def test_a_batch_of_finishes_lets_back_in_line_only_the_room_it_made(
    queue: RedisQueue,
) -> None:
    """Guards the cost of the per-owner cap: when one finish call ends n leases of an
    owner at her cap, n of her parked jobs go back in line, not 1 + 2 + ... + n (the room
    after each lease), which the next claim parked again: every job of a one-owner drain
    was parked and unparked about eight times."""
    await queue.configure(QueueSettings("default", max_running_per_owner=4))
    jobs = [new() for _ in range(40)]
    await queue.enqueue(jobs)
    claims, _ = await queue.claim("default", 10, worker_id="w", token="t", lease_ms=10_000)
    assert len(claims) == 4  # the claim parked the rest: it looks past them for others' jobs
    keys = QueueKeys("default")
    ends = [(c.job, c.lease, ended(c.job.id, JobState.SUCCEEDED)) for c in claims]
    assert await queue.finish_many(ends) == [True] * 4
    assert await queue.redis.zcard(keys.ready) == 4
    assert await queue.redis.zcard(keys.tag + ":parked:o:alice") == 32
    again, _ = await queue.claim("default", 10, worker_id="w", token="t", lease_ms=10_000)
    assert [c.job.id for c in again] == [j.id for j in jobs[4:8]]  # in order, none skipped


async def test_look_reads_hot_state_and_why_a_queued_job_waits_in_one_call(
    queue: RedisQueue,
) -> None:
    first, second = new(), new()
    await queue.enqueue([first, second])
    hot, waiting = await queue.look("default", second.id)
    assert hot is not None and hot["id"] == second.id
    assert waiting is not None and waiting.ahead == 1  # `first` is ahead of it
    await claim(queue, count=2)
    hot, waiting = await queue.look("default", second.id)
    assert hot is not None and hot["state"] == str(int(JobState.RUNNING))
    assert waiting is None  # a running job does not wait
    assert await queue.look("default", new().id) == (None, None)


async def test_every_owner_has_a_default_cap_a_queue_limit_overrides(settings: Settings) -> None:
    """Guards CONVEYOR_DEFAULT_MAX_RUNNING_PER_OWNER: in a queue whose limits set no
    per-owner cap, one owner runs at most the workers' default at once, so a flood leaves
    other owners' jobs a slot; the queue's own max_running_per_owner wins over it."""
    client = connect(settings.redis_url)
    capped = RedisQueue(client, settings.model_copy(update={"default_max_running_per_owner": 2}))
    try:
        flood = [new() for _ in range(6)]
        quiet = new(owner="bob")
        await capped.enqueue([*flood, quiet])
        first = await claim(capped, count=4)
        assert [j.id for j in first] == [flood[0].id, flood[1].id, quiet.id]
        blocked = (await capped.waiting("default", flood[2].id)).blocked("default")
        assert blocked == Blocked.owner_concurrency_limit("default", "alice", running=2, limit=2)
        assert blocked.text == (
            "owner 'alice' is at its concurrency limit in queue 'default' (2 of 2 running)"
        )
        await capped.configure(QueueSettings("default", max_running_per_owner=3))
        assert [j.id for j in await claim(capped, count=4)] == [flood[2].id]
    finally:
        await client.aclose()
