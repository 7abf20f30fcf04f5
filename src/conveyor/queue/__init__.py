"""Redis: the queue and the hot state (keys, Lua scripts, the queue API, live events)."""

from conveyor.queue.events import EventHub
from conveyor.queue.keys import QueueKeys
from conveyor.queue.queue import Cancelled, Claim, RedisQueue, connect

__all__ = ["Cancelled", "Claim", "EventHub", "QueueKeys", "RedisQueue", "connect"]
