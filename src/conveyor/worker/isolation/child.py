"""The child side of process isolation: run one attempt, report, exit.

A child is forked by the worker's fork server before any job needs it (so it starts with
the handler modules already imported), waits for one `Attempt`, runs it and exits. One
attempt per child: nothing one owner's handler leaves behind (globals, threads, a
corrupted heap, a huge allocation) reaches the next job.

What the child sets up before the handler runs:
- **Its memory limit** (`RLIMIT_AS`): the address space it has now plus the handler's
  `memory_limit_mb`. An allocation past it raises MemoryError, and the child exits with
  `MEMORY_EXIT` at once, whatever the handler was doing, rather than try to report
  (reporting needs memory too).
- **SIGTERM stops the handler**: a `Terminated` exception is raised in the main thread
  (Python runs signal handlers between bytecodes, so a busy loop is interrupted), its
  `finally` blocks run, and the child exits. The worker sends SIGKILL after a grace.
- **It dies with its worker**, so a worker killed with -9 leaves no handler running for a
  job that another worker will now run again. Its parent is the fork server, which lives
  on while any child holds its "alive" pipe (every child does), so the child watches the
  worker itself: a pidfd of the worker's process, readable once it is gone, on the helper
  loop (or a check every second where pidfds are missing). `PR_SET_PDEATHSIG` covers the
  fork server's own death.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import importlib
import os
import resource
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any, NoReturn

from conveyor.handlers.context import PROGRESS_INTERVAL, ArtifactStores, BaseContext, new_context
from conveyor.handlers.registry import PermanentError, RateLimited
from conveyor.jobs.artifacts import Artifact
from conveyor.jobs.failures import describe as describe_failure
from conveyor.jobs.failures import format_traceback
from conveyor.objects import ObjectStore
from conveyor.telemetry.logs import bind_job, configure_logging
from conveyor.worker.isolation.wire import (
    MEMORY_EXIT,
    READY,
    TERMINATED_EXIT,
    Attempt,
    Call,
    ChildMessage,
    Outcome,
    Progress,
    Reply,
    Setup,
    encode,
)
from conveyor.worker.runner import job_result

PR_SET_PDEATHSIG = 1
M_ARENA_MAX = -8  # mallopt's parameter number (glibc's malloc.h)


class Terminated(BaseException):
    """Raised in the handler by SIGTERM: the worker cancelled the attempt or timed it out.
    A BaseException, so a handler's `except Exception` does not swallow it."""


def _terminate(_signum: int, _frame: Any) -> None:
    raise Terminated


def _die_with_parent() -> None:
    """SIGKILL when the fork server (this child's parent) dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the line above took effect
        os._exit(TERMINATED_EXIT)


class WorkerLine:
    """The child's line to its worker: progress, and calls that wait for a reply.

    The handler's thread, the progress pump and artifact calls may all use it, so sends
    are serialised, and a call holds the line until its reply has come."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._send_lock = threading.Lock()
        self._call_lock = threading.Lock()

    def send(self, message: ChildMessage) -> None:
        with self._send_lock:
            self._conn.send_bytes(encode(message))

    def call(self, op: str, *args: Any) -> Any:
        with self._call_lock:
            self.send(Call(op, args))
            reply: Reply = self._conn.recv()
        if reply.error is not None:
            raise reply.error
        return reply.value


def serve(conn: Connection, setup: Setup) -> None:
    """A pooled child's life: prepare, wait for an attempt (or EOF: the pool closed), run
    it, exit."""
    _die_with_parent()
    # What the fork server imported is never garbage: keep the collector off it, so the
    # child's collections do not write to (and so copy) the pages it shares with its
    # siblings. A list splice, not a walk of the heap.
    gc.freeze()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the worker, which decides
    try:
        configure_logging(setup.settings.log_level, setup.settings.log_format)
        prepared = _Prepared(setup)
        conn.send_bytes(encode(READY))
        attempt = conn.recv()
    except (EOFError, OSError, Terminated):
        os._exit(0)
    try:
        outcome = _run(attempt, prepared, WorkerLine(conn))
    except MemoryError:
        os._exit(MEMORY_EXIT)
    except Terminated:
        os._exit(TERMINATED_EXIT)
    try:
        conn.send_bytes(encode(outcome))
    except MemoryError:
        os._exit(MEMORY_EXIT)
    except (OSError, Terminated):
        os._exit(TERMINATED_EXIT)
    _exit(0)


