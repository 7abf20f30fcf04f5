"""What every service process shares: settings from the environment, logging, the
connections to PostgreSQL and Redis (opened and closed in one place), and the entry point
that runs a service's `serve()` on uvloop."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from conveyor.config import ConfigurationError, Settings, configuration_failure
from conveyor.grpcserver import run
from conveyor.queue import EventHub, RedisQueue, connect
from conveyor.store import Database, JobStore
from conveyor.telemetry import configure_logging


@dataclass(frozen=True)
class Connections:
    db: Database
    store: JobStore
    redis: Redis
    queue: RedisQueue
    hub: EventHub

    async def checks(self) -> bool:
        """Health: both dependencies answer."""
        return await self.queue.ping() and await self.db.ping()


@contextlib.asynccontextmanager
async def connections(settings: Settings, *, pool_size: int = 10) -> AsyncIterator[Connections]:
    if not settings.redis_url:
        raise SystemExit("CONVEYOR_REDIS_URL is not set (`conveyor dev` starts a Redis for you)")
    db = Database(settings.database_url, pool_size=pool_size)
    redis = connect(settings.redis_url)
    conns = Connections(
        db=db,
        store=JobStore(db),
        redis=redis,
        queue=RedisQueue(redis, settings),
        hub=EventHub(redis),
    )
    try:
        yield conns
    finally:
        await conns.hub.close()
        await redis.aclose()
        await conns.store.close()
        await db.close()


def service_main(
    serve: Callable[[Settings], Coroutine[Any, Any, None]], settings: Settings | None = None
) -> None:
    """A service's entry point: read the environment, set up logging, run `serve`. A
    configuration error (a bad variable, a TLS file that is not what it should be) ends the
    process with its message and exit code 2, not a traceback."""
    try:
        settings = settings or Settings.from_env()
        configure_logging(settings.log_level, settings.log_format)
        run(lambda: serve(settings))
    except ConfigurationError as exc:
        raise SystemExit(configuration_failure(exc)) from None
