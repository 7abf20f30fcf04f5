"""RedisQueue: the only writer of queue state in Redis. Every multi-key change is one Lua
script (atomic, one round trip); batches of them go out pipelined."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, cast

from redis.asyncio import RedisCluster
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from conveyor import compact_json
from conveyor.config import Settings
from conveyor.errors import RedisRefused, Unavailable, outage
from conveyor.jobs.attempts import Attempt, AttemptEnd, AttemptOutcome
from conveyor.jobs.dependencies import Resolution
from conveyor.jobs.model import DEFAULT_QUEUE, LIVE_FIELDS, Job, JobState
from conveyor.jobs.queues import QueueSettings, QueueStats, Waiting
from conveyor.jobs.shards import placements
from conveyor.redis.connection import AnyRedis, key_on_each_server, servers
from conveyor.redis.keys import (
    CANCEL_CHANNEL,
    EPOCH_KEY,
    EXISTING_QUEUES_KEY,
    SHARDS_FIELD,
    WRITE_PROBE_KEY,
    QueueKeys,
)
from conveyor.redis.scripts import Scripts

# How long the health probe's key lives (it is rewritten every probe).
WRITE_PROBE_TTL_MS = 10_000

# Refusals: Redis answered, but will not run the command now. redis-py gives direct replies
# with these codes their own classes (the code stripped from the text); an error a Lua
# script met comes back as a plain ResponseError with the code inside its text
# ("... @user_script:1: -OOM command not allowed ..."), so codes are also looked for there.
_REFUSED_CLASSES: tuple[tuple[type[ResponseError], str], ...] = (
    (OutOfMemoryError, "out of memory"),
    (ReadOnlyError, "read-only replica"),
    (MasterDownError, "its primary is down"),
    (ClusterDownError, "the cluster is down"),
    (TryAgainError, "the cluster is moving keys"),
)
_REFUSED_CODES = (
    ("OOM", "out of memory"),
    ("READONLY", "read-only replica"),
    ("LOADING", "loading its data"),
    ("BUSY", "busy running a script"),
    ("MISCONF", "cannot persist to disk"),
    ("MASTERDOWN", "its primary is down"),
    ("NOREPLICAS", "not enough replicas"),
    ("CLUSTERDOWN", "the cluster is down"),
    ("TRYAGAIN", "the cluster is moving keys"),
)


def refusal(exc: BaseException) -> str | None:
    """Why Redis refused a command, in a few words ("out of memory"), or None when `exc`
    is no refusal: a script's own error or a wrong type is a bug, not a condition to wait
    out, and must not pass for one."""
    for cls, words in _REFUSED_CLASSES:
        if isinstance(exc, cls):
            return words
    if not isinstance(exc, ResponseError):
        return None
    text = str(exc)
    for code, words in _REFUSED_CODES:
        if text.startswith(f"{code} ") or f"-{code} " in text:
            return words
    return None


@contextlib.asynccontextmanager
async def unavailable_on_redis_errors() -> AsyncIterator[None]:
    """Redis errors as the client should hear them: UNAVAILABLE when Redis cannot be
    reached, and `RedisRefused` (UNAVAILABLE, with why and when to try again) when it
    answers but refuses (see `refusal`). Anything else is a bug and stays what it is."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise outage("redis") from exc
    except ResponseError as exc:
        reason = refusal(exc)
        if reason is None:
            raise
        raise RedisRefused(reason) from exc
    except ClusterError as exc:  # a cluster's redirections ran out (a slot kept moving)
        raise RedisRefused("the cluster is moving keys") from exc
    except RedisClusterException as exc:  # e.g. no node serves a slot (SlotNotCoveredError)
        raise outage("redis") from exc


