"""`conveyor dashboard` / `python -m conveyor_dashboard`: the web dashboard on
CONVEYOR_DASHBOARD_ADDR (HTTP), a client of the API at CONVEYOR_API_ADDR.

uvicorn serves the app on a socket bound here first, so that an address it cannot listen on
is the one-line `CannotListen` every service exits with, and port 0 logs the port it got.
Stopping follows the other services' `StopSignals` (uvicorn's own signal handling is left
out: it would re-raise SIGTERM after a graceful stop and exit with a signal, not 0). It serves
plain HTTP: put TLS in front of it (a reverse proxy or an ingress) beyond one machine; the
session cookie is marked Secure when the proxy says the page came over HTTPS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from conveyor.config import Settings
from conveyor.dashboard.app import create_app
from conveyor.server.grpcserver import CannotListen, StopSignals
from conveyor.server.service import service_main

log = logging.getLogger("conveyor.dashboard")
# Open event streams (job pages) are cut after this on stop, not waited for.
STOP_SECONDS = 3
VARIABLE = "CONVEYOR_DASHBOARD_ADDR"


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers (the service's `StopSignals` has them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listen(addr: str) -> socket.socket:
    """A listening socket on `addr` (host:port), or `CannotListen` naming the variable with
    the system's reason, worded as the other services word it."""
    host, _, port = addr.rpartition(":")
    if not port.isdigit():
        raise CannotListen(addr, VARIABLE, "not a host:port")
    sock: socket.socket | None = None
    try:
        family, kind, _, _, where = socket.getaddrinfo(
            host.strip("[]") or "127.0.0.1", int(port), type=socket.SOCK_STREAM
        )[0]
        sock = socket.socket(family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(128)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise CannotListen(addr, VARIABLE, (exc.strerror or str(exc)).lower()) from None
    return sock


async def serve(settings: Settings) -> None:
    with StopSignals() as stopping:
        sock = listen(settings.dashboard_addr)
        host, port = sock.getsockname()[:2]
        config = uvicorn.Config(
            create_app(settings),
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=STOP_SECONDS,
            proxy_headers=True,
        )
        server = _Server(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        log.info("dashboard: serving on http://%s:%d (API at %s)", host, port, settings.api_addr)
        stop = asyncio.create_task(stopping.wait())
        await asyncio.wait([serving, stop], return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await serving
        stop.cancel()


def main(settings: Settings | None = None) -> None:
    service_main("dashboard", serve, settings)


if __name__ == "__main__":
    main()
