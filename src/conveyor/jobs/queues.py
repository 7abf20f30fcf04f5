"""Named queues as operators control them: settings (paused, a concurrency cap and a rate
limit, across every worker) and the numbers GetQueueStats reports.

PostgreSQL holds the settings (`queues` table); Redis holds a copy in `cv:{Q}:conf`, which
the claim script reads, so a pause or a limit takes effect on every worker's next claim.
A change is written to the database first, then to Redis; the reconciler re-applies every
queue's settings on each pass, so a Redis that lost them (or missed a change during an
outage) converges. Limits are enforced where jobs are claimed (scripts/claim.lua,
`admissible`): a queue with `max_running` 3 never has a fourth job holding a lease, and
one with a rate limit of N per interval never starts an N+1th job within any window of
that interval.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace

from conveyor.errors import FailedPrecondition, FieldViolation, InvalidArgument
from conveyor.jobs.blocked import Blocked
from conveyor.jobs.model import MAX_PRIORITY, valid_queue
from conveyor.jobs.shards import MAX_SHARDS, placement, split
from conveyor.v1 import queue_pb2

MAX_RUNNING_LIMIT = 1_000_000
MAX_RATE_JOBS = 1_000_000
MAX_RATE_INTERVAL_MS = 24 * 3600 * 1000
MINUTE_SECONDS = 60


@dataclass(frozen=True, slots=True)
class QueueSettings:
    name: str
    paused: bool = False
    max_running: int = 0  # 0: no cap
    rate_jobs: int = 0  # at most this many starts in any window of rate_interval_ms
    rate_interval_ms: int = 0
    max_running_per_owner: int = 0  # 0: no cap
    shards: int = 1  # Redis hash tags the queue's jobs spread over (conveyor.jobs.shards)
    # Jobs with one concurrency key running at once (0: no cap). Not shared out among
    # shards: a key's jobs all live in one shard (see conveyor.jobs.shards).
    max_running_per_key: int = 0
    # At most this many starts of one rate key's jobs in any window of
    # rate_per_key_interval_ms (0: none); whole in each shard, like the per-key cap.
    rate_per_key_jobs: int = 0
    rate_per_key_interval_ms: int = 0

    def with_limits(
        self,
        max_running: int,
        rate_jobs: int,
        rate_interval_ms: int,
        max_running_per_owner: int,
        shards: int | None = None,
        max_running_per_key: int | None = None,
        rate_per_key_jobs: int | None = None,
        rate_per_key_interval_ms: int | None = None,
    ) -> QueueSettings:
        """These settings with new limits (and shard count, per-key cap and per-key rate;
        None keeps them), validated: INVALID_ARGUMENT naming each bad field,
        FAILED_PRECONDITION for fewer shards. A per-key interval given without a per-key
        rate (none given and none kept) is refused: it would be dropped silently."""
        shards = self.shards if shards is None else shards
        per_key = self.max_running_per_key if max_running_per_key is None else max_running_per_key
        if shards < self.shards and shards >= 1:
            raise FailedPrecondition(
                f"queue {self.name!r} has {self.shards} shards: shards can be added, not "
                "removed (waiting jobs live in them)"
            )
        bad = []
        if not 1 <= shards <= MAX_SHARDS:
            bad.append(FieldViolation("limits.shards", f"must be 1-{MAX_SHARDS}"))
        for name, value, top in (
            ("max_running", max_running, MAX_RUNNING_LIMIT),
            ("max_running_per_owner", max_running_per_owner, MAX_RUNNING_LIMIT),
            ("rate_jobs", rate_jobs, MAX_RATE_JOBS),
        ):
            if not 0 <= value <= top:
                bad.append(FieldViolation(f"limits.{name}", f"must be 0-{top}"))
            elif 0 < value < shards:  # a shard's share of 0 would mean "no limit"
                bad.append(
                    FieldViolation(
                        f"limits.{name}",
                        f"must be 0 or at least the queue's {shards} shards (each gets a share)",
                    )
                )
        if not 0 <= per_key <= MAX_RUNNING_LIMIT:  # whole in each shard: no share to check
            bad.append(
                FieldViolation("limits.max_running_per_key", f"must be 0-{MAX_RUNNING_LIMIT}")
            )
        bad += _per_key_rate_violations(
            self.rate_per_key_jobs if rate_per_key_jobs is None else rate_per_key_jobs,
            self.rate_per_key_interval_ms
            if rate_per_key_interval_ms is None
            else rate_per_key_interval_ms,
            interval_given=bool(rate_per_key_interval_ms),
        )
        if rate_jobs and not 1 <= rate_interval_ms <= MAX_RATE_INTERVAL_MS:
            bad.append(
                FieldViolation(
                    "limits.rate_interval", "must be between 1 ms and 24 h when rate_jobs is set"
                )
            )
        if bad:
            raise InvalidArgument(bad)
        key_jobs = self.rate_per_key_jobs if rate_per_key_jobs is None else rate_per_key_jobs
        key_interval = (
            self.rate_per_key_interval_ms
            if rate_per_key_interval_ms is None
            else rate_per_key_interval_ms
        )
        return replace(
            self,
            max_running=max_running,
            rate_jobs=rate_jobs,
            rate_interval_ms=rate_interval_ms if rate_jobs else 0,
            max_running_per_owner=max_running_per_owner,
            shards=shards,
            max_running_per_key=per_key,
            rate_per_key_jobs=key_jobs,
            rate_per_key_interval_ms=key_interval if key_jobs else 0,
        )

    def per_shard(self) -> list[QueueSettings]:
        """What each shard's physical queue gets, shard 0 first: the pause, and a share of
        every limit (`split`), so the shares add up to the queue's own; but the whole
        per-key cap, since each key's jobs are all in one shard."""
        n = self.shards
        shares = zip(
            split(self.max_running, n),
            split(self.rate_jobs, n),
            split(self.max_running_per_owner, n),
            strict=True,
        )
        return [
            replace(
                self,
                name=placement(self.name, shard),
                max_running=running,
                rate_jobs=rate,
                max_running_per_owner=owner,
                shards=1,
            )
            for shard, (running, rate, owner) in enumerate(shares)
        ]

    def limits_proto(self) -> queue_pb2.QueueLimits:
        msg = queue_pb2.QueueLimits(
            max_running=self.max_running,
            rate_jobs=self.rate_jobs,
            max_running_per_owner=self.max_running_per_owner,
            shards=self.shards,
            max_running_per_key=self.max_running_per_key,
            rate_per_key_jobs=self.rate_per_key_jobs,
        )
        if self.rate_jobs:
            msg.rate_interval.FromMilliseconds(self.rate_interval_ms)
        if self.rate_per_key_jobs:
            msg.rate_per_key_interval.FromMilliseconds(self.rate_per_key_interval_ms)
        return msg


