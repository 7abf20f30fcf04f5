"""JobContext: what a running handler can see and do.

`progress()` may be called as often as a handler likes, from the event loop or from a worker
thread: it only records the latest value, and the worker sends the newest one to Redis at most
every `PROGRESS_INTERVAL` seconds, so a tight loop reporting progress costs no round trips.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

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
        self.log = logging.LoggerAdapter(
            logging.getLogger(f"conveyor.job.{job_type}"), {"job_id": job_id, "attempt": attempt}
        )
        self._loop = loop
        self._on_progress = on_progress
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._progress: tuple[float, str] | None = None

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled; sync handlers should check it and return early."""
        return self._cancelled.is_set()

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
        self._cancelled.set()

    def __repr__(self) -> str:
        return f"JobContext(job_id={self.job_id!r}, type={self.job_type!r}, attempt={self.attempt})"

    def __getattr__(self, name: str) -> Any:  # pragma: no cover - a clear error for typos
        raise AttributeError(f"JobContext has no attribute {name!r}")
