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

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError

from conveyor.redis.connection import AnyRedis, pubsub_client

log = logging.getLogger(__name__)

T = TypeVar("T")

BUFFER = 64
# How long `listen` waits for Redis to confirm a subscription before it lets the
# subscriber catch up from the event stream instead.
CONFIRM_SECONDS = 2.0
KEEPALIVE = "cv:hub:keepalive"


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
        # The client the pub/sub connection comes from (`pubsub_client`): on a cluster, a
        # client of one node, the `_turn`-th.
        self._client: Redis | None = None
        self._turn = 0
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
                if pubsub is not None:  # else the next node's connection subscribes it
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

    async def _ensure_started(self) -> PubSub | None:
        """The pub/sub connection, opened with the reader on first use; None while a
        cluster's hub is between nodes."""
        if self._reader is None:
            self._pubsub = await self._open()
            self._reader = asyncio.create_task(self._read(), name="event-hub")
        return self._pubsub

    async def _open(self) -> PubSub:
        """A pub/sub connection subscribed to every channel listened to (none at first).

        A channel nobody publishes on keeps the connection in subscribe mode while no
        watcher is open, so the reader never sees an idle, unsubscribed connection."""
        self._client = await pubsub_client(self.redis, self._turn)
        pubsub = self._client.pubsub()
        await pubsub.subscribe(KEEPALIVE, *self._subs)
        return pubsub

    async def _read(self) -> None:
        while True:
            pubsub = self._pubsub
            if pubsub is None:  # between nodes (see _next_node)
                await asyncio.sleep(0.5)
                await self._next_node()
                continue
            try:
                message = await pubsub.get_message(timeout=None)
            except (RedisConnectionError, OSError) as exc:
                log.warning("event hub lost redis (%s); reconnecting", exc)
                self._mark_all_lagged()
                await asyncio.sleep(0.5)
                if self._client is not self.redis:
                    await self._next_node()
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

    async def _next_node(self) -> None:
        """On a cluster, listen on the next node: the one listened on may be down for good
        (one Redis' own pub/sub reconnects to it and subscribes again by itself)."""
        async with self._lock:
            await self._close_pubsub()
            self._turn += 1
            try:
                self._pubsub = await self._open()
            except (RedisConnectionError, OSError) as exc:
                log.warning("event hub: node %d unreachable (%s)", self._turn, exc)
                await self._close_pubsub()  # the reader tries the next node

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
        await self._close_pubsub()

    async def _close_pubsub(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
        if self._client is not None and self._client is not self.redis:
            with contextlib.suppress(Exception):
                await self._client.aclose()
        self._pubsub, self._client = None, None
