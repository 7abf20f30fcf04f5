"""Redis: the queue and the hot state (keys, Lua scripts, the queue API, live events)."""

from conveyor.redis.connection import AnyRedis, connect
from conveyor.redis.events import EventHub
from conveyor.redis.keys import QueueKeys
from conveyor.redis.queue import Cancelled, Claim, RedisQueue

__all__ = ["AnyRedis", "Cancelled", "Claim", "EventHub", "QueueKeys", "RedisQueue", "connect"]
