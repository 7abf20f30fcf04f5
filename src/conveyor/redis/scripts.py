"""The Lua scripts, run with EVALSHA by their SHA-1.

redis-py's `Script` objects check `SCRIPT EXISTS` before every pipeline, one extra round
trip per batch; here the SHA is computed locally, EVALSHA is sent straight away, and only a
NOSCRIPT answer (a restarted or flushed Redis) loads the script and runs the call again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError, ResponseError

NAMES = (
    "enqueue",
    "claim",
    "heartbeat",
    "finish",
    "progress",
    "cancel",
    "reconcile",
    "restore",
    "release",
    "ratelimit",
    "configure",
    "queue_stats",
    "waiting",
    "look",
    "announce",
    "release_worker",
)


def _source(name: str) -> str:
    folder = resources.files("conveyor.redis") / "scripts"
    common = (folder / "_common.lua").read_text()
    return common + "\n" + (folder / f"{name}.lua").read_text()


def _is_noscript(result: object) -> bool:
    return isinstance(result, NoScriptError) or (
        isinstance(result, ResponseError) and str(result).startswith("NOSCRIPT")
    )


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    async def __call__(self, redis: Redis, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await redis.script_load(self.source)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)

    def queue(self, pipe: Pipeline, keys: Sequence[Any], args: Sequence[Any]) -> None:
        """Add a call to a pipeline; run it with `Scripts.execute`."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)


class Scripts:
    def __init__(self) -> None:
        for name in NAMES:
            setattr(self, name, Script(name, _source(name)))
        self._by_sha = {s.sha: s for s in self.all()}

    enqueue: Script
    claim: Script
    heartbeat: Script
    finish: Script
    progress: Script
    cancel: Script
    reconcile: Script
    restore: Script
    release: Script
    ratelimit: Script
    configure: Script
    queue_stats: Script
    waiting: Script
    look: Script
    announce: Script
    release_worker: Script

    def all(self) -> list[Script]:
        return [getattr(self, name) for name in NAMES]

    async def execute(self, pipe: Pipeline) -> list[Any]:
        """Run a pipeline of script calls; calls refused with NOSCRIPT are loaded and rerun."""
        stack = list(pipe.command_stack)
        results = await pipe.execute(raise_on_error=False)
        missing = [i for i, r in enumerate(results) if _is_noscript(r)]
        if missing:
            for sha in {str(stack[i][0][1]) for i in missing}:
                await pipe.script_load(self._by_sha[sha].source)
            await pipe.execute()
            for i in missing:
                args, options = stack[i]
                pipe.execute_command(*args, **options)
            for i, result in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return list(results)