def _per_key_rate_violations(
    jobs: int, interval_ms: int, *, interval_given: bool
) -> list[FieldViolation]:
    """What is wrong with a per-key rate of `jobs` per `interval_ms` (the merged result; a
    window `interval_given` in this change without any rate is refused)."""
    if not 0 <= jobs <= MAX_RATE_JOBS:
        return [FieldViolation("limits.rate_per_key_jobs", f"must be 0-{MAX_RATE_JOBS}")]
    if jobs and not 1 <= interval_ms <= MAX_RATE_INTERVAL_MS:
        return [
            FieldViolation(
                "limits.rate_per_key_interval",
                "must be between 1 ms and 24 h when rate_per_key_jobs is set",
            )
        ]
    if not jobs and interval_given:
        return [
            FieldViolation(
                "limits.rate_per_key_interval", "needs rate_per_key_jobs (a rate per window)"
            )
        ]
    return []


# The QueueLimits fields, which are the paths of UpdateQueueLimits' update_mask.
LIMIT_FIELDS = (
    "max_running",
    "rate_jobs",
    "rate_interval",
    "max_running_per_owner",
    "shards",
    "max_running_per_key",
    "rate_per_key_jobs",
    "rate_per_key_interval",
)


@dataclass(frozen=True, slots=True)
class LimitChange:
    """The limits one UpdateQueueLimits changes; None: keep the queue's own. Applied to the
    stored settings while their row is locked (`QueueStore.update`), so two admins changing
    different limits at once both get theirs."""

    max_running: int | None = None
    rate_jobs: int | None = None
    rate_interval_ms: int | None = None
    max_running_per_owner: int | None = None
    shards: int | None = None
    max_running_per_key: int | None = None
    rate_per_key_jobs: int | None = None
    rate_per_key_interval_ms: int | None = None

    @classmethod
    def from_proto(cls, limits: queue_pb2.QueueLimits, named: Collection[str]) -> LimitChange:
        """The fields of `limits` that `named` (the update mask's paths) names."""
        return cls(
            max_running=limits.max_running if "max_running" in named else None,
            rate_jobs=limits.rate_jobs if "rate_jobs" in named else None,
            rate_interval_ms=(
                limits.rate_interval.ToMilliseconds() if "rate_interval" in named else None
            ),
            max_running_per_owner=(
                limits.max_running_per_owner if "max_running_per_owner" in named else None
            ),
            # 0 keeps the count: a mask of `*` (or none) from a client that predates
            # shards must not reset it.
            shards=(limits.shards or None) if "shards" in named else None,
            max_running_per_key=(
                limits.max_running_per_key if "max_running_per_key" in named else None
            ),
            rate_per_key_jobs=(limits.rate_per_key_jobs if "rate_per_key_jobs" in named else None),
            rate_per_key_interval_ms=(
                limits.rate_per_key_interval.ToMilliseconds()
                if "rate_per_key_interval" in named
                else None
            ),
        )

    def applied_to(self, current: QueueSettings) -> QueueSettings:
        """`current` with these limits, the merged result validated as a whole (a rate
        named alone keeps the stored window, and needs one)."""

        def pick(new: int | None, old: int) -> int:
            return old if new is None else new

        return current.with_limits(
            pick(self.max_running, current.max_running),
            pick(self.rate_jobs, current.rate_jobs),
            pick(self.rate_interval_ms, current.rate_interval_ms),
            pick(self.max_running_per_owner, current.max_running_per_owner),
            self.shards,
            self.max_running_per_key,
            self.rate_per_key_jobs,
            self.rate_per_key_interval_ms,
        )