@dataclass(slots=True)
class Claim:
    """A job a worker now runs, and the lease token that fences its Redis writes.

    `lost` holds the attempts lost since the job's last recorded outcome, when this claim
    reclaimed it from a worker that stopped renewing its lease: the new worker must fence
    them off (and record them) in the database before it runs the job. `exhausted`: the
    last lost attempt was the last one allowed.
    """

    job: Job
    lease: str
    lost: tuple[Attempt, ...] = ()
    exhausted: bool = False

    @classmethod
    def from_hash(cls, fields: dict[str, str]) -> Claim:
        job = Job.from_hot(fields)
        lost = tuple(
            Attempt(
                job_id=job.id,
                attempt=int(entry["a"]),
                outcome=AttemptOutcome.LOST,
                worker_id=str(entry["w"]),
                start_time=int(entry["s"]) or None,
                finish_time=int(entry["t"]),
                error=lost_error(entry),
            )
            for entry in (json.loads(fields["lost"]) if fields.get("lost") else [])
        )
        return cls(job, fields["lease"], lost, fields.get("exhausted") == "1")


@dataclass(frozen=True, slots=True)
class Cancelled:
    """What a cancel found in Redis: the job's state there (UNSPECIFIED: Redis lacked it)
    and, when it was RUNNING, the attempt the cancel stopped, to be recorded."""

    state: JobState
    stopped: Attempt | None = None


def lost_error(entry: dict[str, Any]) -> str:
    """Why an attempt was lost, from its entry in a job's `lost` list (the same text
    claim.lua gives the job's `error`): its lease lapsed, or it was released early because
    the worker registry found its worker dead (`g`, see release_worker.lua)."""
    worker = entry["w"] or "?"
    if entry.get("g"):
        return f"lease released: worker {worker} stopped announcing itself"
    return f"lease expired: worker {worker} stopped renewing it"


# The hash fields only workers read, left out of events (as `PUBLIC` in _common.lua leaves them).
_PRIVATE = frozenset({"payload", "lease", "worker", "lost", "exhausted", "gone"})


@dataclass(slots=True)
class _Placements:
    """What enqueue.lua takes for one queue's new jobs: per job, its id, state, priority
    and run_at, then its hash as a flat field/value list (seq 1 included); per job its
    first event as the JSON `emit` would publish (the hash less `_PRIVATE`); and the ids,
    whose hash keys go in KEYS.

    Built here rather than in the script because orjson encodes an event in about a
    microsecond, where Lua's cjson took several, and a flat list is what HSET takes: the
    script neither walks nor re-encodes a job (issue 21: enqueue was a third of a bulk
    submit's cost in Redis)."""

    jobs: list[list[str]]
    events: list[str]
    ids: list[str]

    def add(self, job: Job) -> None:
        doc = job.to_hot()
        doc["seq"] = "1"
        lead = [doc["id"], doc["state"], doc["priority"], doc["run_at"]]
        self.jobs.append([*lead, *chain.from_iterable(doc.items())])
        self.ids.append(job.id)
        for name in _PRIVATE.intersection(doc):
            del doc[name]
        self.events.append(compact_json.dumps(doc))


def _placements_by_queue(jobs: Iterable[Job]) -> dict[str, _Placements]:
    """New jobs per physical queue (a queue, or one of its shards: `Job.placement`)."""
    by_queue: dict[str, _Placements] = {}
    for job in jobs:
        found = by_queue.get(job.placement)
        if found is None:
            found = by_queue[job.placement] = _Placements([], [], [])
        found.add(job)
    return by_queue


def _docs_by_queue(jobs: Iterable[Job]) -> dict[str, list[dict[str, str]]]:
    """Jobs as hot-state documents (all values strings, as Lua reads them) per physical
    queue."""
    by_queue: dict[str, list[dict[str, str]]] = {}
    for job in jobs:
        doc = job.to_hot()
        by_queue.setdefault(job.placement, []).append(doc)
    return by_queue


