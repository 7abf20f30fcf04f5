"""`conveyor scheduler` / `python -m conveyor_scheduler`: the reconciler (see
`conveyor.reconciler`) and gRPC health; schedules arrive with their issue. Safe to run as
several replicas."""

from __future__ import annotations

import asyncio
import logging

from conveyor.config import Settings
from conveyor.grpcserver import Server, wait_for_signal
from conveyor.reconciler import Reconciler
from conveyor.service import connections, service_main
from conveyor.store.queues import QueueStore

log = logging.getLogger("conveyor.scheduler")


async def serve(settings: Settings) -> None:
    async with connections(settings, pool_size=2) as conns:
        server = Server.from_settings(
            settings.scheduler_addr,
            settings,
            service_names=[],
            checks=[conns.checks],
        )
        port = await server.start()
        reconciler = asyncio.create_task(
            Reconciler(conns.store, conns.queue, settings, QueueStore(conns.db)).run()
        )
        log.info("scheduler: reconciling; health on port %d", port)
        try:
            await wait_for_signal()
        finally:
            reconciler.cancel()
            await asyncio.gather(reconciler, return_exceptions=True)
            await server.stop(1.0)


def main(settings: Settings | None = None) -> None:
    service_main(serve, settings)


if __name__ == "__main__":
    main()