def _exit(code: int) -> NoReturn:
    """Leave without the interpreter's teardown (the handler's threads may still run)."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _run(attempt: Attempt, prepared: _Prepared, worker: WorkerLine) -> Outcome:
    facts = attempt.facts
    bind_job(facts.job_id, facts.attempt, facts.job_type, attempt.queue)
    fn = _resolve(attempt.module, attempt.qualname)
    helper = prepared.helper
    ctx = _context(attempt, prepared, worker)
    _limit_memory(attempt.memory_limit_mb)
    try:
        if attempt.is_async:
            returned = asyncio.run(fn(attempt.payload, ctx))
        else:
            returned = fn(attempt.payload, ctx)
    except (MemoryError, Terminated):
        raise
    except RateLimited as exc:
        return Outcome(error=describe_failure(exc), retry_after_ms=exc.retry_after_ms)
    except PermanentError as exc:
        return Outcome(
            error=describe_failure(exc),
            traceback=format_traceback(exc),
            permanent=True,
            failed=True,
        )
    except Exception as exc:
        return Outcome(error=describe_failure(exc), traceback=format_traceback(exc), failed=True)
    finally:
        helper.flush(ctx, worker)
    result = job_result(returned)
    if isinstance(result, str):
        return Outcome(error=result, permanent=True, failed=True)
    return Outcome(result=result)


def _resolve(module: str, qualname: str) -> Any:
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def _limit_memory(limit_mb: int | None) -> None:
    """Cap the address space at what the child maps now plus the handler's allowance.

    glibc reserves 64 MiB of address space for each thread's malloc arena; a handler that
    starts a few threads would spend its allowance on reservations, so arenas are first
    limited to two."""
    if not limit_mb:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 2)
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = mapped + limit_mb * (1 << 20)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


class _HelperLoop:
    """An event loop on a thread of its own, for what a context does off the handler's
    thread: sending coalesced progress, and the artifact and `once` calls that a sync
    context makes with `run_coroutine_threadsafe`. Its one executor thread is started
    before the memory limit is set, so no later thread has to map a stack under it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="conveyor-child")
        self.executor.submit(lambda: None).result()
        self.loop.set_default_executor(self.executor)
        self._pump: asyncio.Task[None] | None = None
        threading.Thread(
            target=self.loop.run_forever, name="conveyor-child-loop", daemon=True
        ).start()

    def progressed(self, ctx: BaseContext, worker: WorkerLine) -> None:
        """Called on the loop's thread when a first unsent report is waiting."""
        if self._pump is None or self._pump.done():
            self._pump = self.loop.create_task(self._send_progress(ctx, worker))

    async def _send_progress(self, ctx: BaseContext, worker: WorkerLine) -> None:
        while (value := ctx.take_progress()) is not None:
            await self.loop.run_in_executor(self.executor, worker.send, Progress(*value))
            await asyncio.sleep(PROGRESS_INTERVAL)

    def flush(self, ctx: BaseContext, worker: WorkerLine) -> None:
        """Send the last report the pump has not sent yet, before the outcome."""
        value = ctx.take_progress()
        if value is not None:
            worker.send(Progress(*value))


class _Prepared:
    """What a waiting child sets up before its attempt comes."""

    def __init__(self, setup: Setup) -> None:
        self.settings = setup.settings
        self.helper = _HelperLoop()
        self.helper.loop.call_soon_threadsafe(_watch_worker, self.helper.loop, setup.worker_pid)
        self.store: ObjectStore | None = None
        if setup.with_objects:
            from conveyor.objects import open_store

            self.store = open_store(setup.settings)


def _watch_worker(loop: asyncio.AbstractEventLoop, pid: int) -> None:
    """Exit at once when the worker's process is gone (runs on the helper loop)."""
    try:
        gone = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(TERMINATED_EXIT)
    except (OSError, AttributeError):  # no pidfds here: look every second instead
        _check_worker(loop, pid)
        return
    loop.add_reader(gone, os._exit, TERMINATED_EXIT)


def _check_worker(loop: asyncio.AbstractEventLoop, pid: int) -> None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        os._exit(TERMINATED_EXIT)
    loop.call_later(1.0, _check_worker, loop, pid)


def _context(attempt: Attempt, prepared: _Prepared, worker: WorkerLine) -> BaseContext:
    helper = prepared.helper

    async def call(op: str, *args: Any) -> Any:
        running = asyncio.get_running_loop()
        return await running.run_in_executor(helper.executor, worker.call, op, *args)

    async def claim_effect(key: str) -> bool:
        return bool(await call("once", key))

    async def dependency_results() -> dict[str, Any]:
        return dict(await call("dependencies"))

    async def record(artifact: Artifact) -> None:
        await call("record", artifact)

    async def find(owner: str, job_id: str, name: str) -> Artifact | None:
        found: Artifact | None = await call("find", job_id, name)
        return found

    stores = None
    if prepared.store is not None:
        stores = ArtifactStores(prepared.store, record, find)
    ctx: BaseContext

    def progressed() -> None:
        helper.progressed(ctx, worker)

    ctx = new_context(
        attempt.facts,
        is_async=attempt.is_async,
        loop=helper.loop,
        on_progress=progressed,
        claim_effect=claim_effect,
        settings=prepared.settings,
        stores=stores,
        dependency_results=dependency_results,
    )
    return ctx
