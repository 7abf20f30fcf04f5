"""`conveyor worker` / `python -m conveyor_worker`: run jobs until SIGTERM/SIGINT or a drain."""

from __future__ import annotations

import asyncio
import logging

from conveyor.auth import Authenticator
from conveyor.config import Settings
from conveyor.grpcserver import Server, run, wait_for_signal
from conveyor.handlers import default_registry, load_modules
from conveyor.queue import EventHub, RedisQueue, connect
from conveyor.runner import Worker
from conveyor.store import Database, JobStore, KeyStore
from conveyor.telemetry import configure_logging
from conveyor.v1 import worker_control_pb2, worker_control_pb2_grpc
from conveyor_worker.control import WorkerControlServicer

log = logging.getLogger("conveyor.worker")


async def serve(settings: Settings) -> None:
    if not settings.redis_url:
        raise SystemExit("CONVEYOR_REDIS_URL is not set (`conveyor dev` starts a Redis for you)")
    load_modules(settings.handler_modules)
    db = Database(settings.database_url, pool_size=4)
    redis = connect(settings.redis_url)
    blocking = connect(settings.redis_url, blocking=True)
    queue = RedisQueue(redis, settings)
    hub = EventHub(redis)
    store = JobStore(db)
    worker = Worker(
        settings,
        queue=queue,
        blocking=blocking,
        hub=hub,
        store=store,
        registry=default_registry,
    )
    service = worker_control_pb2.DESCRIPTOR.services_by_name["WorkerControl"].full_name
    server = Server(
        settings.worker_addr,
        service_names=[service],
        checks=[queue.ping, db.ping],
        max_message_bytes=settings.max_message_bytes,
    )
    worker_control_pb2_grpc.add_WorkerControlServicer_to_server(
        WorkerControlServicer(worker, Authenticator(KeyStore(db))), server.grpc
    )
    port = await server.start()
    await worker.start()
    log.info("worker %s: WorkerControl on port %d", worker.worker_id, port)
    signalled = asyncio.create_task(wait_for_signal())
    drained = asyncio.create_task(worker.wait_stopped())
    try:
        await asyncio.wait([signalled, drained], return_when=asyncio.FIRST_COMPLETED)
        log.info("worker %s stopping", worker.worker_id)
    finally:
        signalled.cancel()
        drained.cancel()
        await worker.stop(settings.shutdown_grace_seconds)
        log.debug("worker stopped; closing the server and connections")
        await server.stop(1.0)
        log.debug("server stopped")
        await hub.close()
        log.debug("hub closed")
        await blocking.aclose()
        await redis.aclose()
        log.debug("redis closed")
        await store.close()
        await db.close()
        log.info("worker %s stopped", worker.worker_id)


def main(settings: Settings | None = None) -> None:
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    run(lambda: serve(settings))


if __name__ == "__main__":
    main()
