"""The queue and job-type names that exist, as the API knows them.

A user picks a job's `queue` and `type` strings, so neither may cost the system anything per
new name beyond the job itself. This module says which names are real:

- **A queue exists** when it is the default queue, when an admin configured it (PauseQueue,
  ResumeQueue, UpdateQueueLimits: a `queues` row, copied to Redis), or when a worker serves
  or has served it (each heartbeat adds the worker's queues). Both go into one Redis set,
  `cv:queues:existing`, which a Redis that lost its data gets back from the next heartbeat
  of each live worker and the reconciler's next pass. A job submitted to any other queue is
  accepted, as BullMQ, Sidekiq and Celery accept it, and its `blocked_reason` says that no
  worker has ever served that queue; it runs once a worker serves it.
- **A queue's shard count** (see conveyor.jobs.shards) is read with the names, from each
  existing queue's settings in Redis, so a new job goes to one of its queue's shards; a
  count raised a moment ago reaches new submits within `CACHE_SECONDS`.
- **A job type is known** when the API's own registry has it (the built-ins and
  `CONVEYOR_HANDLERS`) or a live worker announces it. A submit of an unknown type is refused
  (INVALID_ARGUMENT naming the known types) when a live worker serves the job's queue: that
  worker would claim it and could not run it. When no live worker serves the queue (the
  deploy order puts the API first, or the queue's workers are down) the API cannot know
  what those workers will load, so it accepts the job and its `blocked_reason` says so.

Metrics label by existing queues and known types only; every other name is `other`
(`OTHER`), so series do not grow with the names users make up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from conveyor.errors import FieldViolation, Unavailable
from conveyor.handlers import Registry
from conveyor.jobs.model import DEFAULT_QUEUE
from conveyor.redis import RedisQueue
from conveyor.redis.workers import WorkerInfo, WorkerRegistry
from conveyor.telemetry.metrics import OTHER

log = logging.getLogger(__name__)

# How long one reading of the names (and live workers) is reused.
CACHE_SECONDS = 1.0
# Known types an error message names at most.
NAMED_TYPES = 20


@dataclass(frozen=True, slots=True)
class KnownNames:
    """One reading: the existing queues, the API's own types and the live workers."""

    queues: frozenset[str] = frozenset({DEFAULT_QUEUE})
    registered: frozenset[str] = frozenset()
    workers: tuple[WorkerInfo, ...] = ()
    # Shard counts of the existing queues that have more than one (conveyor.jobs.shards).
    shards: Mapping[str, int] = field(default_factory=dict)
    types: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        announced = {t for w in self.workers for t in w.types}
        object.__setattr__(self, "types", self.registered | announced)

    def shard_count(self, queue: str) -> int:
        """How many shards a new job of `queue` is spread over (1: the queue alone)."""
        return self.shards.get(queue, 1)

    def queue_label(self, queue: str) -> str:
        """The metrics label of a queue: its name if it exists, else `other`."""
        return queue if queue in self.queues else OTHER

    def type_label(self, job_type: str) -> str:
        """The metrics label of a job type: its name if it is known, else `other`."""
        return job_type if job_type in self.types else OTHER

    def serving(self, queue: str) -> list[WorkerInfo]:
        """The live workers that claim from `queue`."""
        return [w for w in self.workers if queue in w.queues]

    def type_violation(self, queue: str, job_type: str, field_name: str) -> FieldViolation | None:
        """Why a job of `job_type` on `queue` is refused, or None: a known type, or one the
        API cannot judge because no live worker serves the queue."""
        if job_type in self.types or not self.serving(queue):
            return None
        return FieldViolation(
            field_name, f"unknown job type {job_type!r}; known types: {self.listing()}"
        )

    def listing(self) -> str:
        """The known types, sorted, at most `NAMED_TYPES` of them named."""
        names = sorted(self.types)
        shown = ", ".join(names[:NAMED_TYPES])
        more = len(names) - NAMED_TYPES
        return f"{shown} and {more} more" if more > 0 else shown


class NameCache:
    """The latest `KnownNames`, read from Redis at most once per `CACHE_SECONDS`.

    A submit consults it, so a Redis that cannot be reached must not make every submit
    wait: the previous reading stays in use (or, before the first, the API's own types with
    no live workers, under which every type is accepted) until the next try a second later.
    """

    def __init__(self, queue: RedisQueue, workers: WorkerRegistry, registry: Registry) -> None:
        self.queue = queue
        self.workers = workers
        self.registry = registry
        self.latest = KnownNames(registered=frozenset(registry.names()))
        self._read_at = float("-inf")

    async def get(self) -> KnownNames:
        now = time.monotonic()
        if now - self._read_at <= CACHE_SECONDS:
            return self.latest
        self._read_at = now
        try:
            queues = await self.queue.existing_queues()
            shards = await self.queue.shard_counts(queues)
            workers = await self.workers.live()
        except Unavailable:
            log.warning("queue and worker names unavailable (redis); using the last reading")
            return self.latest
        self.latest = KnownNames(
            frozenset(queues),
            frozenset(self.registry.names()),
            tuple(workers),
            {name: n for name, n in shards.items() if n > 1},
        )
        return self.latest

    def forget(self) -> None:
        """Read again on the next `get` (an admin just made a queue exist)."""
        self._read_at = float("-inf")
