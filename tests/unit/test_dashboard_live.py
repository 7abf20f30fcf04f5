"""`conveyor.dashboard.live.events`: several streams as one server-sent-event response. Each
stream has its own bounded queue (a flood on one drops that stream's oldest snapshots only),
the response ends with `end` once every stream has, and closing it (the browser went away)
cancels every reader."""

from __future__ import annotations

import asyncio
import json

from conveyor.dashboard.live import QUEUE_SIZE, Put, Reader, events


def data(chunk: str) -> tuple[str, dict[str, object]]:
    name, payload = chunk.strip().split("\n")
    return name.removeprefix("event: "), json.loads(payload.removeprefix("data: "))


async def test_a_flood_on_one_stream_drops_its_oldest_snapshots_not_the_others() -> None:
    """Guards the workers page's multiplexing: a busy worker's many updates, put before the
    response sends anything, keep only its newest, in order; a quiet worker's one
    update still arrives; then `end`."""

    async def busy(put: Put) -> None:
        for n in range(3 * QUEUE_SIZE):
            put(("worker", {"id": "busy", "n": n}))

    async def quiet(put: Put) -> None:
        put(("worker", {"id": "quiet", "n": 0}))

    sent = [data(chunk) async for chunk in events({"busy": busy, "quiet": quiet})]
    assert sent[-1] == ("end", {})
    busy_seen = [d["n"] for name, d in sent if d.get("id") == "busy"]
    # The newest, in order (the stream's end takes one slot of its queue too).
    assert busy_seen == list(range(2 * QUEUE_SIZE + 1, 3 * QUEUE_SIZE))
    assert ("worker", {"id": "quiet", "n": 0}) in sent


async def test_closing_the_response_cancels_every_reader() -> None:
    """The browser went away: each reader still waiting on its stream is cancelled (which
    cancels its gRPC call), and the response sends nothing more."""
    started, cancelled = asyncio.Event(), []

    def waiting(name: str) -> Reader:
        async def read(put: Put) -> None:
            put(("worker", {"id": name}))
            started.set()
            try:
                await asyncio.Event().wait()  # a stream with nothing more to say
            except asyncio.CancelledError:
                cancelled.append(name)
                raise

        return read

    response = events({"a": waiting("a"), "b": waiting("b")})
    first = await anext(response)
    assert data(first)[0] == "worker"
    await response.aclose()
    assert sorted(cancelled) == ["a", "b"]


async def test_a_reader_that_fails_ends_its_stream_alone() -> None:
    """A bug in one reader ends that stream (logged); the others go on to their end."""

    async def broken(put: Put) -> None:
        raise RuntimeError("a bug")

    async def fine(put: Put) -> None:
        put(("worker", {"id": "fine"}))

    sent = [data(chunk) async for chunk in events({"broken": broken, "fine": fine})]
    assert sent == [("worker", {"id": "fine"}), ("end", {})]
