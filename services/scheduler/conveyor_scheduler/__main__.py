"""`conveyor scheduler` / `python -m conveyor_scheduler`: the emitter (each due bucket of
each schedule becomes one job; see `conveyor.scheduling.emitter`), the reconciler (see
`conveyor.scheduling.reconciler`), the retention sweeper (see `conveyor.scheduling.sweeper`)
and gRPC health. Safe to run as several replicas: emitters race on idempotency keys, reconcilers and
sweepers take turns."""

from __future__ import annotations

import asyncio
import logging

from conveyor.api.jobs import JobOperations
from conveyor.config import Settings
from conveyor.db.queues import QueueStore
from conveyor.db.schedules import ScheduleStore
from conveyor.handlers import default_registry, load_modules
from conveyor.scheduling.emitter import Emitter
from conveyor.scheduling.reconciler import Reconciler
from conveyor.scheduling.sweeper import Sweeper
from conveyor.server.grpcserver import Server, StopSignals
from conveyor.server.service import connections, metrics_served, service_main
from conveyor.telemetry.metrics import SchedulerMetrics

log = logging.getLogger("conveyor.scheduler")
STOP_SECONDS = 5.0


async def serve(settings: Settings) -> None:
    # The same handler modules as the api, for the job types' default policies.
    load_modules(settings.handler_modules)
    with StopSignals() as stopping:
        await _serve(settings, stopping)


async def _serve(settings: Settings, stopping: StopSignals) -> None:
    async with connections(settings, pool_size=2) as conns:
        server = Server.from_settings(
            settings.scheduler_addr,
            settings,
            variable="CONVEYOR_SCHEDULER_ADDR",
            service_names=[],
            checks=[conns.checks],
        )
        port = await server.start()
        jobs = JobOperations(conns.store, conns.queue, conns.hub, settings, default_registry)
        emitter = Emitter(ScheduleStore(conns.db), jobs, conns.hub, settings)
        sweeper = Sweeper(
            conns.artifacts,
            conns.objects,
            conns.queue,
            batch=settings.sweep_batch,
            interval=settings.sweep_interval_seconds,
        )
        reconciler = Reconciler(conns.store, conns.queue, settings, QueueStore(conns.db))
        metrics = SchedulerMetrics(
            fires=lambda: emitter.stats.emitted,
            deleted=lambda: sweeper.stats.jobs,
            skipped=lambda: emitter.stats.skipped,
        )
        tasks = [
            asyncio.create_task(reconciler.run(), name="reconciler"),
            asyncio.create_task(emitter.run(), name="emitter"),
            asyncio.create_task(sweeper.run(), name="sweeper"),
            # Enqueues of emitted jobs that Redis refused after their commit, retried.
            asyncio.create_task(jobs.pending.run(), name="pending-writes"),
        ]
        log.info("scheduler: emitting, reconciling and sweeping; health on port %d", port)
        try:
            with metrics_served(metrics.registry, settings, "scheduler"):
                await stopping.wait()
        finally:
            for task in tasks:
                task.cancel()
            # Both loops end on cancellation; should one not (a library swallowed it), the
            # process still exits: nothing they hold needs an orderly end.
            _, stuck = await asyncio.wait(tasks, timeout=STOP_SECONDS)
            for task in stuck:
                log.warning("scheduler: %s did not stop within %ss", task.get_name(), STOP_SECONDS)
            await server.stop(1.0)


def main(settings: Settings | None = None) -> None:
    service_main("scheduler", serve, settings)


if __name__ == "__main__":
    main()
