"""Job feeds: WatchJob's fan-out inside one API process.

A job's changes are published on its Redis channel as JSON (the job less its payload, see
`conveyor.redis.events`). Each watcher used to take every message on its own and decode and
convert it again (JSON, the job model, the proto): the 100 streams of one job did the same
work 100 times per change, which made the tail of a change's delivery to 10,000 streams.

A `JobFeed` is the one listener on a job's channel in this process. It hands each message,
undecoded, to every watcher's bounded buffer as one shared `Change`; the first watcher that
reads it decodes and converts it, and every other watcher sends the same `WatchJobResponse`
object. So an answer, once made, is never changed (grpc only serializes it).

What stays each watcher's own is what the contract needs per stream: its place in the job's
sequence (a message it has already covered is skipped, a gap is filled from the job's event
stream), its bounded buffer (a watcher that falls behind is marked lagged and catches up from
the stream alone; the others are not held up) and its auth, checked by `JobOperations.watch`
when it opened.

The safety net is the feed's too: a job that has published nothing for
WATCH_RECHECK_SECONDS has its event stream read once (not once per watcher: 10,000 streams
made 10,000 reads every 15 s) for anything after the highest sequence its watchers were
given; if there is any, a message was lost, and every watcher of the job catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping

from conveyor.errors import Unavailable
from conveyor.jobs.model import Job, JobState
from conveyor.redis import EventHub, QueueKeys, RedisQueue
from conveyor.redis.events import Subscription
from conveyor.telemetry.metrics import ApiMetrics
from conveyor.v1 import job_service_pb2 as pb

log = logging.getLogger(__name__)

# How long a job may publish nothing before its event stream is read (a safety net only).
WATCH_RECHECK_SECONDS = 15.0


def ended(answer: pb.WatchJobResponse) -> bool:
    """The answer shows the job in a terminal state: its stream ends after it."""
    return JobState(answer.job.state).terminal


def answer_for(sequence: int, job: Job) -> pb.WatchJobResponse:
    return pb.WatchJobResponse(sequence=sequence, job=job.to_proto())


class Change:
    """One message published on a job's channel, as all its watchers here receive it."""

    __slots__ = ("_answer", "data")

    def __init__(self, data: str) -> None:
        self.data = data
        self._answer: pb.WatchJobResponse | None = None


class JobFeed:
    """The watchers of one job in this process, and what they share: the job's payload
    (events do not carry it; it never changes) and each change's answer."""

    __slots__ = ("heard", "highest", "job_id", "metrics", "payload", "queue", "watchers")

    def __init__(self, queue: str, job_id: str, metrics: ApiMetrics) -> None:
        self.queue = queue
        self.job_id = job_id
        self.metrics = metrics
        # The payload as the hot state holds it (JSON), from the first watcher's snapshot.
        self.payload = ""
        self.watchers: set[Subscription[Change]] = set()
        # The highest sequence answered for any watcher, and when the job last published.
        self.highest = 0
        self.heard = time.monotonic()

    def know_payload(self, payload: str) -> None:
        """The job's payload, from a watcher's snapshot, before it reads any change (the
        same for every watcher: a job's payload never changes)."""
        if not self.payload:
            self.payload = payload

    def deliver(self, data: str) -> None:
        """`conveyor.redis.events.Listener`: one message to every watcher, undecoded."""
        self.heard = time.monotonic()
        change = Change(data)
        for watcher in self.watchers:
            watcher.deliver(change)

    def lag(self) -> None:
        for watcher in self.watchers:
            watcher.lag()

    def answer(self, change: Change) -> pb.WatchJobResponse:
        """The change's answer, made by the first watcher that asks, for all of them."""
        if change._answer is None:
            change._answer = self.convert(json.loads(change.data))
        return change._answer

    def convert(self, event: Mapping[str, str]) -> pb.WatchJobResponse:
        """An answer from an event (or the hot state) with this job's payload."""
        self.metrics.watch_conversions.inc()
        sequence = int(event["seq"])
        self.highest = max(self.highest, sequence)
        return answer_for(sequence, Job.from_hot({**event, "payload": self.payload}))


class JobFeeds:
    """This process's job feeds, one per watched job while any stream watches it."""

    def __init__(self, hub: EventHub, queue: RedisQueue, metrics: ApiMetrics) -> None:
        self.hub = hub
        self.queue = queue
        self.metrics = metrics
        self._feeds: dict[str, JobFeed] = {}
        self._rechecks: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._feeds)

    @contextlib.asynccontextmanager
    async def watching(
        self, queue: str, job_id: str
    ) -> AsyncIterator[tuple[JobFeed, Subscription[Change]]]:
        """A watcher of the job: its feed and its own buffer, live in Redis on entry (a
        watcher Redis did not confirm in time starts lagged, so its first read catches up).
        `queue` is the job's physical queue (`Job.placement`), whose tag its channel has."""
        channel = QueueKeys(queue).channel(job_id)
        feed = self._feeds.get(channel)
        if feed is None:
            feed = self._feeds[channel] = JobFeed(queue, job_id, self.metrics)
            if self._rechecks is None or self._rechecks.done():
                self._rechecks = asyncio.create_task(self._recheck_loop(), name="feed-rechecks")
        watcher: Subscription[Change] = Subscription(channel)
        feed.watchers.add(watcher)
        try:
            if not await self.hub.listen(channel, feed):
                watcher.lag()
            yield feed, watcher
        finally:
            feed.watchers.discard(watcher)
            if not feed.watchers:
                if self._feeds.get(channel) is feed:
                    del self._feeds[channel]
                await self.hub.unlisten(channel, feed)

    async def _recheck_loop(self) -> None:
        """While any job is watched: every WATCH_RECHECK_SECONDS, read the stream of each
        job that published nothing meanwhile (see the module's docstring)."""
        while self._feeds:
            await asyncio.sleep(WATCH_RECHECK_SECONDS)
            quiet = time.monotonic() - WATCH_RECHECK_SECONDS
            for feed in [f for f in self._feeds.values() if f.heard <= quiet]:
                await self._recheck(feed)

    async def _recheck(self, feed: JobFeed) -> None:
        try:
            missed = await self.queue.events_after(feed.queue, feed.job_id, feed.highest)
        except Unavailable as exc:  # the next pass tries again; live messages still flow
            log.warning("cannot recheck watched job %s: %s", feed.job_id, exc)
            return
        feed.heard = time.monotonic()
        if missed:
            feed.lag()