def check_queue_name(name: str, field: str = "queue") -> str:
    if not valid_queue(name):
        raise InvalidArgument(
            [FieldViolation(field, "must be a queue name ([A-Za-z0-9_.-], at most 64)")]
        )
    return name


@dataclass(frozen=True, slots=True)
class QueueMinute:
    """The attempts of a queue that ended in one minute, by outcome (QueueStats'
    `recent_minutes`)."""

    minute: int  # its start, in whole minutes since the epoch
    succeeded: int
    retried: int
    dead: int
    cancelled: int

    def plus(self, other: QueueMinute) -> QueueMinute:
        """Both counts of the same minute (two shards' of one queue) added up."""
        return QueueMinute(
            self.minute,
            self.succeeded + other.succeeded,
            self.retried + other.retried,
            self.dead + other.dead,
            self.cancelled + other.cancelled,
        )

    def to_proto(self) -> queue_pb2.QueueMinute:
        msg = queue_pb2.QueueMinute(
            succeeded=self.succeeded, retried=self.retried, dead=self.dead, cancelled=self.cancelled
        )
        msg.start_time.FromSeconds(self.minute * MINUTE_SECONDS)
        return msg


# queue_stats.lua's answer: 27 numbers, then the history's first minute and 4 per minute.
_STATS_FIELDS = 12 + MAX_PRIORITY + 6
_MINUTE_FIELDS = 4


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A queue now (from Redis, read in one step), its last minute and its recent history
    minute by minute (how many minutes: RECENT_MINUTES in scripts/_common.lua, the one
    place that says; this takes what the script answers)."""

    settings: QueueSettings
    scheduled: int
    retrying: int
    running: int
    queued_by_priority: tuple[int, ...]  # index = priority
    oldest_wait_ms: int | None
    succeeded: int  # the counts are attempts that ended in the last minute
    retried: int
    dead: int
    cancelled: int
    recent_minutes: tuple[QueueMinute, ...] = ()  # oldest first, the current one last

    @classmethod
    def from_script(cls, name: str, out: list[int]) -> QueueStats:
        """From queue_stats.lua's answer (see the script for the order). The settings are
        the ones in force: Redis's copy, which claims read."""
        history = out[_STATS_FIELDS + 1 :]
        assert len(out) > _STATS_FIELDS and len(history) % _MINUTE_FIELDS == 0
        first = out[_STATS_FIELDS]
        minutes = tuple(
            QueueMinute(first + i, *history[at : at + _MINUTE_FIELDS])
            for i, at in enumerate(range(0, len(history), _MINUTE_FIELDS))
        )
        return cls(
            settings=QueueSettings(name, bool(out[0]), *out[1:4], *out[22:27]),
            scheduled=out[4],
            retrying=out[5],
            running=out[6],
            oldest_wait_ms=out[7] if out[7] >= 0 else None,
            succeeded=out[8],
            retried=out[9],
            dead=out[10],
            cancelled=out[11],
            queued_by_priority=tuple(out[12:22]),
            recent_minutes=minutes,
        )

    @classmethod
    def merged(cls, shards: Sequence[QueueStats]) -> QueueStats:
        """A sharded queue's numbers from its shards' (shard 0 first, which holds the
        shard count): counts and limits add up (each shard holds a share of every limit
        but the per-key cap, which each holds whole: shard 0's is the queue's),
        paused if any shard is, the oldest wait is the longest of any shard, and the
        history adds up minute by minute (`_add_minutes`)."""
        first = shards[0].settings

        def total(pick: Callable[[QueueStats], int]) -> int:
            return sum(pick(part) for part in shards)

        waits = [p.oldest_wait_ms for p in shards if p.oldest_wait_ms is not None]
        return cls(
            settings=replace(
                first,
                paused=any(p.settings.paused for p in shards),
                max_running=total(lambda p: p.settings.max_running),
                rate_jobs=total(lambda p: p.settings.rate_jobs),
                max_running_per_owner=total(lambda p: p.settings.max_running_per_owner),
            ),
            scheduled=total(lambda p: p.scheduled),
            retrying=total(lambda p: p.retrying),
            running=total(lambda p: p.running),
            queued_by_priority=tuple(
                sum(column) for column in zip(*(p.queued_by_priority for p in shards), strict=True)
            ),
            oldest_wait_ms=max(waits) if waits else None,
            succeeded=total(lambda p: p.succeeded),
            retried=total(lambda p: p.retried),
            dead=total(lambda p: p.dead),
            cancelled=total(lambda p: p.cancelled),
            recent_minutes=_add_minutes([p.recent_minutes for p in shards]),
        )

    @property
    def queued(self) -> int:
        return sum(self.queued_by_priority)

    @property
    def throughput_per_second(self) -> float:
        return (self.succeeded + self.dead + self.cancelled) / MINUTE_SECONDS

    @property
    def failure_rate(self) -> float:
        ended = self.succeeded + self.retried + self.dead
        return (self.retried + self.dead) / ended if ended else 0.0

    def to_proto(self) -> queue_pb2.QueueStats:
        msg = queue_pb2.QueueStats(
            queue=self.settings.name,
            paused=self.settings.paused,
            limits=self.settings.limits_proto(),
            scheduled=self.scheduled,
            queued=self.queued,
            running=self.running,
            retrying=self.retrying,
            queued_by_priority=list(self.queued_by_priority),
            succeeded_last_minute=self.succeeded,
            retried_last_minute=self.retried,
            dead_last_minute=self.dead,
            cancelled_last_minute=self.cancelled,
            throughput_per_second=self.throughput_per_second,
            failure_rate=self.failure_rate,
            recent_minutes=[minute.to_proto() for minute in self.recent_minutes],
        )
        if self.oldest_wait_ms is not None:
            msg.oldest_wait.FromMilliseconds(self.oldest_wait_ms)
        return msg


