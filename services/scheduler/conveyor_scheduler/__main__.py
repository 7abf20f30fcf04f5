"""`conveyor scheduler` / `python -m conveyor_scheduler`: health now; schedules and the
reconciler arrive with their issues. Idle, it does nothing but answer health checks."""

from __future__ import annotations

import logging

from conveyor.config import Settings
from conveyor.grpcserver import Server, run, wait_for_signal
from conveyor.queue import RedisQueue, connect
from conveyor.store import Database
from conveyor.telemetry import configure_logging

log = logging.getLogger("conveyor.scheduler")


async def serve(settings: Settings) -> None:
    if not settings.redis_url:
        raise SystemExit("CONVEYOR_REDIS_URL is not set (`conveyor dev` starts a Redis for you)")
    db = Database(settings.database_url, pool_size=2)
    redis = connect(settings.redis_url)
    queue = RedisQueue(redis, settings)
    server = Server(
        settings.scheduler_addr,
        service_names=[],
        checks=[queue.ping, db.ping],
        max_message_bytes=settings.max_message_bytes,
    )
    port = await server.start()
    log.info("scheduler: health on port %d", port)
    try:
        await wait_for_signal()
    finally:
        await server.stop(1.0)
        await redis.aclose()
        await db.close()


def main(settings: Settings | None = None) -> None:
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    run(lambda: serve(settings))


if __name__ == "__main__":
    main()