def _looked(
    flat: Sequence[str], waits: list[int | str]
) -> tuple[dict[str, str] | None, Waiting | None]:
    """What `look.lua` answered: the job's hot fields (None if Redis lacks the job) and,
    when it waits in line, what holds it back."""
    fields = _pairs(flat)
    hot = fields if fields.get("id") else None
    return hot, Waiting.from_script(waits) if hot is not None and waits else None


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class RedisQueue:
    def __init__(self, redis: AnyRedis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.scripts = Scripts()
        self._maxlen = settings.event_stream_maxlen
        self._owner_default = settings.default_max_running_per_owner
        self._ttl = settings.hot_state_ttl_seconds

    # -- producers -------------------------------------------------------------------------
    async def enqueue(self, jobs: Iterable[Job]) -> None:
        """Make committed jobs visible to workers and watchers (idempotent per job).

        One script call per physical queue (`Job.placement`) carries the whole batch: the
        jobs as one JSON array, then each job's first event (see `_Placements`), and each
        job's key in KEYS.
        """
        by_queue = _placements_by_queue(jobs)
        async with unavailable_on_redis_errors(), self.scripts.batch(self.redis) as batch:
            for queue, placed in by_queue.items():
                k = QueueKeys(queue)
                batch.call(
                    self.scripts.enqueue,
                    [*k.all, *map(k.job, placed.ids)],
                    [k.channel_prefix, compact_json.dumps(placed.jobs), *placed.events],
                )
            await batch.execute()

    async def debounce(self, job: Job) -> bool:
        """Give a debounced job that still waits (or that Redis lacks) `job`'s payload,
        labels and run_at (debounce.lua); False if it is due, running or ended."""
        k = QueueKeys(job.placement)
        hot = job.to_hot()
        async with unavailable_on_redis_errors():
            done = await self.scripts.debounce(
                self.redis,
                [*k.all, k.job(job.id), k.events(job.id)],
                [
                    job.id,
                    hot["payload"],
                    hot["run_at"],
                    hot.get("labels", ""),
                    self._maxlen,
                    k.channel_prefix,
                    *chain.from_iterable(hot.items()),
                ],
            )
        return bool(done)

    async def cancel(self, queue: str, job_id: str, finish_time: int) -> Cancelled:
        """Cancel in Redis; returns the state the job had there (UNSPECIFIED: not present)
        and, if it was running, the attempt the cancel stopped."""
        k = QueueKeys(queue)
        async with unavailable_on_redis_errors():
            out = await self.scripts.cancel(
                self.redis,
                [*k.all, *k.ending_keys(job_id)],
                [job_id, finish_time, self._ttl, self._maxlen, k.channel_prefix, CANCEL_CHANNEL],
            )
        state = JobState(int(out[0]))
        if state is not JobState.RUNNING:
            return Cancelled(state)
        attempt, start, worker = int(out[1]), int(out[2]) or None, str(out[3])
        stopped = Attempt(
            job_id=job_id,
            attempt=attempt,
            outcome=AttemptOutcome.CANCELLED,
            worker_id=worker,
            start_time=start,
            finish_time=int(out[4]),
            error=f"cancelled while running on worker {worker}",
        )
        return Cancelled(state, stopped)

    # -- readers ---------------------------------------------------------------------------
    async def hot(self, queue: str, job_id: str) -> dict[str, str] | None:
        """The job's hot-state hash (with its `seq`), or None if Redis no longer has it."""
        async with unavailable_on_redis_errors():
            fields = cast(dict[str, str], await self.redis.hgetall(QueueKeys(queue).job(job_id)))
        return fields if fields.get("id") else None

    async def events_after(self, queue: str, job_id: str, after_seq: int) -> list[dict[str, str]]:
        """Retained events with a sequence above `after_seq`, oldest first. The log holds
        consecutive sequences, so only its tail is decoded."""
        async with unavailable_on_redis_errors():
            entries = cast(
                list[str], await self.redis.lrange(QueueKeys(queue).events(job_id), 0, -1)
            )
        events: list[dict[str, str]] = []
        for data in reversed(entries):
            event = cast(dict[str, str], compact_json.loads(data))
            if int(event["seq"]) <= after_seq:
                break
            events.append(event)
        events.reverse()
        return events

    # -- workers ---------------------------------------------------------------------------
    async def claim(
        self,
        queue: str,
        count: int,
        *,
        worker_id: str,
        token: str,
        lease_ms: int,
        owner_default: int | None = None,
    ) -> tuple[list[Claim], int]:
        """Claim up to `count` jobs from a physical queue (a queue or one of its shards);
        also returns when the next delayed job or lease is due. `owner_default`: the cap
        per owner where the queue sets none (None: the worker's setting; a shard takes its
        share of it)."""
        k = QueueKeys(queue)
        async with unavailable_on_redis_errors():
            out = await self.scripts.claim(
                self.redis,
                k.all,
                [
                    count,
                    lease_ms,
                    token,
                    worker_id,
                    k.channel_prefix,
                    self._maxlen,
                    self._owner_default if owner_default is None else owner_default,
                ],
            )
        return [Claim.from_hash(_pairs(flat)) for flat in out[1:]], int(out[0])

    async def wait_for_work(
        self,
        blocking: AnyRedis,
        queues: Sequence[str],
        wait_seconds: float,
        *,
        keep: Callable[[], bool] | None = None,
    ) -> str | None:
        """Block (no polling) until a wake token arrives on one of `queues`, or time is up:
        the queue whose token was taken, or None. On a cluster `queues`' wake lists must
        share a slot (see `conveyor.redis.connection.slot_groups`). A token `keep` turns
        down (its taker stopped waiting while it blocked) is pushed back, for another
        worker or for the taker's next wait."""
        keys = {QueueKeys(q).wake: q for q in queues}
        async with unavailable_on_redis_errors():
            got = await blocking.blpop(list(keys), timeout=max(wait_seconds, 0.01))
            if got is None:
                return None
            key, token = cast(tuple[str, str], got)  # decode_responses
            if keep is None or keep():
                return keys[key]
            await blocking.lpush(key, token)
        return None

    async def heartbeat(self, queue: str, leases: dict[str, str], lease_ms: int) -> list[str]:
        """Renew leases; returns the ids whose lease this worker no longer holds."""
        if not leases:
            return []
        k = QueueKeys(queue)
        keys = [k.leases, *map(k.job, leases)]
        args: list[Any] = [lease_ms, *chain.from_iterable(leases.items())]
        async with unavailable_on_redis_errors():
            lost: list[str] = await self.scripts.heartbeat(self.redis, keys, args)
        return lost

    async def finish_many(self, ends: Sequence[tuple[Job, str, AttemptEnd]]) -> list[bool]:
        """End attempts in Redis, one script call per queue; per attempt, False if its lease
        was no longer held."""
        by_queue: dict[str, list[int]] = {}
        for index, (job, _, _) in enumerate(ends):
            by_queue.setdefault(job.placement, []).append(index)
        if not by_queue:
            return []
        calls = [
            self._finish_call(queue, [ends[i] for i in indexes])
            for queue, indexes in by_queue.items()
        ]
        async with unavailable_on_redis_errors():
            if len(calls) == 1:  # the usual case: a plain EVALSHA costs less than a pipeline
                replies = [await self.scripts.finish(self.redis, *calls[0])]
            else:
                async with self.scripts.batch(self.redis) as batch:
                    for keys, args in calls:
                        batch.call(self.scripts.finish, keys, args)
                    replies = await batch.execute()
        done = [False] * len(ends)
        for indexes, reply in zip(by_queue.values(), replies, strict=True):
            for i, flag in zip(indexes, reply, strict=True):
                done[i] = bool(flag)
        return done

    def _finish_call(
        self, queue: str, ends: Sequence[tuple[Job, str, AttemptEnd]]
    ) -> tuple[list[str], list[Any]]:
        """finish.lua's keys and arguments for the ends of attempts in one queue."""
        k = QueueKeys(queue)
        keys = k.all
        args: list[Any] = [k.channel_prefix, self._ttl, self._maxlen]
        for job, lease, end in ends:
            keys += k.ending_keys(job.id)
            args += [
                job.id,
                lease,
                int(end.state),
                end.error,
                end.finish_time or 0,
                end.run_at or 0,
                end.fence,
            ]
        return keys, args

    async def reconcile(self, queue: str, refs: Sequence[tuple[str, int]]) -> tuple[int, list[str]]:
        """Check unfinished jobs of one queue, given as (id, fence), against Redis: put
        jobs missing from their set back in it; returns how many were repaired, and the ids
        Redis lacks (or holds finished under an older fence), to `restore` from their rows."""
        k = QueueKeys(queue)
        keys = [*k.all, *(k.job(job_id) for job_id, _ in refs)]
        args: list[Any] = list(chain.from_iterable(refs))
        async with unavailable_on_redis_errors():
            out = await self.scripts.reconcile(self.redis, keys, args)
        return int(out[0]), [str(job_id) for job_id in out[1:]]

    async def restore(self, jobs: Sequence[Job]) -> tuple[int, int]:
        """Put jobs back in Redis from their database rows (see restore.lua); returns how
        many were restored (Redis lacked them) and replayed (a newer fence)."""
        totals = [0, 0]
        for queue, docs in _docs_by_queue(jobs).items():
            k = QueueKeys(queue)
            async with unavailable_on_redis_errors():
                counts = await self.scripts.restore(
                    self.redis,
                    [*k.all, *chain.from_iterable(k.job_keys(doc["id"]) for doc in docs)],
                    [k.channel_prefix, self._maxlen, compact_json.dumps(docs)],
                )
            totals = [a + int(b) for a, b in zip(totals, counts, strict=True)]
        return totals[0], totals[1]

    async def after_resolution(self, done: Resolution) -> None:
        """What Redis learns of a resolution of dependencies: the released jobs go in
        line (a job a replay revived, whose fence moved on, replaces the ended copy Redis
        may hold), and the cancelled ones' ends are made known to their watchers."""
        fresh = [j for j in done.released if not j.fence]
        if fresh:
            await self.enqueue(fresh)
        if len(fresh) < len(done.released):  # revived by a replay: may have ended in Redis
            await self.restore([j for j in done.released if j.fence])
        if done.cancelled:
            await self.ended(done.cancelled)

    async def ended(self, jobs: Sequence[Job]) -> None:
        """Make known the end of jobs Redis never had (see ended.lua): their hashes and an
        event each, so that their watchers see it."""
        for queue, docs in _docs_by_queue(jobs).items():
            k = QueueKeys(queue)
            keys = list(chain.from_iterable(k.job_keys(doc["id"]) for doc in docs))
            args = [k.channel_prefix, self._maxlen, self._ttl, compact_json.dumps(docs)]
            async with unavailable_on_redis_errors():
                await self.scripts.ended(self.redis, keys, args)

    async def release(
        self, queue: str, held: Sequence[tuple[Job, str]], *, delay_ms: int = 0
    ) -> int:
        """Put jobs this worker leases back in line, their attempt not counted: at once, or
        (a handler's RateLimited) due in `delay_ms`, their rate keys held until then."""
        k = QueueKeys(queue)
        keys = [*k.all, *chain.from_iterable(k.job_keys(job.id) for job, _ in held)]
        args: list[Any] = [k.channel_prefix, self._maxlen, delay_ms]
        for job, lease in held:
            args += [job.id, lease, job.fence]
        async with unavailable_on_redis_errors():
            return int(await self.scripts.release(self.redis, keys, args))

    async def release_worker(self, queue: str, worker_id: str) -> int:
        """Make the leases a dead worker holds in `queue` (every shard of it) due now, so
        the next claim reclaims them; returns how many (see release_worker.lua)."""
        shards = (await self.shard_counts([queue]))[queue]
        async with unavailable_on_redis_errors(), self.scripts.batch(self.redis) as batch:
            for name in placements(queue, shards):
                batch.call(self.scripts.release_worker, QueueKeys(name).all, [worker_id])
            released = await batch.execute()
        return sum(int(n) for n in released)

    async def configure(self, settings: QueueSettings) -> None:
        """Put a queue's settings where claims read them, each shard its share (see
        conveyor.jobs.shards), and the shard count in shard 0's; wakes workers if jobs may
        start. A configured queue exists (see `existing_queues`)."""
        async with unavailable_on_redis_errors(), self.scripts.batch(self.redis) as batch:
            for shard in settings.per_shard():
                batch.call(
                    self.scripts.configure,
                    QueueKeys(shard.name).all,
                    [
                        int(shard.paused),
                        shard.max_running,
                        shard.rate_jobs,
                        shard.rate_interval_ms,
                        shard.max_running_per_owner,
                        shard.max_running_per_key,
                        shard.rate_per_key_jobs,
                        shard.rate_per_key_interval_ms,
                    ],
                )
            batch.pipe.hset(QueueKeys(settings.name).conf, SHARDS_FIELD, settings.shards)
            batch.pipe.sadd(EXISTING_QUEUES_KEY, settings.name)
            await batch.execute()

    async def shard_counts(self, queues: Iterable[str]) -> dict[str, int]:
        """How many shards each queue has (1: only itself), from shard 0's settings: one
        pipeline for all of them."""
        names = list(queues)
        async with unavailable_on_redis_errors(), self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hget(QueueKeys(name).conf, SHARDS_FIELD)
            counts = await pipe.execute()
        return {name: max(int(n or 1), 1) for name, n in zip(names, counts, strict=True)}

    async def queue_stats(self, queue: str) -> QueueStats:
        """A queue's numbers: shard 0's script says how many shards there are, and a
        sharded queue's others are read in one more round trip and added in."""
        k = QueueKeys(queue)
        async with unavailable_on_redis_errors():
            out = await self.scripts.queue_stats(self.redis, k.all, [])
            first = QueueStats.from_script(queue, [int(v) for v in out])
            shards = placements(queue, first.settings.shards)[1:]
            if not shards:
                return first
            async with self.scripts.batch(self.redis) as batch:
                for name in shards:
                    batch.call(self.scripts.queue_stats, QueueKeys(name).all, [])
                replies = await batch.execute()
        rest = [QueueStats.from_script(queue, [int(v) for v in reply]) for reply in replies]
        return QueueStats.merged([first, *rest])

    async def existing_queues(self) -> set[str]:
        """The queues that exist: the default queue, those a worker serves or has served
        (announced on every heartbeat) and those an admin configured. A name that only
        submits used is not among them, so this stays as small as the operator's setup."""
        async with unavailable_on_redis_errors():
            names = await self.redis.smembers(EXISTING_QUEUES_KEY)
        return {DEFAULT_QUEUE, *(str(name) for name in names)}

    async def running_ids(self) -> set[str]:
        """The ids of the jobs running now (holding a lease) on every existing queue and
        shard. A job runs only on a queue a worker serves, and every such queue exists
        (see `existing_queues`), so none is missed; three round trips however many."""
        queues = await self.existing_queues()
        counts = await self.shard_counts(queues)
        names = [name for queue in queues for name in placements(queue, counts[queue])]
        async with unavailable_on_redis_errors(), self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zrange(QueueKeys(name).leases, 0, -1)
            replies = await pipe.execute()
        return {str(job_id) for ids in replies for job_id in ids}

    async def live_fields(self, refs: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
        """For each (queue, job id), the fields of its hot state that change while it waits
        and runs (`LIVE_FIELDS`; the database learns them only when an attempt ends), or
        {} where Redis no longer has the job: one pipeline, no payload read."""
        async with unavailable_on_redis_errors(), self.redis.pipeline(transaction=False) as pipe:
            for queue, job_id in refs:
                pipe.hmget(QueueKeys(queue).job(job_id), LIVE_FIELDS)
            replies = await pipe.execute()
        return [
            {name: value for name, value in zip(LIVE_FIELDS, values, strict=True) if value}
            for values in replies
        ]

    async def waiting(self, queue: str, job_id: str) -> Waiting:
        """Why a ready job waits: its place in line and what the queue's settings hold back."""
        k = QueueKeys(queue)
        async with unavailable_on_redis_errors():
            out = await self.scripts.waiting(self.redis, [*k.all, k.job(job_id)], [job_id])
        return Waiting.from_script(out)

    async def look(self, queue: str, job_id: str) -> tuple[dict[str, str] | None, Waiting | None]:
        """GetJob's read in one round trip: the job's hot state (None if Redis lacks it)
        and, when it waits in line, what holds it back (see `waiting`)."""
        k = QueueKeys(queue)
        async with unavailable_on_redis_errors():
            flat, waits = await self.scripts.look(self.redis, [*k.all, k.job(job_id)], [job_id])
        return _looked(flat, waits)

    async def look_many(
        self, refs: Sequence[tuple[str, str]]
    ) -> list[tuple[dict[str, str] | None, Waiting | None]]:
        """`look` for several (queue, job id) at once, in one pipeline: one write and one
        read on one connection, however many concurrent GetJobs asked (see
        `conveyor.api.jobs`). A lone ref takes `look`'s plain call."""
        if len(refs) == 1:
            return [await self.look(*refs[0])]
        async with unavailable_on_redis_errors(), self.scripts.batch(self.redis) as batch:
            for queue, job_id in refs:
                k = QueueKeys(queue)
                batch.call(self.scripts.look, [*k.all, k.job(job_id)], [job_id])
            replies = await batch.execute()
        return [_looked(flat, waits) for flat, waits in replies]

    async def epoch(self) -> str | None:
        async with unavailable_on_redis_errors():
            value = await self.redis.get(EPOCH_KEY)
        return None if value is None else str(value)

    async def incarnations(self) -> frozenset[str]:
        """Which server processes hold the data now: the run id of the one Redis, or of
        each primary of a cluster. A change means a restart, or a failover (a replica took
        over, and asynchronous replication may have lost the last writes before it)."""
        async with unavailable_on_redis_errors():
            if isinstance(self.redis, RedisCluster):
                infos = await self.redis.info("server", target_nodes=RedisCluster.PRIMARIES)
                return frozenset(str(info["run_id"]) for info in infos.values())
            return frozenset({str((await self.redis.info("server"))["run_id"])})

    async def set_epoch(self, value: str) -> bool:
        """Set the epoch marker unless one is there; True if this call set it."""
        async with unavailable_on_redis_errors():
            return bool(await self.redis.set(EPOCH_KEY, value, nx=True))

    async def try_lock(self, name: str, owner: str, ttl_ms: int) -> bool:
        """Take (or keep, if `owner` already holds it) a lock that expires after `ttl_ms`."""
        async with unavailable_on_redis_errors():
            if await self.redis.set(name, owner, nx=True, px=ttl_ms):
                return True
            if await self.redis.get(name) == owner:
                await self.redis.pexpire(name, ttl_ms)
                return True
        return False

    async def progress(self, job: Job, lease: str, percent: float, message: str) -> bool:
        k = QueueKeys(job.placement)
        async with unavailable_on_redis_errors():
            done = await self.scripts.progress(
                self.redis,
                [k.job(job.id), k.events(job.id)],
                [lease, percent, message, self._maxlen, k.channel(job.id)],
            )
        return bool(done)

    async def forget(self, jobs: Sequence[tuple[str, str]]) -> None:
        """Drop finished jobs' hot state and event streams at once: (id, placement) pairs. The
        retention sweeper calls this when it deletes their rows, so GetJob cannot serve a
        copy of a job the database no longer has."""
        if not jobs:
            return
        async with unavailable_on_redis_errors(), self.redis.pipeline(transaction=False) as pipe:
            for job_id, queue in jobs:
                k = QueueKeys(queue)
                pipe.delete(k.job(job_id), k.events(job_id))
            await pipe.execute()

    async def refused_writes(self) -> str | None:
        """Why Redis refuses writes now, in a few words ("unreachable" when it cannot be
        reached), or None when it takes them. One small SET that expires: it meets the
        same checks as an enqueue (memory, a replica's role, failed persistence), which a
        PING does not. On a cluster one SET per primary, each to a key in a slot it
        serves, and the answer names each primary that refuses ("host:port: why")."""
        try:
            keys = await key_on_each_server(self.redis, WRITE_PROBE_KEY)
        except (RedisError, RedisClusterException, OSError):
            return "unreachable"  # no map of the cluster: no node answered
        refused = await asyncio.gather(*(self._refuses(key) for key in keys.values()))
        reasons = [
            f"{name}: {why}" if name else why
            for name, why in zip(keys, refused, strict=True)
            if why is not None
        ]
        return "; ".join(reasons) or None

    async def _refuses(self, key: str) -> str | None:
        try:
            async with unavailable_on_redis_errors():
                await self.redis.set(key, "1", px=WRITE_PROBE_TTL_MS)
        except RedisRefused as exc:
            return exc.reason
        except Unavailable:
            return "unreachable"
        return None

    async def ping(self) -> bool:
        """Whether every server answers (each primary of a cluster)."""
        try:
            targets = await servers(self.redis)
            replies = [await self.redis.ping(**target) for target in targets.values()]
        except (RedisError, RedisClusterException, OSError):
            return False
        return all(replies)
