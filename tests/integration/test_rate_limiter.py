"""The rate limiter's token leases against a real Redis: a busy owner costs one script call
per lease, and however the tokens are spread over processes, no more calls are admitted
than the shared bucket gave out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from conveyor.api.ratelimit import LEASE_SECONDS, Kind, Limit, RateLimiter
from conveyor.errors import ResourceExhausted
from conveyor.redis import connect
from conveyor.redis.keys import rate_bucket
from conveyor.redis.scripts import Scripts

pytestmark = pytest.mark.usefixtures("clean")


@pytest.fixture
async def redis(redis_server: object) -> AsyncIterator[Redis]:
    client = connect(redis_server.url)  # type: ignore[attr-defined]
    yield client
    await client.aclose()


async def script_calls(redis: Redis) -> int:
    """How many times Redis ran any script (EVALSHA) so far."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def admitted(limiter: RateLimiter, owner: str, limit: Limit, calls: int) -> int:
    count = 0
    for _ in range(calls):
        try:
            await limiter.take(owner, Kind.SUBMIT, limit)
        except ResourceExhausted:
            continue
        count += 1
    return count


async def test_a_busy_owner_asks_redis_once_per_lease(redis: Redis) -> None:
    limiter = RateLimiter(redis, Scripts(), hold=0)
    limit = Limit(per_second=20_000, burst=40_000)
    lease = int(limit.per_second * LEASE_SECONDS)
    before = await script_calls(redis)
    await limiter.take("ada", Kind.SUBMIT, limit)
    # The first call took a whole lease out of the shared bucket...
    tokens = float(await redis.hget(rate_bucket("ada", "submit"), "t") or 0)
    assert limit.burst - lease <= tokens < limit.burst - lease + 50  # + refill meanwhile
    # ...so the next ones (within the lease's time) are answered without Redis.
    for _ in range(lease - 1):
        await limiter.take("ada", Kind.SUBMIT, limit)
    assert await script_calls(redis) - before <= 2  # the lease, and one more if it expired


async def test_concurrent_calls_share_one_request_for_a_lease(redis: Redis) -> None:
    limiter = RateLimiter(redis, Scripts(), hold=0)
    limit = Limit(per_second=20_000, burst=40_000)
    before = await script_calls(redis)
    await asyncio.gather(*(limiter.take("bea", Kind.READ, limit) for _ in range(200)))
    assert await script_calls(redis) - before <= 2


async def test_processes_never_admit_more_than_the_bucket_gave_out(redis: Redis) -> None:
    # Three "API processes" on one bucket of 300 tokens refilling at 40/s: each leases 2
    # tokens at a time, and strands what it leased but did not spend.
    limit = Limit(per_second=40, burst=300)
    replicas = [RateLimiter(redis, Scripts(), hold=0) for _ in range(3)]
    loop = asyncio.get_running_loop()
    start = loop.time()
    counts = await asyncio.gather(*(admitted(r, "cy", limit, 200) for r in replicas))
    elapsed = loop.time() - start
    assert sum(counts) <= limit.burst + limit.per_second * elapsed + 1
    assert sum(counts) >= limit.burst * 0.9  # and leases strand little of it
    assert all(count > 0 for count in counts)


async def test_a_small_limit_is_exact_per_call(redis: Redis) -> None:
    # 5/s leases nothing ahead (0.25 of a token): every call asks the bucket itself.
    limiter = RateLimiter(redis, Scripts(), hold=0)
    limit = Limit(per_second=5, burst=5)
    assert await admitted(limiter, "dee", limit, 8) == 5
    tokens = float(await redis.hget(rate_bucket("dee", "submit"), "t") or 0)
    assert tokens < 1


async def test_a_bulk_call_takes_its_cost_or_nothing(redis: Redis) -> None:
    limiter = RateLimiter(redis, Scripts(), hold=0)
    limit = Limit(per_second=1, burst=100)
    await limiter.take("eve", Kind.SUBMIT, limit, cost=60)
    with pytest.raises(ResourceExhausted) as refused:
        await limiter.take("eve", Kind.SUBMIT, limit, cost=60)
    assert refused.value.retry_after_seconds == pytest.approx(20, abs=1)
    await limiter.take("eve", Kind.SUBMIT, limit, cost=40)  # what is left is still there
