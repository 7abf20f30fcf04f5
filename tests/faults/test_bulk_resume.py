"""A bulk operation survives the kill -9 of the API process running it: another API process
(here a second `conveyor api` on the same database and Redis) takes it over once its lease
(15 s) has run out and finishes it, from the page it had recorded."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

from conveyor.client import AsyncClient, BulkOperation, BulkOperationState, JobState
from conveyor.embedded import EmbeddedRedis, free_port
from tests.processes import Stack, make_env


async def until(client: AsyncClient, op_id: str, done: int, within: float) -> BulkOperation:
    """Poll the operation (it has no stream) until it has ended or done `done` jobs."""
    async with asyncio.timeout(within):
        while True:
            op = await client.get_bulk_operation(op_id)
            if op.ended or op.done >= done:
                return op
            await asyncio.sleep(0.1)


async def test_a_bulk_operation_is_resumed_after_its_api_process_is_killed(
    redis_server: EmbeddedRedis, database_url: str, tmp_path: Path
) -> None:
    """Guards the lease: the first API process cancels a page of jobs and is killed -9
    mid-way; the operation stays RUNNING (nothing ended it) until the second API process
    takes it over after the lease and ends it SUCCEEDED, every job cancelled."""
    stack = Stack(make_env(redis_server.url, database_url), tmp_path)
    first = stack.start("api")
    other_addr = f"127.0.0.1:{free_port()}"
    second = stack.start(
        "api",
        env={"CONVEYOR_API_ADDR": other_addr, "CONVEYOR_DOWNLOAD_ADDR": f"127.0.0.1:{free_port()}"},
    )
    key = stack.create_key("resumer")
    run = uuid.uuid4().hex
    try:
        async with AsyncClient(first.addr, api_key=key) as one:
            ids = [
                (await one.submit("noop", queue="parked-fault", labels={"run": run})).id
                for _ in range(40)
            ]
            op = await one.cancel_jobs(f'labels.run = "{run}"', force=True, per_second=10)
            op = await until(one, op.id, done=10, within=30)
            assert not op.ended, op
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        async with AsyncClient(other_addr, api_key=key) as two:
            assert not (await two.get_bulk_operation(op.id)).ended
            ended = await until(two, op.id, done=10**9, within=60)
            assert ended.state is BulkOperationState.SUCCEEDED, ended
            assert {(await two.get(i)).state for i in ids} == {JobState.CANCELLED}
            assert ended.done >= 10 and ended.failed == 0
    finally:
        assert second.stop() == 0, second.tail()
