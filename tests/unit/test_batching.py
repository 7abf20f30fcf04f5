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
