"""The worker's announcer: it tells the worker registry, every second, that this process is
alive, and releases the leases of the workers it finds dead (`conveyor.redis.workers`).

It runs on a thread of its own, with its own event loop and Redis connection, apart from the
worker's event loop. Silence for three announcements makes a worker dead to the others and
its jobs run again elsewhere, so the announcements must stop only when the process does
(killed, frozen, cut off from Redis), never because a handler blocked the event loop for a
few seconds: an `async def` handler that calls a blocking library holds the loop, and the
jobs of a worker whose loop is merely busy must not run twice. A loop that stays blocked
stops renewing its leases instead, and the lease (30 s by default) is the backstop for that.

Its Redis connection carries the worker's name (`connection_name`), and stays open for as
long as the process lives: the registry takes a silent worker for dead only once that
connection is gone too (see `conveyor.redis.workers`).

Each announcement also says where the worker serves WorkerControl (`control_address`), so
that a client that lists workers (the dashboard) can reach each one's control port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

from conveyor.config import Settings
from conveyor.errors import Unavailable
from conveyor.redis import RedisQueue, connect
from conveyor.redis.workers import (
    WorkerInfo,
    WorkerRegistry,
    announcement_ttl_ms,
    connection_name,
)

log = logging.getLogger(__name__)

# How long `start` waits for the first announcement, so a worker that says it is serving is
# also listed (ListWorkers, blocked reasons) unless Redis is unreachable.
FIRST_ANNOUNCEMENT_SECONDS = 5.0
STOP_SECONDS = 5.0
# Hosts that bind every interface of the machine: no one can dial them.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "*"})


def control_address(settings: Settings, port: int) -> str:
    """Where others dial this worker's WorkerControl, bound on `port`: what it announces.

    CONVEYOR_WORKER_ADVERTISE_ADDR when set, as given (NAT, a proxy, a DNS name: only the
    operator knows). Else the bound port (CONVEYOR_WORKER_ADDR may say port 0) with the
    configured host, unless that host binds every interface (0.0.0.0, ::), which no one
    can dial: then this machine's address (`_this_machine`). A unix socket is announced as
    it is (dialable from this machine only)."""
    if settings.worker_advertise_addr:
        return settings.worker_advertise_addr
    if settings.worker_addr.startswith("unix"):
        return settings.worker_addr
    host = settings.worker_addr.rpartition(":")[0].strip("[]")
    if host in WILDCARD_HOSTS:
        host = _this_machine()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _this_machine() -> str:
    """This machine's address as its hostname resolves: the pod's IP in Kubernetes and
    the container's in docker compose (both write it into /etc/hosts). On a machine whose
    hostname resolves to a loopback address that is what others on the same machine reach;
    across machines set CONVEYOR_WORKER_ADVERTISE_ADDR. The hostname itself when it does
    not resolve here (the peers' DNS may know it)."""
    name = socket.gethostname()
    try:
        return socket.gethostbyname(name)
    except OSError as exc:
        log.warning("hostname %s does not resolve (%s): announcing the name itself", name, exc)
        return name


class Announcer:
    """Announce `describe()` every `worker_announce_seconds` from a thread, and sweep."""

    def __init__(self, settings: Settings, describe: Callable[[], WorkerInfo]) -> None:
        self.settings = settings
        self.describe = describe
        self.interval = settings.worker_announce_seconds
        self.ttl_ms = announcement_ttl_ms(self.interval)
        # When this worker's view of the registry is fresh enough to find others dead: not
        # before it has announced for a whole announcement lifetime (see `_announce`).
        self._judge_from = float("inf")
        self._first = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    async def start(self) -> None:
        """Start the thread; return once its first announcement was tried."""
        self._thread = threading.Thread(target=self._main, name="announcer", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._first.wait, FIRST_ANNOUNCEMENT_SECONDS)

    async def stop(self) -> None:
        """Stop announcing and leave the registry (the worker is going away on purpose)."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # its loop already closed
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, STOP_SECONDS)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        redis = connect(
            self.settings.redis_url,
            cluster=self.settings.redis_cluster,
            name=connection_name(self.describe().worker_id),
        )
        queue = RedisQueue(redis, self.settings)
        registry = WorkerRegistry(redis, queue.scripts)
        try:
            await self._beat(registry, queue)
            self._first.set()
            while not await self._wait_or_stop():
                await self._beat(registry, queue)
            with contextlib.suppress(Unavailable):
                await registry.forget(self.describe().worker_id)
        finally:
            self._first.set()
            await redis.aclose()

    async def _wait_or_stop(self) -> bool:
        """Wait one interval; True when asked to stop meanwhile."""
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.interval):
                await self._stopping.wait()
        return self._stopping.is_set()

    async def _beat(self, registry: WorkerRegistry, queue: RedisQueue) -> None:
        try:
            await self._announce(registry, queue)
        except Unavailable as exc:  # unreachable, or refusing writes (RedisRefused)
            log.warning("not announced: %s", exc)
        except Exception:  # the thread must outlive anything one announcement meets
            log.exception("announcing this worker failed; trying again")

    async def _announce(self, registry: WorkerRegistry, queue: RedisQueue) -> None:
        """Tell the registry (ListWorkers, blocked reasons, other workers' sweeps) this
        worker is alive, then release the leases of workers it finds dead.

        A worker whose own previous announcement had expired (new, frozen, cut off from
        Redis, or a Redis that restarted after the announcements' lifetime) judges no one
        for one announcement lifetime: whatever silenced it may have silenced the others
        too, and they need a turn to announce again before their jobs are taken away."""
        info = self.describe()
        announced = await registry.announce(info, ttl_ms=self.ttl_ms)
        now = time.monotonic()
        if not announced.was_alive:
            self._judge_from = now + self.ttl_ms / 1000
        elif announced.stale and now >= self._judge_from:
            await registry.sweep(queue, announced.stale, info.worker_id)
