"""The worker side of process isolation: a pool of pre-started children, one per attempt.

Children come from a `forkserver`: a clean process, started once per worker, that imports
the handler modules and then forks a child on request. Forking it costs a few
milliseconds and copies no sockets, threads or event loop of the worker (forking the worker
itself would copy its gRPC and Redis connections into every child). The pool keeps `size`
children forked ahead of need, so an attempt takes a waiting child and a replacement is
forked in the background, off the attempt's path.

The worker waits on a child with its event loop (the pipe read as a stream, the exit
noticed through the process's sentinel): an isolated attempt holds no thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.machinery
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from conveyor.worker.isolation.wire import (
    MEMORY_EXIT,
    READY,
    TERMINATED_EXIT,
    Attempt,
    Call,
    Outcome,
    Progress,
    Reply,
    Setup,
    read_child,
    write_frame,
)

log = logging.getLogger(__name__)

ServeCall = Callable[[Call], Awaitable[Any]]
OnProgress = Callable[[Progress], None]


@dataclass(slots=True)
class PoolStats:
    """What isolation has cost so far (WorkerStatus, metrics and the bench read it)."""

    started: int = 0
    start_seconds: float = 0.0  # forking until READY, summed over `started`
    killed: int = 0


class Child:
    """One forked child, seen from the worker: its process and its end of the pipe."""

    def __init__(
        self, proc: BaseProcess, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.proc = proc
        self._reader, self._writer = reader, writer

    @classmethod
    async def connect(cls, proc: BaseProcess, conn: Connection) -> Child:
        """The worker's end of the child's pipe, read and written on the event loop."""
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        conn.close()
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(proc, reader, writer)

    async def ready(self) -> None:
        """Wait for the child to finish preparing (it says READY), so a waiting child is
        one an attempt can start in at once; ConnectionError if it died first."""
        try:
            said = await read_child(self._reader)
        except asyncio.IncompleteReadError:
            raise ConnectionError("the child exited before it was ready") from None
        if said != READY:
            raise ConnectionError(f"the child said {said!r} before it was ready")

    @property
    def pid(self) -> int:
        return self.proc.pid or 0

    async def run(self, attempt: Attempt, serve: ServeCall, progress: OnProgress) -> Outcome | None:
        """Hand the attempt over and follow it to its Outcome (None: the child died)."""
        reader, writer = self._reader, self._writer
        write_frame(writer, attempt)
        await writer.drain()
        while True:
            try:
                message = await read_child(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            if isinstance(message, Outcome):
                return message
            if isinstance(message, Progress):
                progress(message)
            elif isinstance(message, Call):
                write_frame(writer, await _answer(serve, message))
                await writer.drain()

    async def exited(self) -> int:
        """Wait for the child to exit (through its sentinel: no polling); its exit code,
        negative for a signal."""
        loop = asyncio.get_running_loop()
        while (code := self.proc.exitcode) is None:
            ready = loop.create_future()
            loop.add_reader(self.proc.sentinel, _set_once, ready)
            try:
                await ready
            finally:
                loop.remove_reader(self.proc.sentinel)
        return code

    async def stop(self, grace: float) -> int:
        """SIGTERM (the handler's `finally` blocks run), then SIGKILL after `grace`."""
        if self.proc.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    return await self.exited()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
        return await self.exited()

    def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ValueError):
            self.proc.close()


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _answer(serve: ServeCall, call: Call) -> Reply:
    try:
        return Reply(await serve(call))
    except Exception as exc:
        try:
            pickle.dumps(exc)
        except Exception:
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        return Reply(error=exc)


def _children_skip_main() -> None:
    """Keep children from running the worker's main script again.

    multiprocessing runs the parent's main module again in every forkserver child (to find
    what the parent defined there), unless it was run with `-m` as a package's
    `__main__`. The `conveyor` console script runs by path, and running it again, its CLI
    imports and all, cost each child about 150 ms of CPU: ten times the fork. A child
    needs nothing from it, so the main module is labelled as a package's `__main__`, which
    multiprocessing leaves alone. Done once, before the first fork."""
    main = sys.modules.get("__main__")
    if main is not None and getattr(main, "__spec__", None) is None:
        main.__spec__ = importlib.machinery.ModuleSpec("conveyor.worker.isolation.__main__", None)


def _store_modules(setup: Setup) -> list[str]:
    """The object store's module, imported once by the fork server: a child that had to
    import the S3 client itself would spend 150 ms of CPU on it."""
    if not setup.with_objects:
        return []
    return ["conveyor.objects.s3" if setup.settings.s3_endpoint else "conveyor.objects.local"]


