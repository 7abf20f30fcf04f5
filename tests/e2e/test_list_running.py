"""ListJobs' `state` field (not the filter string) against the real api and worker
processes: the database never writes RUNNING, so the API must take which jobs run now
from Redis for the plain field too, as the dashboard's RUNNING tab and `conveyor list
--state` ask it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conveyor.client import AsyncClient, JobState


async def listed(client: AsyncClient, state: JobState) -> set[str]:
    """The ids of every job of the caller in `state`, over all pages."""
    found: set[str] = set()
    token = ""
    while True:
        page = await client.list(state=int(state), page_size=1000, page_token=token)
        found |= {job.id for job in page}
        token = page.next_page_token
        if not token:
            return found


async def test_the_state_field_lists_a_running_job_as_running_only(
    alice: AsyncClient, tmp_path: Path
) -> None:
    """A job held running (`test.hold` until its gate file exists) is listed by a plain
    `ListJobsRequest.state = RUNNING`, with state RUNNING, and not by `state = QUEUED`;
    once it ends it is listed as SUCCEEDED and no longer as RUNNING."""
    gate = tmp_path / "gate"
    job = await alice.submit("test.hold", {"log": str(tmp_path / "log"), "gate": str(gate)})
    async with asyncio.timeout(30):
        async for update in alice.watch(job.id):
            if update.job.state is JobState.RUNNING:
                break
    try:
        page = await alice.list(state=int(JobState.RUNNING), page_size=1000)
        [running] = [found for found in page if found.id == job.id]
        assert running.state is JobState.RUNNING and running.attempt == 1
        assert job.id not in await listed(alice, JobState.QUEUED)
    finally:
        gate.touch()
    async with asyncio.timeout(30):
        states = [update.job.state async for update in alice.watch(job.id)]
    assert states[-1] is JobState.SUCCEEDED
    assert job.id in await listed(alice, JobState.SUCCEEDED)
    assert job.id not in await listed(alice, JobState.RUNNING)
