"""Group commit: concurrent callers share a flush; a failed flush fails only its callers."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.batching import Batcher


async def test_concurrent_items_share_flushes() -> None:
    flushes: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        flushes.append(items)
        await asyncio.sleep(0.01)
        return [i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(flush)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(50)))
    assert results == [i * 10 for i in range(50)]
    assert len(flushes) <= 3  # the first alone, then the rest together
    assert sorted(i for batch in flushes for i in batch) == list(range(50))


async def test_a_failed_flush_fails_its_items_and_the_next_flush_runs() -> None:
    calls = 0

    async def flush(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database down")
        return items

    batcher: Batcher[int, int] = Batcher(flush)
    with pytest.raises(RuntimeError):
        await batcher.submit(1)
    assert await batcher.submit(2) == 2


async def test_batches_are_capped() -> None:
    sizes: list[int] = []

    async def flush(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return items

    batcher: Batcher[int, int] = Batcher(flush, max_batch=10)
    assert await batcher.submit_many(list(range(35))) == list(range(35))
    assert max(sizes) == 10 and sum(sizes) == 35


async def test_with_concurrency_two_a_second_item_does_not_wait_for_a_busy_flush() -> None:
    """Guards the quiet caller behind a busy one: with two flushes allowed, an item that
    arrives during a slow flush is flushed at once, and a third waits for the next."""
    release, busy = asyncio.Event(), asyncio.Event()
    started: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        started.append(items)
        if items == [1]:
            busy.set()
            await release.wait()
        return items

    batcher: Batcher[int, int] = Batcher(flush, concurrency=2)
    slow = asyncio.create_task(batcher.submit(1))
    await busy.wait()
    assert await batcher.submit(2) == 2  # while flush [1] is still held
    assert not slow.done()
    release.set()
    assert await slow == 1
    assert await asyncio.gather(*(batcher.submit(i) for i in range(3, 9))) == list(range(3, 9))
    assert started[:2] == [[1], [2]]


async def test_items_handed_in_as_flushes_end_are_never_stranded() -> None:
    """Guards the hand-over between flushes: items arriving at every moment of a flush's
    end all complete (a flush that has seen nothing pending must not count as running)."""

    async def flush(items: list[int]) -> list[int]:
        await asyncio.sleep(0)
        return items

    async def trickle(batcher: Batcher[int, int], start: int) -> list[int]:
        return [await batcher.submit(i) for i in range(start, start + 200)]

    for concurrency in (1, 2):
        batcher: Batcher[int, int] = Batcher(flush, concurrency=concurrency)
        loops = (trickle(batcher, k * 1000) for k in range(3))
        results = await asyncio.wait_for(asyncio.gather(*loops), 10)
        assert [r[-1] for r in results] == [199, 1199, 2199]
