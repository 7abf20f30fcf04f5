"""What a running handler can see and do: `JobContext` for async handlers,
`SyncJobContext` for sync ones (they differ only in how `once()` is called).

`progress()` may be called as often as a handler likes, from the event loop or from a worker
thread: it only records the latest value, and the worker sends the newest one to Redis at most
every `PROGRESS_INTERVAL` seconds, so a tight loop reporting progress costs no round trips.

`once(key)` guards a side effect that must happen at most once per job, across retries,
reclaims after a crash, and replays:

    if await ctx.once("welcome-email"):      # sync handlers: if ctx.once(...):
        send_welcome_email(...)

The first call for a (job, key) commits a marker in the database and returns True; every
later call, in any attempt, returns False. What is promised, exactly:
- At most once: the marker is committed before the effect starts, so no two attempts both
  get True, even when a frozen worker wakes up after its job was reclaimed (a stale attempt
  always gets False: the marker is fenced like every other write).
- Not exactly once: if the worker dies after the marker and before the effect completes,
  the effect is not retried. Effects that must happen should be idempotent on their own
  side instead (an idempotency key at the email or payment provider) and not use `once`.
- If the database cannot be reached, `once` raises `Unavailable`, and the attempt fails
  and is retried: it never answers True without the marker committed.

`dependency_results()` gives a job that depends on others (SubmitJobRequest.depends_on)
what each of them returned: a dict from dependency id to its handler's result, None for
one that did not succeed (a RUN_ANYWAY job runs after failures too) or no longer exists.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conveyor.errors import FieldViolation, InvalidArgument
from conveyor.jobs.artifacts import Artifacts, AsyncArtifacts, FindFn, RecordFn

if TYPE_CHECKING:
    from conveyor.config import Settings
    from conveyor.objects import ObjectStore

PROGRESS_INTERVAL = 0.1
MAX_ONCE_KEY = 256

ClaimEffect = Callable[[str], Awaitable[bool]]
DependencyResults = Callable[[], Coroutine[Any, Any, dict[str, Any]]]


async def _no_effects(key: str) -> bool:
    raise RuntimeError("this context was made without a side-effect store")


async def _no_dependencies() -> dict[str, Any]:
    return {}


class BaseContext:
    """What both kinds of handler get; see the module docstring."""

    def __init__(
        self,
        *,
        job_id: str,
        job_type: str,
        attempt: int,
        max_attempts: int,
        loop: asyncio.AbstractEventLoop,
        on_progress: Callable[[], None],
        claim_effect: ClaimEffect = _no_effects,
        owner: str = "",
        settings: Settings | None = None,
        artifacts: Artifacts | None = None,
        timeout_seconds: float | None = None,
        dependency_results: DependencyResults = _no_dependencies,
    ) -> None:
        self.job_id = job_id
        self.job_type = job_type
        self.owner = owner
        # The worker's configuration (built-in types read their SMTP, HTTP and export
        # settings here); None only in contexts made by hand without one.
        self.settings = settings
        self._artifacts = artifacts
        # This attempt's time limit (the job's timeout), for handlers that pass it on, such
        # as a statement timeout; None when the context was made without one.
        self.timeout_seconds = timeout_seconds
        self.attempt = attempt
        self.max_attempts = max_attempts
        self._loop = loop
        self._on_progress = on_progress
        self._claim_effect = claim_effect
        self._dependency_results = dependency_results
        # A plain flag: set once by the worker, read by the handler (atomic in CPython).
        self._cancelled = False
        self._lock = threading.Lock()
        self._progress: tuple[float, str] | None = None

    @functools.cached_property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records carry the job id and attempt."""
        return logging.LoggerAdapter(
            logging.getLogger(f"conveyor.job.{self.job_type}"),
            {"job_id": self.job_id, "attempt": self.attempt},
        )

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled; sync handlers should check it and return early."""
        return self._cancelled

    def progress(self, percent: float, message: str = "") -> None:
        """Report progress (0-100) and an optional message; cheap, thread-safe, coalesced."""
        value = (min(max(float(percent), 0.0), 100.0), str(message)[:1024])
        with self._lock:
            first = self._progress is None
            self._progress = value
        if first:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is self._loop:
                self._on_progress()
            else:
                self._loop.call_soon_threadsafe(self._on_progress)

    def take_progress(self) -> tuple[float, str] | None:
        """The newest unsent progress report, if any (the worker's side)."""
        with self._lock:
            value, self._progress = self._progress, None
        return value

    def cancel(self) -> None:
        self._cancelled = True

    def _sync_artifacts(self) -> Artifacts:
        if self._artifacts is None:
            raise RuntimeError("this context was made without an object store")
        return self._artifacts

    async def _once(self, key: str) -> bool:
        if not key or len(key) > MAX_ONCE_KEY:
            raise InvalidArgument([FieldViolation("key", f"must be 1 to {MAX_ONCE_KEY} chars")])
        return await self._claim_effect(key)

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(job_id={self.job_id!r}, type={self.job_type!r}, attempt={self.attempt})"


class JobContext(BaseContext):
    """The context of an async handler."""

    @functools.cached_property
    def artifacts(self) -> AsyncArtifacts:
        """This job's artifacts: `await ctx.artifacts.put(name, data)` and reads."""
        return AsyncArtifacts(self._sync_artifacts())

    async def once(self, key: str) -> bool:
        """True the first time any attempt of this job asks for `key`, else False."""
        return await self._once(key)

    async def dependency_results(self) -> dict[str, Any]:
        """What each dependency returned, by id (None: it did not succeed)."""
        return await self._dependency_results()


class SyncJobContext(BaseContext):
    """The context of a sync handler (which runs in a worker thread)."""

    @property
    def artifacts(self) -> Artifacts:
        """This job's artifacts: `ctx.artifacts.put(name, data)` and reads (blocking)."""
        return self._sync_artifacts()

    def once(self, key: str) -> bool:
        """True the first time any attempt of this job asks for `key`, else False."""
        return asyncio.run_coroutine_threadsafe(self._once(key), self._loop).result()

    def dependency_results(self) -> dict[str, Any]:
        """What each dependency returned, by id (None: it did not succeed)."""
        running = self._dependency_results()
        return asyncio.run_coroutine_threadsafe(running, self._loop).result()


@dataclass(frozen=True, slots=True)
class AttemptFacts:
    """Which attempt of which job a context is for (a worker's claim, or a child's
    hand-over in process isolation)."""

    job_id: str
    job_type: str
    owner: str
    attempt: int
    max_attempts: int
    timeout_seconds: float


@dataclass(frozen=True, slots=True)
class ArtifactStores:
    """Where a context's artifacts go: the object store for their bytes, and how their
    records are written and found."""

    store: ObjectStore
    record: RecordFn
    find: FindFn


def new_context(
    facts: AttemptFacts,
    *,
    is_async: bool,
    loop: asyncio.AbstractEventLoop,
    on_progress: Callable[[], None],
    claim_effect: ClaimEffect,
    settings: Settings | None,
    stores: ArtifactStores | None,
    dependency_results: DependencyResults = _no_dependencies,
) -> BaseContext:
    """The context a handler gets: JobContext for async handlers, SyncJobContext for sync
    ones, with artifacts when there is somewhere to keep them."""
    artifacts = None
    if stores is not None:
        artifacts = Artifacts(
            job_id=facts.job_id,
            owner=facts.owner,
            store=stores.store,
            record=stores.record,
            find=stores.find,
            loop=loop,
        )
    kind = JobContext if is_async else SyncJobContext
    return kind(
        job_id=facts.job_id,
        job_type=facts.job_type,
        attempt=facts.attempt,
        max_attempts=facts.max_attempts,
        loop=loop,
        on_progress=on_progress,
        claim_effect=claim_effect,
        owner=facts.owner,
        settings=settings,
        artifacts=artifacts,
        timeout_seconds=facts.timeout_seconds,
        dependency_results=dependency_results,
    )