def _add_minutes(histories: Sequence[Sequence[QueueMinute]]) -> tuple[QueueMinute, ...]:
    """Shards' histories summed minute by minute, aligned on each minute's start: shard 0
    is read a round trip before the others, so a minute may have begun in between. The sum
    covers the newest window (as long as the longest history); a minute that a shard's
    answer lacks counts nothing from that shard."""
    sums: dict[int, QueueMinute] = {}
    for history in histories:
        for m in history:
            seen = sums.get(m.minute)
            sums[m.minute] = m if seen is None else seen.plus(m)
    if not sums:
        return ()
    newest, length = max(sums), max(len(history) for history in histories)
    return tuple(
        sums.get(minute, QueueMinute(minute, 0, 0, 0, 0))
        for minute in range(newest - length + 1, newest + 1)
    )


@dataclass(frozen=True, slots=True)
class Waiting:
    """What holds a ready job back (waiting.lua's answer, in its order)."""

    ahead: int  # jobs ahead of it in line; -1: not in line
    paused: int
    max_running: int
    running: int
    rate_jobs: int
    rate_ms: int
    started_in_window: int
    window_opens: int  # epoch ms when the rate window has room again; -1: it has room
    group: str  # the cap group holding it back: `o:<owner>`, `k:<key id>`, `c:<key>`; "": none
    group_cap: int
    group_running: int
    key_opens: int = -1  # a rate group's: when its key's jobs may start (epoch ms)
    key_window_ms: int = 0  # a rate group's window (0: only a handler's push-back)

    @classmethod
    def from_script(cls, out: list[int | str]) -> Waiting:
        """From waiting.lua's answer (see the script for the order)."""
        ahead, paused, max_running, running, rate, window, started, opens = (
            int(v) for v in out[:8]
        )
        return cls(ahead, paused, max_running, running, rate, window, started, opens,
                   str(out[8]), int(out[9]), int(out[10]),
                   *(int(v) for v in out[11:13]))  # fmt: skip

    def blocked(self, queue: str) -> Blocked | None:
        """What the queue's settings hold the job back by, or None: only a free worker slot."""
        if self.paused:
            return Blocked.paused(queue)
        if self.group:
            kind, _, name = self.group.partition(":")
            if kind == "o":
                return Blocked.owner_concurrency_limit(
                    queue, name, self.group_running, self.group_cap
                )
            if kind == "c":
                return Blocked.concurrency_key_limit(
                    queue, name, self.group_running, self.group_cap
                )
            if kind == "r":
                return Blocked.rate_key_limited(
                    queue, name, self.group_cap, self.key_window_ms, self.key_opens
                )
            return Blocked.api_key_concurrency_limit(
                queue, name, self.group_running, self.group_cap
            )
        if self.max_running and self.running >= self.max_running:
            return Blocked.queue_concurrency_limit(queue, self.running, self.max_running)
        if self.window_opens >= 0:
            return Blocked.rate_limited(queue, self.rate_jobs, self.rate_ms, self.window_opens)
        return None


