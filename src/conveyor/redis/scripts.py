"""The Lua scripts, run with EVALSHA by their SHA-1.

redis-py's `Script` objects check `SCRIPT EXISTS` before every pipeline, one extra round
trip per batch; here the SHA is computed locally, EVALSHA is sent straight away, and only a
NOSCRIPT answer (a restarted or flushed Redis, or in a cluster a replica promoted after a
failover) loads the script and runs the call again. SCRIPT LOAD goes to every primary of a
cluster (redis-py routes it so), so one NOSCRIPT loads a script wherever it will run.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from redis.exceptions import ClusterError, NoScriptError, ResponseError, TryAgainError

from conveyor.redis.connection import AnyPipeline, AnyRedis

# See `_MigrationWait`.
MIGRATION_WAIT_SECONDS = 10.0
MIGRATION_RETRY_SECONDS = 0.05

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
    "debounce",
    "ended",
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

    async def __call__(self, redis: AnyRedis, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        waited = _MigrationWait()
        while True:
            try:
                return await self._call(redis, keys, args)
            except (TryAgainError, ClusterError) as exc:
                if not await waited.again(exc):
                    raise

    async def _call(self, redis: AnyRedis, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await redis.script_load(self.source)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)

    def queue(self, pipe: AnyPipeline, keys: Sequence[Any], args: Sequence[Any]) -> None:
        """Add a call to a pipeline (see `Batch`, which sends it again after a NOSCRIPT)."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)


class Scripts:
    def __init__(self) -> None:
        for name in NAMES:
            setattr(self, name, Script(name, _source(name)))

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
    debounce: Script
    ended: Script

    def all(self) -> list[Script]:
        return [getattr(self, name) for name in NAMES]

    def batch(self, redis: AnyRedis) -> Batch:
        """A pipeline for script calls (and plain commands) sent in one round trip."""
        return Batch(redis)


class Batch:
    """One pipeline (no MULTI) of script calls and plain commands, sent in one round trip
    (one per node on a cluster). Script calls refused with NOSCRIPT are sent again once
    their scripts are loaded, and only they: a call that ran must not run twice.

        async with scripts.batch(redis) as batch:
            batch.call(scripts.enqueue, keys, args)
            batch.pipe.sadd(key, member)
            replies = await batch.execute()
    """

    def __init__(self, redis: AnyRedis) -> None:
        self.redis = redis
        self.pipe: AnyPipeline = redis.pipeline(transaction=False)
        self._calls: dict[int, tuple[Script, Sequence[Any], Sequence[Any]]] = {}

    async def __aenter__(self) -> Batch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pipe.reset()  # type: ignore[no-untyped-call,unused-ignore]

    def call(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> None:
        self._calls[len(self.pipe)] = (script, keys, args)
        script.queue(self.pipe, keys, args)

    async def execute(self) -> list[Any]:
        """Every command's reply, in order; the first error is raised."""
        results = list(await self.pipe.execute(raise_on_error=False))
        missing = [i for i, result in enumerate(results) if _is_noscript(result)]
        if missing:
            for script in {self._calls[i][0] for i in missing}:
                await self.redis.script_load(script.source)
            await self._again(missing, results)
        waited = _MigrationWait()
        while moving := [i for i in self._calls if _is_moving(results[i])]:
            if not await waited.again(results[moving[0]]):
                break
            await self._again(moving, results)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def _again(self, indexes: list[int], results: list[Any]) -> None:
        """Send the script calls at `indexes` again, in one pipeline; their new replies
        replace the old in `results`."""
        again = self.redis.pipeline(transaction=False)
        for i in indexes:
            script, keys, args = self._calls[i]
            script.queue(again, keys, args)
        for i, result in zip(indexes, await again.execute(raise_on_error=False), strict=True):
            results[i] = result


def _is_moving(result: object) -> bool:
    """A cluster refused a call because the slot of its keys is moving between nodes: some
    of its keys are on the new node and some not (TRYAGAIN), or redis-py's own redirections
    and retries ran out ("TTL exhausted") while it moved."""
    return isinstance(result, TryAgainError) or (
        isinstance(result, ClusterError) and "TTL exhausted" in str(result)
    )


class _MigrationWait:
    """How long a script call waits out a slot's migration (see `_is_moving`) before its
    error is raised: up to MIGRATION_WAIT_SECONDS, retrying every MIGRATION_RETRY_SECONDS.

    A script takes several keys of its queue; while `redis-cli --cluster reshard` moves the
    slot they share, a key at a time, the call cannot run on either node. redis-py retries
    such a call for a fraction of a second; a slot of a busy queue takes longer to move, and
    a client should not hear of it."""

    def __init__(self) -> None:
        self._deadline: float | None = None

    async def again(self, exc: object) -> bool:
        """Whether to try again after `exc` (having slept a little); False: give up."""
        if not _is_moving(exc):
            return False
        now = asyncio.get_running_loop().time()
        if self._deadline is None:
            self._deadline = now + MIGRATION_WAIT_SECONDS
        if now >= self._deadline:
            return False
        await asyncio.sleep(MIGRATION_RETRY_SECONDS)
        return True
