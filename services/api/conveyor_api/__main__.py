"""`conveyor api` / `python -m conveyor_api`: serve JobService until SIGTERM or SIGINT."""

from __future__ import annotations

import logging

from conveyor.auth import Authenticator
from conveyor.config import Settings
from conveyor.grpcserver import Server, run, wait_for_signal
from conveyor.operations import JobOperations
from conveyor.queue import EventHub, RedisQueue, connect
from conveyor.store import Database, JobStore, KeyStore
from conveyor.telemetry import configure_logging
from conveyor.v1 import job_service_pb2, job_service_pb2_grpc
from conveyor_api.servicer import JobServicer

log = logging.getLogger("conveyor.api")


async def serve(settings: Settings) -> None:
    if not settings.redis_url:
        raise SystemExit("CONVEYOR_REDIS_URL is not set (`conveyor dev` starts a Redis for you)")
    db = Database(settings.database_url)
    redis = connect(settings.redis_url)
    queue = RedisQueue(redis, settings)
    hub = EventHub(redis)
    store = JobStore(db)
    ops = JobOperations(store, queue, hub, settings)
    auth = Authenticator(KeyStore(db))
    service_name = job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name
    server = Server(
        settings.api_addr,
        service_names=[service_name],
        checks=[queue.ping, db.ping],
        max_message_bytes=settings.max_message_bytes,
    )
    job_service_pb2_grpc.add_JobServiceServicer_to_server(
        JobServicer(ops, auth, settings), server.grpc
    )
    port = await server.start()
    log.info("api serving JobService on %s (port %d)", settings.api_addr, port)
    try:
        await wait_for_signal()
        log.info("api shutting down")
    finally:
        await server.stop(settings.shutdown_grace_seconds)
        await hub.close()
        await redis.aclose()
        await store.close()
        await db.close()


def main(settings: Settings | None = None) -> None:
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    run(lambda: serve(settings))


if __name__ == "__main__":
    main()