MAX_QUEUE_WEIGHT = 1000


@dataclass(frozen=True, slots=True)
class QueueChoice:
    """The queues a worker claims from (CONVEYOR_WORKER_QUEUES) and in which order.

    `high,default,low` is strict order: a worker with free slots takes from `high` first
    and from `default` only what `high` cannot fill, so a busy `high` can starve `low`.
    `high:6,default:3,low:1` is weighted: each claim round visits the queues in a random
    order where a queue comes first in proportion to its weight (here `high` 60 % of the
    time), so every queue with a weight makes progress however busy the others are.
    """

    names: tuple[str, ...]
    weights: tuple[int, ...] | None = None  # None: strict order

    @classmethod
    def parse(cls, text: str) -> QueueChoice:
        """From `a,b,c` or `a:3,b:1`; ValueError saying what is wrong."""
        names: list[str] = []
        weights: list[int] = []
        weighted = False
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            name, sep, weight = part.partition(":")
            if not valid_queue(name):
                raise ValueError(f"{name!r} is not a queue name ([A-Za-z0-9_.-], at most 64)")
            if name in names:
                raise ValueError(f"queue {name!r} is named twice")
            if sep:
                weighted = True
                if not weight.isdigit() or not 1 <= int(weight) <= MAX_QUEUE_WEIGHT:
                    raise ValueError(f"the weight of {name!r} must be 1-{MAX_QUEUE_WEIGHT}")
            names.append(name)
            weights.append(int(weight) if sep else 1)
        if not names:
            raise ValueError("name at least one queue")
        return cls(tuple(names), tuple(weights) if weighted else None)

    def order(self, rng: random.Random | None = None) -> list[str]:
        """The queues in the order to claim from this round."""
        if self.weights is None:
            return list(self.names)
        draw = (rng or random).random
        # Weighted sampling without replacement (Efraimidis-Spirakis): sort by u^(1/w).
        keyed = [(draw() ** (1 / w), n) for n, w in zip(self.names, self.weights, strict=True)]
        return [name for _, name in sorted(keyed, reverse=True)]
