"""EventHub: one Redis pub/sub connection per process fans job events out to any number of
local subscribers (WatchJob streams, a worker's cancel listener).

Each subscriber gets a small bounded buffer. A subscriber that falls behind is not allowed to
grow memory: its buffer is dropped and it is marked `lagged`, and the WatchJob logic catches
up from the job's Redis event stream by sequence number. Sequence numbers also close the
race between taking a snapshot and the subscription becoming live, so no event is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger(__name__)

BUFFER = 64
# How long `subscribe` waits for Redis to confirm a subscription before it lets the
# subscriber catch up from the event stream instead.
CONFIRM_SECONDS = 2.0


class Subscription:
    """Messages published on one channel, as seen by one subscriber."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.lagged = False
        self._queue: asyncio.Queue[str] = asyncio.Queue(BUFFER)
        self._ready = asyncio.Event()

    def _deliver(self, data: str) -> None:
        try:
            self._queue.put_nowait(data)
        except asyncio.QueueFull:
            self.lagged = True
            self._drop_buffered()
        self._ready.set()

    def _drop_buffered(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()

    async def get(self, wait_seconds: float | None = None) -> str | None:
        """The next message; None after `wait_seconds` or when lagged (then catch up)."""
        if self._queue.empty():
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), wait_seconds)
        if self.lagged:  # the caller re-reads the stream, which covers everything buffered
            self.lagged = False
            self._drop_buffered()
            return None
        return None if self._queue.empty() else self._queue.get_nowait()


class EventHub:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._pubsub: PubSub | None = None
        self._subs: dict[str, set[Subscription]] = defaultdict(set)
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # Channels whose SUBSCRIBE Redis has not confirmed yet (see `subscribe`).
        self._confirmed: dict[str, asyncio.Event] = {}

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subs.values())

    async def subscribe(self, channel: str) -> Subscription:
        """A subscription to `channel` that is live in Redis when this returns: SUBSCRIBE
        goes over the pub/sub connection while the caller's next read (a job's snapshot)
        goes over another, so Redis may serve that read first, and an event published in
        between would reach no one (a watcher of a job that then changed no more would
        wait for its recheck). So this waits for Redis's confirmation; if none comes in
        time, the subscription starts `lagged` and its first read catches up."""
        sub = Subscription(channel)
        async with self._lock:
            pubsub = await self._ensure_started()
            confirmed = self._confirmed.get(channel)
            if channel not in self._subs and confirmed is None:
                confirmed = self._confirmed[channel] = asyncio.Event()
                await pubsub.subscribe(channel)
            self._subs[channel].add(sub)
        if confirmed is not None:
            try:
                await asyncio.wait_for(confirmed.wait(), CONFIRM_SECONDS)
            except TimeoutError:
                sub.lagged = True
                sub._ready.set()
        return sub

    async def unsubscribe(self, sub: Subscription) -> None:
        async with self._lock:
            subs = self._subs.get(sub.channel)
            if subs is None:
                return
            subs.discard(sub)
            if not subs:
                del self._subs[sub.channel]
                if self._pubsub is not None:
                    with contextlib.suppress(RedisConnectionError, OSError):
                        await self._pubsub.unsubscribe(sub.channel)

    async def _ensure_started(self) -> PubSub:
        if self._pubsub is None:
            self._pubsub = self.redis.pubsub()
            # A channel nobody publishes on keeps the connection in subscribe mode while no
            # watcher is open, so the reader never sees an idle, unsubscribed connection.
            await self._pubsub.subscribe("cv:hub:keepalive")
            self._reader = asyncio.create_task(self._read(self._pubsub), name="event-hub")
        return self._pubsub

    async def _read(self, pubsub: PubSub) -> None:
        while True:
            try:
                message = await pubsub.get_message(timeout=None)
            except (RedisConnectionError, OSError) as exc:
                log.warning("event hub lost redis (%s); reconnecting", exc)
                self._mark_all_lagged()
                await asyncio.sleep(0.5)
                continue
            if message is None:
                continue
            if message.get("type") == "subscribe":
                confirmed = self._confirmed.pop(str(message["channel"]), None)
                if confirmed is not None:
                    confirmed.set()
                continue
            if message.get("type") != "message":
                continue
            for sub in tuple(self._subs.get(message["channel"], ())):
                sub._deliver(message["data"])

    def _mark_all_lagged(self) -> None:
        """After a reconnect, every subscriber may have missed messages: make them catch up."""
        for subs in self._subs.values():
            for sub in subs:
                sub.lagged = True
                sub._ready.set()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
