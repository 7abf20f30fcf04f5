"""`conveyor api` / `python -m conveyor_api`: serve JobService, ApiKeyService and
ScheduleService until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import sys

from conveyor.api.bulk import BulkOperations
from conveyor.api.jobs import JobOperations
from conveyor.api.pending_writes import REDIS_WRITES_HEALTH
from conveyor.api.queues import QueueAdmin
from conveyor.api.results import Results
from conveyor.api.schedules import ScheduleOperations
from conveyor.config import Settings
from conveyor.db import KeyStore
from conveyor.db.bulk_operations import BulkOperationStore
from conveyor.db.queues import QueueStore
from conveyor.db.schedules import ScheduleStore
from conveyor.handlers import default_registry, load_modules
from conveyor.objects import ObjectStore
from conveyor.objects.downloads import DownloadServer
from conveyor.objects.local import LocalStore
from conveyor.server.auth import Authenticator
from conveyor.server.grpcserver import Server, StopSignals
from conveyor.server.service import connections, metrics_served, service_main
from conveyor.telemetry.metrics import ApiMetrics
from conveyor.v1 import (
    api_key_service_pb2,
    api_key_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
    schedule_service_pb2,
    schedule_service_pb2_grpc,
)
from conveyor_api.keys import ApiKeyServicer
from conveyor_api.schedules import ScheduleServicer
from conveyor_api.servicer import JobServicer

log = logging.getLogger("conveyor.api")

SERVICE_NAMES = [
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    api_key_service_pb2.DESCRIPTOR.services_by_name["ApiKeyService"].full_name,
    schedule_service_pb2.DESCRIPTOR.services_by_name["ScheduleService"].full_name,
]


async def serve(settings: Settings) -> None:
    # The same handler modules as the workers, for the job types' default policies.
    load_modules(settings.handler_modules)
    metrics = ApiMetrics()
    with StopSignals() as stopping:
        await _serve(settings, metrics, stopping)


async def _serve(settings: Settings, metrics: ApiMetrics, stopping: StopSignals) -> None:
    async with connections(settings) as conns:
        ops = JobOperations(
            conns.store, conns.queue, conns.hub, settings, default_registry, metrics=metrics
        )
        keys = KeyStore(conns.db)
        # One per process: one cache, one stream guard.
        auth = Authenticator(keys, max_streams_per_owner=settings.max_streams_per_owner)
        queues = QueueAdmin(QueueStore(conns.db), conns.queue, ops.names)
        metrics.watch_queues(queues.all_stats, asyncio.get_running_loop())
        results = Results(
            ops, conns.artifacts, conns.objects, link_seconds=settings.artifact_url_seconds
        )
        bulk = BulkOperations(ops, BulkOperationStore(conns.db), conns.artifacts, conns.objects)
        servicer = JobServicer(ops, queues, auth, settings, results, bulk, metrics=metrics)
        server = Server.from_settings(
            settings.api_addr,
            settings,
            variable="CONVEYOR_API_ADDR",
            service_names=SERVICE_NAMES,
            checks=[conns.checks],
            conditions={REDIS_WRITES_HEALTH: ops.pending.probe},
            reuse_port=settings.api_processes > 1,
        )
        server.add(job_service_pb2_grpc.add_JobServiceServicer_to_server, servicer)
        server.add(
            api_key_service_pb2_grpc.add_ApiKeyServiceServicer_to_server,
            ApiKeyServicer(auth, keys, ops.page_tokens),
        )
        server.add(
            schedule_service_pb2_grpc.add_ScheduleServiceServicer_to_server,
            ScheduleServicer(ScheduleOperations(ScheduleStore(conns.db), ops), auth),
        )
        # Before gRPC: once health says SERVING, the folder store's links work too.
        downloads = await _download_server(conns.objects, settings)
        # Retries Redis writes owed for committed jobs until the last call has ended.
        try:
            async with ops.pending.running(), bulk.running():
                port = await server.start()
                log.info("api serving JobService on %s (port %d)", settings.api_addr, port)
                try:
                    with metrics_served(metrics.registry, settings, "api"):
                        await stopping.wait()
                        log.info("api shutting down")
                finally:
                    await server.stop(settings.shutdown_grace_seconds)
        finally:
            if downloads is not None:
                await downloads.stop()


async def _download_server(objects: ObjectStore, settings: Settings) -> DownloadServer | None:
    """A folder store's links are served by the API itself, on its loop (S3 serves its own);
    of `conveyor api --processes N`, by its process 0."""
    if not isinstance(objects, LocalStore) or settings.api_process_index > 0:
        return None
    downloads = DownloadServer.from_settings(objects, settings)
    try:
        await downloads.start()
    except OSError as exc:
        # Another API process on this machine serves the same folder there already: its
        # links are as good as ours (same folder, same signing key).
        log.warning(
            "downloads not served here: cannot listen on %s (CONVEYOR_DOWNLOAD_ADDR): %s",
            settings.download_addr,
            (exc.strerror or str(exc)).lower(),
        )
        return None
    return downloads


def main(settings: Settings | None = None) -> None:
    service_main("api", serve, settings, replicated_by=[sys.executable, "-m", "conveyor_api"])


if __name__ == "__main__":
    main()
