"""Crash recovery: a worker killed with kill -9 mid-job loses no job; after its lease
expires (2 s here) another worker runs the job again as a new attempt."""

from __future__ import annotations

import asyncio

from conveyor.client import AsyncClient, JobState
from conveyor.db import Database, JobStore
from tests.processes import Keys, Stack

QUEUE = "crash"


async def test_kill_9_mid_job_reruns_the_job_elsewhere(
    stack: Stack, keys: Keys, alice: AsyncClient
) -> None:
    doomed = stack.start("worker", "--queues", QUEUE, env=stack.worker_env())
    job = await alice.submit("sleep", {"seconds": 1.0, "steps": 10}, queue=QUEUE)
    async with asyncio.timeout(20):
        async for update in alice.watch(job.id):
            if update.job.progress >= 20:
                break
    doomed.kill()

    rescuer = stack.start("worker", "--queues", QUEUE, env=stack.worker_env())
    async with asyncio.timeout(30):
        updates = [u async for u in alice.watch(job.id)]
    final = updates[-1].job
    assert final.state == JobState.SUCCEEDED
    assert final.attempt == 2, "the crashed attempt counts"

    db = Database(stack.env["CONVEYOR_DATABASE_URL"])
    try:
        stored = await JobStore(db).get(job.id)
    finally:
        await db.close()
    assert stored is not None and stored.state.name == "SUCCEEDED" and stored.attempt == 2
    assert rescuer.stop() == 0
