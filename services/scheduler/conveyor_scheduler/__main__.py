"""`conveyor scheduler` / `python -m conveyor_scheduler`: health now; schedules and the
reconciler arrive with their issues. Idle, it does nothing but answer health checks."""

from __future__ import annotations

import logging

from conveyor.config import Settings
from conveyor.grpcserver import Server, wait_for_signal
from conveyor.service import connections, service_main

log = logging.getLogger("conveyor.scheduler")


async def serve(settings: Settings) -> None:
    async with connections(settings, pool_size=2) as conns:
        server = Server(
            settings.scheduler_addr,
            service_names=[],
            checks=[conns.checks],
            max_message_bytes=settings.max_message_bytes,
        )
        port = await server.start()
        log.info("scheduler: health on port %d", port)
        try:
            await wait_for_signal()
        finally:
            await server.stop(1.0)


def main(settings: Settings | None = None) -> None:
    service_main(serve, settings)


if __name__ == "__main__":
    main()
