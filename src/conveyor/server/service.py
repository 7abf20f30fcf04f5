"""What every service process shares: settings from the environment, logging, the
connections to PostgreSQL and Redis (opened and closed in one place), and the entry point
that runs a service's `serve()` on uvloop, with its Prometheus metrics served beside it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from conveyor.config import ConfigurationError, Settings, configuration_failure
from conveyor.db import Database, JobStore
from conveyor.db.artifacts import ArtifactStore
from conveyor.objects import ObjectStore, open_store
from conveyor.redis import EventHub, RedisQueue, connect
from conveyor.redis.connection import AnyRedis
from conveyor.server.grpcserver import CannotListen, run
from conveyor.server.replicas import supervise
from conveyor.telemetry import configure_logging, configure_tracing
from conveyor.telemetry.metrics import serve_metrics

log = logging.getLogger(__name__)

YOUNG_COLLECTION_ALLOCATIONS = 20_000


@dataclass(frozen=True)
class Connections:
    db: Database
    store: JobStore
    redis: AnyRedis
    queue: RedisQueue
    hub: EventHub
    objects: ObjectStore
    artifacts: ArtifactStore

    async def checks(self) -> bool:
        """Health: both dependencies answer."""
        return await self.queue.ping() and await self.db.ping()


@contextlib.asynccontextmanager
async def connections(settings: Settings, *, pool_size: int = 10) -> AsyncIterator[Connections]:
    if not settings.redis_url:
        raise SystemExit("CONVEYOR_REDIS_URL is not set (`conveyor dev` starts a Redis for you)")
    db = Database(settings.database_url, pool_size=pool_size)
    redis = connect(settings.redis_url, cluster=settings.redis_cluster)
    conns = Connections(
        db=db,
        store=JobStore(db),
        redis=redis,
        queue=RedisQueue(redis, settings),
        hub=EventHub(redis),
        objects=open_store(settings),
        artifacts=ArtifactStore(db),
    )
    # In the background: an object store that is slow to answer must not hold up start-up.
    preparing = asyncio.create_task(_prepare_objects(conns.objects), name="objects")
    try:
        yield conns
    finally:
        preparing.cancel()
        await conns.hub.close()
        await redis.aclose()
        await conns.store.close()
        await db.close()


async def _prepare_objects(objects: ObjectStore) -> None:
    """Make the bucket if it is missing. An object store that cannot be reached now is no
    reason not to start: jobs that need it fail their attempt and are retried."""
    try:
        await asyncio.to_thread(objects.ensure_ready)
    except Exception as exc:
        log.warning("object store not ready (artifacts will fail until it is): %s", exc)


@contextlib.contextmanager
def metrics_served(registry: CollectorRegistry, settings: Settings, service: str) -> Iterator[None]:
    """Serve a service's metrics (CONVEYOR_METRICS_ADDR) for as long as the block runs."""
    server = serve_metrics(registry, settings.metrics_addr, service)
    try:
        yield
    finally:
        if server is not None:
            server.stop()


def service_main(
    name: str,
    serve: Callable[[Settings], Coroutine[Any, Any, None]],
    settings: Settings | None = None,
    *,
    replicated_by: Sequence[str] = (),
) -> None:
    """A service's entry point: read the environment, set up logging and tracing (as
    `conveyor-<name>` unless OTEL_SERVICE_NAME says otherwise), run `serve`. A
    configuration error (a bad variable, a TLS file that is not what it should be) ends the
    process with its message and exit code 2, not a traceback; an address it cannot listen
    on (`CannotListen`) with one error line in the log naming the variable, and exit code 1.

    `replicated_by`: the command that starts one more process of this service (the API's);
    with CONVEYOR_API_PROCESSES above 1 this process supervises that many instead of
    serving (`conveyor.server.replicas`)."""
    try:
        settings = settings or Settings.from_env()
        configure_logging(settings.log_level, settings.log_format)
        if replicated_by and settings.api_processes > 1 and settings.api_process_index < 0:
            raise SystemExit(supervise(settings, replicated_by))
        configure_tracing(f"conveyor-{name}")
        tune_collector()
        run(lambda: serve(settings))
    except ConfigurationError as exc:
        raise SystemExit(configuration_failure(exc)) from None
    except CannotListen as exc:
        log.error("%s", exc)
        raise SystemExit(1) from None


def tune_collector() -> None:
    """Keep the cyclic garbage collector out of the way of a service's loop.

    - **Start-up's heap is frozen** (`gc.freeze`): modules, classes, protobuf descriptors,
      SQLAlchemy and pydantic metadata, about 130,000 objects that are never garbage, are
      left out of every later pass. It is not collected first: a full pass here took
      60-150 ms of the time from spawn to SERVING, to find some 1,200 unreachable objects
      (start-up imports run with the collector off), which are frozen with the rest.
    - **Young collections run every 20,000 allocations, not 700.** At 700, the objects of
      calls in flight outlive two young passes and are promoted, and the old generation
      then grows fast enough to be swept in full every few seconds.

    Measured with `python -m bench --only watch_fanout` (2,000 open streams, 8 runs each): the
    api's full passes took 100-240 ms each, and they were the whole tail of the events'
    p99. With start-up frozen alone, 4 of 8 runs were still over 50 ms (median 43 ms).
    With both, no full pass ran during the workload, and 1 of 8 was over (median 23 ms).
    GetJob and SubmitJob with 16 clients were no slower.

    The collector is (re-)enabled here: the `conveyor` command turns it off while a service
    imports its modules (see `conveyor.cli.main`)."""
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_ALLOCATIONS, 10, 10)
    gc.enable()