def describe_exit(code: int, memory_limit_mb: int | None) -> str:
    """Why a child that sent no outcome ended, as the attempt's error."""
    if code == MEMORY_EXIT:
        return f"killed: memory limit {memory_limit_mb} MB exceeded"
    if code < 0:
        return f"killed: exit signal {-code} ({signal.Signals(-code).name})"
    if code == TERMINATED_EXIT:
        return "killed: terminated"
    return f"the handler's process exited with code {code}"


class ProcessPool:
    """Children forked ahead of need; each runs one attempt (see the module docstring)."""

    def __init__(
        self, setup: Setup, *, size: int, preload: Sequence[str], kill_grace: float
    ) -> None:
        self.setup = setup
        self.size = size
        self.kill_grace = kill_grace
        self.stats = PoolStats()
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(
            ["conveyor.worker.isolation.child", *_store_modules(setup), *preload]
        )
        self._idle: deque[Child] = deque()
        self._filling: asyncio.Task[None] | None = None
        self._reaping: set[asyncio.Task[None]] = set()
        self._closed = False

    def start(self) -> None:
        """Start the fork server and fork the first children, in the background: the
        worker serves meanwhile, and an attempt that comes first forks its own child."""
        _children_skip_main()
        self._refill()

    async def ready(self) -> None:
        """Wait until the pool holds its `size` children (tests, the bench)."""
        self._refill()
        if self._filling is not None:
            await asyncio.shield(self._filling)

    async def run(
        self,
        attempt: Attempt,
        serve: ServeCall,
        progress: OnProgress,
    ) -> Outcome:
        """Run one attempt in a child of its own. A cancelled call (the job cancelled, its
        timeout, the worker stopping) stops the child before it returns."""
        child = await self._take()
        try:
            outcome = await child.run(attempt, serve, progress)
        except BaseException:
            self.stats.killed += 1
            await asyncio.shield(self._end(child, self.kill_grace))
            raise
        if outcome is not None:
            self._reap(child)
            return outcome
        code = await child.exited()
        child.close()
        self.stats.killed += 1
        return Outcome(error=describe_exit(code, attempt.memory_limit_mb), failed=True)

    async def close(self) -> None:
        """Stop the waiting children (their pipe closes: they exit on their own)."""
        self._closed = True
        if self._filling is not None:
            self._filling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._filling
        idle, self._idle = list(self._idle), deque()
        await asyncio.gather(*(self._end(c, self.kill_grace) for c in idle))
        await asyncio.gather(*self._reaping, return_exceptions=True)

    async def _take(self) -> Child:
        child = self._idle.popleft() if self._idle else await self._fork()
        self._refill()
        return child

    def _refill(self) -> None:
        if self.size and not self._closed and (self._filling is None or self._filling.done()):
            self._filling = asyncio.create_task(self._fill(), name="isolation-fill")

    async def _fill(self) -> None:
        while len(self._idle) < self.size and not self._closed:
            try:
                child = await self._fork()
            except Exception as exc:  # the attempts fork their own; they will say why
                log.warning("could not fork a child for process isolation: %s", exc)
                return
            if self._closed:
                await self._end(child, 0)
                return
            self._idle.append(child)

    async def _fork(self) -> Child:
        started = time.perf_counter()
        proc, conn = await asyncio.to_thread(self._start_process)
        child = await Child.connect(proc, conn)
        try:
            await child.ready()
        except BaseException:
            await asyncio.shield(self._end(child, 0))
            raise
        self.stats.started += 1
        self.stats.start_seconds += time.perf_counter() - started
        return child

    def _start_process(self) -> tuple[BaseProcess, Connection]:
        from conveyor.worker.isolation.child import serve  # the child's side imports the runner

        ours, theirs = self._context.Pipe(duplex=True)
        proc = self._context.Process(
            target=serve, args=(theirs, self.setup), name="conveyor-handler", daemon=True
        )
        proc.start()
        theirs.close()
        return proc, ours

    async def _end(self, child: Child, grace: float) -> None:
        try:
            await child.stop(grace)
        finally:
            child.close()

    async def _await_exit(self, child: Child) -> None:
        try:
            async with asyncio.timeout(self.kill_grace):
                await child.exited()
        except TimeoutError:
            await child.stop(self.kill_grace)
        finally:
            child.close()

    def _reap(self, child: Child) -> None:
        """A child that reported exits by itself; make sure of it off the attempt's path."""
        task = asyncio.create_task(self._await_exit(child), name="isolation-reap")
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)
