"""Per-owner rate limits: a token bucket in Redis for submits and one for reads.

Every API process shares an owner's buckets (one Lua script per check, on the Redis clock),
so the limit holds across replicas. A submit of n jobs costs n tokens; a read (GetJob,
ListJobs, ListJobAttempts, opening a WatchJob stream) costs one. An empty bucket answers
RESOURCE_EXHAUSTED with a `RetryInfo` saying when enough tokens will be there.

A process does not ask Redis on every call: it takes up to `LEASE_SECONDS` worth of the
rate at once (never more than a quarter of the burst) and spends them on its next calls
locally, so a busy owner costs Redis one script call per lease instead of one per call.
Tokens not spent within `LEASE_SECONDS` are dropped, never returned: no process can admit
more than the bucket gave out, so the limit is never exceeded; the price is that an owner
spread over several replicas may be refused up to one lease per replica early. A limit
below `1 / LEASE_SECONDS` per second leases single tokens, i.e. asks Redis on every call.

Limits come from the caller's key (`ApiKeyService.UpdateApiKeyLimits`, or `conveyor keys
limits`) and default to the server's settings; they take effect within the authenticator's
cache time (plus one lease). A Redis outage does not block calls on the limiter, and neither
does a Redis that answers but refuses writes (out of memory, a read-only replica): the call
then proceeds to its own Redis or database work, which reports the outage itself (a submit
is committed and answered OK; see `conveyor.api.pending_writes`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from dataclasses import dataclass
from typing import TypeVar

from conveyor.errors import ResourceExhausted, Unavailable
from conveyor.redis.connection import AnyRedis
from conveyor.redis.keys import rate_bucket
from conveyor.redis.queue import unavailable_on_redis_errors
from conveyor.redis.scripts import Scripts

log = logging.getLogger(__name__)
_V = TypeVar("_V")

# How long tokens taken from Redis ahead of need may be spent locally.
LEASE_SECONDS = 0.05
# Buckets remembered per process before the oldest memories are dropped (bounded memory).
MEMORY_LIMIT = 100_000


class Kind(enum.StrEnum):
    SUBMIT = "submit"
    READ = "read"


@dataclass(frozen=True, slots=True)
class Limit:
    """`per_second` tokens a second, up to `burst` at once; 0 per second: unlimited."""

    per_second: float
    burst: float

    @property
    def unlimited(self) -> bool:
        return self.per_second <= 0


class RateLimiter:
    """Checks buckets in Redis; a refusal is also remembered in-process until the time it
    named, so a client that ignores RetryInfo and keeps calling is refused from memory,
    without a Redis call.

    Such a call (it came back before the time its refusal named) is also answered only
    after about `hold` seconds (jittered by half), up to `max_held` calls per owner at
    once. A client that retries in a loop, the usual flood, is thereby slowed to a few
    calls a second per loop instead of as many as the server can refuse, so the CPU it
    takes from the owners it shares the server with stays small. Beyond `max_held`,
    refusals are immediate: holding costs a timer per call, not a thread, but slots of
    `CONVEYOR_MAX_CONCURRENT_RPCS` too.
    """

    def __init__(
        self, redis: AnyRedis, scripts: Scripts, *, hold: float = 0.1, max_held: int = 64
    ) -> None:
        self.redis = redis
        self.scripts = scripts
        self.hold = hold
        self.max_held = max_held
        self._empty_until: dict[tuple[str, Kind], float] = {}
        self._held: dict[str, int] = {}
        self._leases: dict[tuple[str, Kind], _Lease] = {}
        # One Redis call at a time per bucket; concurrent calls wait for its lease.
        self._asking: dict[tuple[str, Kind], asyncio.Future[None]] = {}

    async def take(self, owner: str, kind: Kind, limit: Limit, cost: int = 1) -> None:
        """Take `cost` tokens from the owner's bucket, or raise RESOURCE_EXHAUSTED."""
        await self._take(owner, kind, limit, cost, cost)

    async def take_some(self, owner: str, kind: Kind, limit: Limit, wanted: int) -> int:
        """Take 1 to `wanted` tokens, as many as the owner's bucket holds: how many of a
        per-item bulk's requests are admitted (each request stands alone, so a bucket
        with 2 tokens admits 2 of 4, as 4 lone submits would get 2 through). Raises
        RESOURCE_EXHAUSTED, remembered and held as `take`'s, when it holds none."""
        return await self._take(owner, kind, limit, 1, wanted)

    async def _take(self, owner: str, kind: Kind, limit: Limit, least: int, most: int) -> int:
        """Take `least` to `most` tokens; how many were taken."""
        if limit.unlimited:
            return most
        bucket = (owner, kind)
        while True:
            await self._refuse_from_memory(bucket, limit)
            lease = self._leases.get(bucket)
            if lease is not None and lease.spend(most, time.monotonic()):
                return most
            asking = self._asking.get(bucket)
            if asking is None:
                break
            await asyncio.shield(asking)  # then spend from the lease it brought, or ask
        done = asyncio.get_running_loop().create_future()
        self._asking[bucket] = done
        try:
            granted, wait_ms = await self._ask(bucket, limit, least, most)
        except Unavailable as exc:  # unreachable, or refusing writes (RedisRefused)
            log.debug("rate limiter unavailable (%s); not limiting %s", exc, owner)
            return most
        finally:
            del self._asking[bucket]
            done.set_result(None)
        if granted == 0:
            wait = wait_ms / 1000
            # No call of one token can pass before the bucket refills to one: for a refused
            # call of `least` tokens, (least - 1) tokens' refill sooner than it said. A bulk
            # refused for lack of many tokens (the bucket may hold a few) remembers nothing;
            # a call refused with the bucket empty does, so a client looping on it is held.
            empty_for = wait - (least - 1) / limit.per_second
            if empty_for > 0:
                _bounded(self._empty_until)[bucket] = time.monotonic() + empty_for
            raise self._refusal(owner, kind, limit, wait)
        taken = min(granted, most)
        if granted > taken:
            _bounded(self._leases)[bucket] = _Lease.extend(
                lease, granted - taken, time.monotonic() + LEASE_SECONDS
            )
        return taken

    def refusal(self, owner: str, kind: Kind, limit: Limit) -> ResourceExhausted:
        """The refusal of a request a per-item bulk could not admit (`take_some` took the
        bucket's last tokens for the ones before it): the next token is there within
        one token's time."""
        return self._refusal(owner, kind, limit, 1 / limit.per_second)

    async def _refuse_from_memory(self, bucket: tuple[str, Kind], limit: Limit) -> None:
        """Refuse (after a hold) a call that came back before its last refusal's time."""
        until = self._empty_until.get(bucket)
        if until is None:
            return
        if until > time.monotonic():
            await self._hold(bucket[0])
            left = max(until - time.monotonic(), 0.001)
            raise self._refusal(bucket[0], bucket[1], limit, left)
        del self._empty_until[bucket]

    async def _ask(
        self, bucket: tuple[str, Kind], limit: Limit, cost: int, wanted: int = 0
    ) -> tuple[int, int]:
        """Ask the shared bucket for `cost` tokens and up to a lease's worth (or `wanted`)
        more: (tokens granted, 0 if none; ms until `cost` tokens are there when refused)."""
        lease = max(int(min(limit.per_second * LEASE_SECONDS, limit.burst / 4)), wanted)
        async with unavailable_on_redis_errors():
            granted, wait_ms = await self.scripts.ratelimit(
                self.redis,
                [rate_bucket(bucket[0], bucket[1].value)],
                [limit.per_second, max(limit.burst, cost), cost, max(cost, lease)],
            )
        return int(granted), int(wait_ms)

    async def _hold(self, owner: str) -> None:
        """Delay the refusal of a call that ignored RetryInfo (see the class)."""
        held = self._held.get(owner, 0)
        if self.hold <= 0 or held >= self.max_held:
            return
        self._held[owner] = held + 1
        try:
            # Jittered, so that a client's many loops do not all come back at once.
            await asyncio.sleep(self.hold * random.uniform(0.5, 1.5))
        finally:
            if self._held[owner] <= 1:
                del self._held[owner]
            else:
                self._held[owner] -= 1

    @staticmethod
    def _refusal(owner: str, kind: Kind, limit: Limit, wait: float) -> ResourceExhausted:
        return ResourceExhausted(
            f"{kind.value} rate limit of {limit.per_second:g}/s for {owner!r} reached",
            retry_after_seconds=wait,
        )


@dataclass(slots=True)
class _Lease:
    """Tokens this process took from the shared bucket ahead of need, spendable until
    `until` (monotonic)."""

    tokens: int
    until: float

    def spend(self, cost: int, now: float) -> bool:
        if now >= self.until or self.tokens < cost:
            return False
        self.tokens -= cost
        return True

    @staticmethod
    def extend(current: _Lease | None, tokens: int, until: float) -> _Lease:
        """A lease holding `tokens` more; what is left of an unexpired one is kept."""
        if current is not None and current.until > time.monotonic():
            tokens += current.tokens
        return _Lease(tokens, until)


def _bounded(memory: dict[tuple[str, Kind], _V]) -> dict[tuple[str, Kind], _V]:
    """The memory itself, emptied first when it holds `MEMORY_LIMIT` buckets."""
    if len(memory) >= MEMORY_LIMIT:
        memory.clear()
    return memory
