"""`conveyor worker` / `python -m conveyor_worker`: run jobs until SIGTERM/SIGINT or a drain."""

from __future__ import annotations

import asyncio
import logging

from conveyor.builtins.export_database import check_export_database
from conveyor.config import Settings
from conveyor.db import KeyStore
from conveyor.handlers import default_registry, load_modules
from conveyor.redis import connect
from conveyor.server.auth import Authenticator
from conveyor.server.grpcserver import Server, StopSignals
from conveyor.server.service import connections, metrics_served, service_main
from conveyor.telemetry.metrics import WorkerMetrics
from conveyor.v1 import worker_control_pb2, worker_control_pb2_grpc
from conveyor.worker.announcer import control_address
from conveyor.worker.runner import Worker
from conveyor_worker.control import WorkerControlServicer

log = logging.getLogger("conveyor.worker")


async def serve(settings: Settings) -> None:
    load_modules(settings.handler_modules)
    # Before anything is served: an export database that can be written (or that is
    # Conveyor's own) would let any user's csv.export query change or read it all.
    await asyncio.to_thread(
        check_export_database, settings.export_database_url, settings.database_url
    )
    metrics = WorkerMetrics()
    with StopSignals() as stopping:
        await _serve(settings, metrics, stopping)


async def _serve(settings: Settings, metrics: WorkerMetrics, stopping: StopSignals) -> None:
    async with connections(settings, pool_size=4) as conns:
        blocking = connect(settings.redis_url, cluster=settings.redis_cluster, blocking=True)
        worker = Worker(
            settings,
            queue=conns.queue,
            blocking=blocking,
            hub=conns.hub,
            store=conns.store,
            registry=default_registry,
            objects=conns.objects,
            artifacts=conns.artifacts,
            metrics=metrics,
        )
        service = worker_control_pb2.DESCRIPTOR.services_by_name["WorkerControl"].full_name
        server = Server.from_settings(
            settings.worker_addr,
            settings,
            variable="CONVEYOR_WORKER_ADDR",
            service_names=[service],
            checks=[conns.checks],
        )
        control = WorkerControlServicer(worker, Authenticator(KeyStore(conns.db)))
        server.add(worker_control_pb2_grpc.add_WorkerControlServicer_to_server, control)
        port = await server.start()
        worker.control_address = control_address(settings, port)
        await worker.start()
        log.info("worker %s: WorkerControl at %s", worker.worker_id, worker.control_address)
        signalled = asyncio.create_task(stopping.wait())
        drained = asyncio.create_task(worker.wait_stopped())
        try:
            with metrics_served(metrics.registry, settings, "worker"):
                await asyncio.wait([signalled, drained], return_when=asyncio.FIRST_COMPLETED)
                log.info("worker %s stopping", worker.worker_id)
        finally:
            signalled.cancel()
            drained.cancel()
            await worker.stop(settings.shutdown_grace_seconds)
            await server.stop(1.0)
            await blocking.aclose()
            log.info("worker %s stopped", worker.worker_id)


def main(settings: Settings | None = None) -> None:
    service_main("worker", serve, settings)


if __name__ == "__main__":
    main()
