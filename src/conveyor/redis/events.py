"""EventHub: one Redis pub/sub connection per process fans job events out to any number of
local listeners (WatchJob's job feeds, a worker's cancel listener, the schedule emitter).

Each subscriber gets a small bounded buffer. A subscriber that falls behind is not allowed to
grow memory: its buffer is dropped and it is marked `lagged`, and the WatchJob logic catches
up from the job's Redis event stream by sequence number. Sequence numbers also close the
race between taking a snapshot and the subscription becoming live, so no event is lost.

A listener is anything with `deliver` and `lag` (`Listener`): a `Subscription` of the raw
messages, or something that shares each message among subscribers of its own, as
`conveyor.api.feeds.JobFeed` does for the watchers of one job, so that a message is decoded
once per process however many streams watch the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict, deque
from typing import Generic, Protocol, TypeVar

from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError

from conveyor.redis.connection import AnyRedis

log = logging.getLogger(__name__)

T = TypeVar("T")

BUFFER = 64
# How long `listen` waits for Redis to confirm a subscription before it lets the
# subscriber catch up from the event stream instead.
CONFIRM_SECONDS = 2.0


class Listener(Protocol):
    """What the hub hands a channel's messages to (see `EventHub.listen`)."""

    def deliver(self, data: str) -> None:
        """One message, in the order Redis published it; must not block."""

    def lag(self) -> None:
        """Messages may have been missed (the hub lost Redis): catch up."""


class Subscription(Generic[T]):
    """Messages of one channel, as seen by one subscriber: at most BUFFER of them held.

    A plain deque and one future rather than an asyncio.Queue: every WatchJob stream holds
    one, and each of its waits would otherwise cost a task (`wait_for` on a coroutine)."""

    __slots__ = ("_buffer", "_waiter", "channel", "lagged")

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.lagged = False
        self._buffer: deque[T] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def deliver(self, item: T) -> None:
        if len(self._buffer) >= BUFFER:
            self.lag()
            return
        self._buffer.append(item)
        self._wake()

    def lag(self) -> None:
        """Drop what is buffered: the subscriber re-reads the stream, which covers it."""
        self.lagged = True
        self._buffer.clear()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, wait_seconds: float | None = None) -> T | None:
        """The next message; None after `wait_seconds` or when lagged (then catch up)."""
        if not self._buffer and not self.lagged:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, wait_seconds)
            except TimeoutError:
                pass
            finally:
                self._waiter = None
        if self.lagged:  # the caller re-reads the stream, which covers everything buffered
            self.lagged = False
            self._buffer.clear()
            return None
        return self._buffer.popleft() if self._buffer else None


class EventHub:
    def __init__(self, redis: AnyRedis) -> None:
        self.redis = redis
        self._pubsub: PubSub | None = None
        self._subs: dict[str, set[Listener]] = defaultdict(set)
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # Channels whose SUBSCRIBE Redis has not confirmed yet (see `listen`).
        self._confirmed: dict[str, asyncio.Event] = {}

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subs.values())

    async def subscribe(self, channel: str) -> Subscription[str]:
        """A subscription to `channel`'s raw messages, live in Redis when this returns (see
        `listen`); one that Redis did not confirm in time starts `lagged`."""
        sub: Subscription[str] = Subscription(channel)
        if not await self.listen(channel, sub):
            sub.lag()
        return sub

    async def unsubscribe(self, sub: Subscription[str]) -> None:
        await self.unlisten(sub.channel, sub)

    async def listen(self, channel: str, listener: Listener) -> bool:
        """Hand `channel`'s messages to `listener` (again: no change), live in Redis when
        this returns True: SUBSCRIBE goes over the pub/sub connection while the caller's
        next read (a job's snapshot) goes over another, so Redis may serve that read first,
        and an event published in between would reach no one (a watcher of a job that then
        changed no more would wait for its recheck). So this waits for Redis's
        confirmation; False if none came in time: the caller catches up from the stream."""
        async with self._lock:
            pubsub = await self._ensure_started()
            confirmed = self._confirmed.get(channel)
            if channel not in self._subs and confirmed is None:
                confirmed = self._confirmed[channel] = asyncio.Event()
                await pubsub.subscribe(channel)
            self._subs[channel].add(listener)
        if confirmed is not None:
            try:
                await asyncio.wait_for(confirmed.wait(), CONFIRM_SECONDS)
            except TimeoutError:
                return False
        return True

    async def unlisten(self, channel: str, listener: Listener) -> None:
        async with self._lock:
            subs = self._subs.get(channel)
            if subs is None:
                return
            subs.discard(listener)
            if not subs:
                del self._subs[channel]
                if self._pubsub is not None:
                    with contextlib.suppress(RedisConnectionError, OSError):
                        await self._pubsub.unsubscribe(channel)

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
            for listener in tuple(self._subs.get(message["channel"], ())):
                listener.deliver(message["data"])

    def _mark_all_lagged(self) -> None:
        """After a reconnect, every subscriber may have missed messages: make them catch up."""
        for listeners in self._subs.values():
            for listener in listeners:
                listener.lag()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
