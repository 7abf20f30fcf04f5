"""Redis: the queue and the hot state (keys, Lua scripts, the queue API, live events)."""

from conveyor.queue.events import EventHub
from conveyor.queue.keys import QueueKeys
from conveyor.queue.queue import Claim, RedisQueue, connect

__all__ = ["Claim", "EventHub", "QueueKeys", "RedisQueue", "connect"]
