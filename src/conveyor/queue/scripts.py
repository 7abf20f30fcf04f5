"""The Lua scripts, loaded once per client and run with EVALSHA (redis-py reloads on NOSCRIPT)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


def _source(name: str) -> str:
    folder = resources.files("conveyor.queue") / "scripts"
    common = (folder / "_common.lua").read_text()
    return common + "\n" + (folder / f"{name}.lua").read_text()


@dataclass(frozen=True)
class Scripts:
    enqueue: AsyncScript
    claim: AsyncScript
    heartbeat: AsyncScript
    finish: AsyncScript
    progress: AsyncScript
    cancel: AsyncScript

    @classmethod
    def register(cls, redis: Redis) -> Scripts:
        names = ("enqueue", "claim", "heartbeat", "finish", "progress", "cancel")
        return cls(**{n: redis.register_script(_source(n)) for n in names})
