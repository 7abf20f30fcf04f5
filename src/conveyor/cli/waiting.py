"""Why a followed job waits, shown live under `conveyor watch`'s and `submit --wait`'s bar.

A WatchJob update carries the job's state and progress but not its `blocked_reason`: that is
computed when the job is read (`conveyor.jobs.blocked`), never stored. So while the followed
job waits (SCHEDULED, QUEUED, RETRYING) a thread asks GetJob once a second and the bar shows
the reason beneath it, kept current ("queue 'reports' is paused", then "... is at its
concurrency limit (3 of 3 running)"), instead of `QUEUED 0.0%` forever. Where stderr is no
terminal (a log, a pipe) there is no live bar, so each new reason is printed as a line.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Self

from rich.console import RenderableType
from rich.progress import Progress
from rich.text import Text

from conveyor.errors import ConveyorError

if TYPE_CHECKING:
    from conveyor.client import Client, Job

# How often GetJob is asked while the job waits: a person's glance, not a load.
POLL_SECONDS = 1.0


class JobProgress(Progress):
    """A progress bar with a line beneath it saying why the job waits (when it does)."""

    waiting = ""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield from super().get_renderables()
        if self.waiting:
            yield Text(f"waiting: {self.waiting}", style="yellow")


class WaitingReason:
    """Keeps `bar.waiting` current while the job's last known state is a waiting one."""

    def __init__(self, client: Client, job_id: str, bar: JobProgress) -> None:
        self.client = client
        self.job_id = job_id
        self.bar = bar
        self.waiting = False  # the job's last known state is a waiting one
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="waiting-reason", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=POLL_SECONDS * 2)

    def saw(self, job: Job) -> None:
        """The stream's latest update: a job that no longer waits has no reason to show."""
        self.waiting = job.state.waiting
        if not self.waiting:
            self._show("")

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.waiting:
                try:
                    job = self.client.get(self.job_id)
                except ConveyorError:
                    pass  # the stream reports a failure that matters; this is a courtesy
                else:
                    if job.state.waiting and self.waiting:
                        self._show(job.blocked_reason)
            self._stop.wait(POLL_SECONDS)

    def _show(self, reason: str) -> None:
        if reason == self.bar.waiting:
            return
        self.bar.waiting = reason
        if not self.bar.console.is_terminal and reason:
            self.bar.console.print(f"waiting: {reason}", highlight=False, markup=False)
        self.bar.refresh()
