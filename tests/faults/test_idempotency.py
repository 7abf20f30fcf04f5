"""Idempotent submission under contention: 1000 concurrent submits of one key, spread over
two API processes, make exactly one job, because the database's unique constraint decides
(not a check-then-insert); a different request under a taken key is ALREADY_EXISTS."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from conveyor.client import AsyncClient, Job
from conveyor.embedded import free_port
from conveyor.errors import AlreadyExists, ConveyorError
from tests.processes import Keys, Stack

SUBMITS = 1000


@pytest.mark.timeout(300)
async def test_a_thousand_concurrent_submits_of_one_key_make_one_job(
    stack: Stack, keys: Keys
) -> None:
    second_api = stack.start("api", env={"CONVEYOR_API_ADDR": f"127.0.0.1:{free_port()}"})
    key = "invoice-2026-11"
    clients = [
        AsyncClient(stack.api_addr, api_key=keys.alice),
        AsyncClient(second_api.addr, api_key=keys.alice),
    ]
    try:

        async def submit(i: int) -> Job | ConveyorError:
            payload = {"seconds": 0.01} if i % 10 else {"seconds": 0.02}  # 10% differ
            try:
                return await clients[i % 2].submit(
                    "sleep", payload, idempotency_key=key, queue="idem"
                )
            except ConveyorError as exc:
                return exc

        results = await asyncio.gather(*(submit(i) for i in range(SUBMITS)))
    finally:
        for client in clients:
            await client.close()
    jobs = [r for r in results if isinstance(r, Job)]
    refusals = Counter(type(r).__name__ for r in results if isinstance(r, ConveyorError))
    ids = {job.id for job in jobs}
    print(f"\nidempotency: {SUBMITS} submits, {len(ids)} job, refusals {dict(refusals)}")
    assert len(ids) == 1, "exactly one job"
    assert set(refusals) <= {AlreadyExists.__name__}, "only the differing requests are refused"
    winner = jobs[0]
    differing = SUBMITS // 10
    expected_refused = differing if winner.payload["seconds"] == 0.01 else SUBMITS - differing
    assert sum(refusals.values()) == expected_refused

    async with AsyncClient(stack.api_addr, api_key=keys.alice) as alice:
        listed = (await alice.list(queue="idem", page_size=1000)).items
        assert [j.id for j in listed if j.idempotency_key == key] == [winner.id]
        async with AsyncClient(stack.api_addr, api_key=keys.bob) as bob:
            theirs = await bob.submit("sleep", {"seconds": 0.01}, idempotency_key=key, queue="idem")
        assert theirs.id != winner.id, "keys are per owner"
    assert second_api.stop() == 0
