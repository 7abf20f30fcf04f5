"""JobContext: what a running handler can see and do.

`progress()` may be called as often as a handler likes, from the event loop or from a worker
thread: it only records the latest value, and the worker sends the newest one to Redis at most
every `PROGRESS_INTERVAL` seconds, so a tight loop reporting progress costs no round trips.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable

PROGRESS_INTERVAL = 0.1


class JobContext:
    def __init__(
        self,
        *,
        job_id: str,
        job_type: str,
        attempt: int,
        max_attempts: int,
        loop: asyncio.AbstractEventLoop,
        on_progress: Callable[[], None],
    ) -> None:
        self.job_id = job_id
        self.job_type = job_type
        self.attempt = attempt
        self.max_attempts = max_attempts
        self._loop = loop
        self._on_progress = on_progress
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

    def __repr__(self) -> str:
        return f"JobContext(job_id={self.job_id!r}, type={self.job_type!r}, attempt={self.attempt})"
