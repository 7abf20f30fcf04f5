"""Per-owner rate limits: a token bucket in Redis for submits and one for reads.

Every API process shares an owner's buckets (one Lua script per check, on the Redis clock),
so the limit holds across replicas. A submit of n jobs costs n tokens; a read (GetJob,
ListJobs, ListJobAttempts, opening a WatchJob stream) costs one. An empty bucket answers
RESOURCE_EXHAUSTED with a `RetryInfo` saying when enough tokens will be there.

Limits come from the caller's key (`ApiKeyService.UpdateApiKeyLimits`, or `conveyor keys
limits`) and default to the server's settings; they take effect within the authenticator's
cache time. A Redis outage does not block calls on the limiter: the call then proceeds to
its own Redis or database work, which reports the outage itself.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from conveyor.errors import ResourceExhausted, Unavailable
from conveyor.queue.keys import rate_bucket
from conveyor.queue.queue import unavailable_on_redis_errors
from conveyor.queue.scripts import Scripts

log = logging.getLogger(__name__)


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


@dataclass(frozen=True, slots=True)
class Limits:
    submit: Limit
    read: Limit

    def of(self, kind: Kind) -> Limit:
        return self.submit if kind is Kind.SUBMIT else self.read


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
        self, redis: Redis, scripts: Scripts, *, hold: float = 0.1, max_held: int = 64
    ) -> None:
        self.redis = redis
        self.scripts = scripts
        self.hold = hold
        self.max_held = max_held
        self._empty_until: dict[tuple[str, Kind], float] = {}
        self._held: dict[str, int] = {}

    async def take(self, owner: str, kind: Kind, limit: Limit, cost: int = 1) -> None:
        """Take `cost` tokens from the owner's bucket, or raise RESOURCE_EXHAUSTED."""
        if limit.unlimited:
            return
        until = self._empty_until.get((owner, kind))
        if until is not None:
            if until > time.monotonic():
                await self._hold(owner)
                left = max(until - time.monotonic(), 0.001)
                raise self._refusal(owner, kind, limit, left)
            del self._empty_until[(owner, kind)]
        try:
            async with unavailable_on_redis_errors():
                allowed, wait_ms = await self.scripts.ratelimit(
                    self.redis,
                    [rate_bucket(owner, kind.value)],
                    [limit.per_second, max(limit.burst, cost), cost],
                )
        except Unavailable:
            log.debug("rate limiter unavailable; not limiting %s", owner)
            return
        if not int(allowed):
            wait = int(wait_ms) / 1000
            if cost == 1:  # a refused bulk says little about the next single call
                if len(self._empty_until) > 100_000:
                    self._empty_until.clear()
                self._empty_until[(owner, kind)] = time.monotonic() + wait
            raise self._refusal(owner, kind, limit, wait)

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
