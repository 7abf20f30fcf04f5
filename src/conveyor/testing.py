"""Run a handler in your own tests, without Redis, a database or a worker.

    from conveyor.testing import run_handler

    def test_report(tmp_path):
        run = run_handler("report.build", {"month": "2026-11"}, objects=tmp_path)
        assert run.result == {"rows": 12}
        assert run.artifacts["report.csv"].size > 0
        assert run.progress[-1][0] == 100

The handler gets a real context: progress is recorded (every report, in order), `once()`
answers True the first time per key, artifacts go to a real object store (a folder by
default, or the `store` you pass, such as an `S3Store`), and the payload is checked against
the type's model exactly as the API would at submit. Other jobs' artifacts that the handler
reads can be provided with `RunFixture.add_artifact`.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from conveyor.config import Settings
from conveyor.errors import InvalidArgument
from conveyor.handlers.context import BaseContext, JobContext, SyncJobContext
from conveyor.handlers.registry import HandlerSpec, Registry, default_registry, load_modules
from conveyor.jobs.artifacts import Artifact, Artifacts, artifact_key
from conveyor.jobs.model import new_job_id, now_ms
from conveyor.objects import ObjectStore
from conveyor.objects.local import LocalStore

__all__ = ["HandlerRun", "RunFixture", "run_handler", "run_handler_async"]

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class HandlerRun:
    """What one run of a handler did."""

    result: Any
    job_id: str
    progress: list[tuple[float, str]]
    artifacts: dict[str, Artifact]
    store: ObjectStore


@dataclass
class RunFixture:
    """The artifacts and `once` keys a test run can see, shared across runs."""

    owner: str = "tester"
    artifacts: dict[tuple[str, str], tuple[str, Artifact]] = field(default_factory=dict)
    effects: set[tuple[str, str]] = field(default_factory=set)

    def add_artifact(
        self, store: ObjectStore, job_id: str, name: str, data: bytes, *, owner: str = ""
    ) -> Artifact:
        """Put an artifact of some earlier job (of `owner`, default the fixture's)."""
        import io

        key = artifact_key(job_id, name)
        stored = store.put(key, io.BytesIO(data), length=len(data))
        artifact = Artifact(job_id, name, key, stored.size, stored.content_type, "", now_ms())
        self.artifacts[(job_id, name)] = (owner or self.owner, artifact)
        return artifact


def _spec(handler: str | HandlerSpec, registry: Registry) -> HandlerSpec:
    if isinstance(handler, HandlerSpec):
        return handler
    load_modules([])
    spec = registry.get(handler)
    if spec is None:
        raise LookupError(f"no handler registered for job type {handler!r}")
    return spec


async def run_handler_async(
    handler: str | HandlerSpec,
    payload: dict[str, Any] | None = None,
    *,
    store: ObjectStore | None = None,
    objects: Path | None = None,
    settings: Settings | None = None,
    fixture: RunFixture | None = None,
    attempt: int = 1,
    registry: Registry | None = None,
) -> HandlerRun:
    """Run the handler of a job type (or a spec) once with a real context; see the module
    docstring. `run_handler` is the same for tests without an event loop of their own."""
    spec = _spec(handler, registry or default_registry)
    payload = payload or {}
    violations = spec.violations(payload)
    if violations:
        raise InvalidArgument(violations)
    fixture = fixture or RunFixture()
    if store is None:
        store = LocalStore(objects or Path(tempfile.mkdtemp(prefix="conveyor-objects-")),
                           base_url="http://127.0.0.1:0")  # fmt: skip
    job_id = new_job_id()
    loop = asyncio.get_running_loop()
    progress: list[tuple[float, str]] = []

    async def record(artifact: Artifact) -> None:
        fixture.artifacts[(artifact.job_id, artifact.name)] = (fixture.owner, artifact)

    async def find(owner: str, of_job: str, name: str) -> Artifact | None:
        found = fixture.artifacts.get((of_job, name))
        return found[1] if found is not None and found[0] == owner else None

    async def claim_effect(key: str) -> bool:
        if (job_id, key) in fixture.effects:
            return False
        fixture.effects.add((job_id, key))
        return True

    artifacts = Artifacts(
        job_id=job_id, owner=fixture.owner, store=store, record=record, find=find, loop=loop
    )
    kind = JobContext if spec.is_async else SyncJobContext
    ctx: BaseContext

    def on_progress() -> None:
        value = ctx.take_progress()
        if value is not None:
            progress.append(value)

    ctx = kind(
        job_id=job_id,
        job_type=spec.name,
        attempt=attempt,
        max_attempts=max(attempt, 1),
        loop=loop,
        on_progress=on_progress,
        claim_effect=claim_effect,
        owner=fixture.owner,
        settings=settings or Settings(),
        artifacts=artifacts,
        timeout_seconds=spec.timeout_seconds,
    )
    parsed = spec.parse(payload)
    if spec.is_async:
        result = await spec.fn(parsed, ctx)
    else:
        result = await asyncio.to_thread(spec.fn, parsed, ctx)
    await asyncio.sleep(0)  # deliver progress reported from the handler's thread
    on_progress()
    return HandlerRun(result, job_id, progress, {a.name: a for a in artifacts.made}, store)


def _blocking(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return asyncio.run(fn(*args, **kwargs))

    return run


run_handler = _blocking(run_handler_async)
run_handler.__doc__ = """Run the handler of a job type (or a spec) once, in a fresh event loop:
`run_handler_async` for plain (non-async) tests."""
