"""WatchJob's fan-out in one API process (issue 21): the streams of one job share each
change's decoding and conversion (`conveyor.api.feeds`), and every stream still gets every
state in order. Against the real api and worker processes; the sharing is counted by the
api's own metric, `conveyor_watch_conversions_total`, not by timing."""

from __future__ import annotations

import asyncio

from conveyor.client import AsyncClient, JobState, JobUpdate
from tests.observability import scrape, value
from tests.processes import Stack

S = JobState
WATCHERS = 20


def conversions(stack: Stack) -> float:
    (api,) = [s for s in stack.services if s.name == "api"]
    return value(scrape(api), "conveyor_watch_conversions_total")


async def test_watchers_of_one_job_share_each_change(
    stack: Stack, alice: AsyncClient, admin: AsyncClient
) -> None:
    """Guards the sharing: 20 streams watch one job from before it starts until it
    succeeds, and each change it publishes meanwhile (claim, progress steps, the end) is
    decoded and converted once in the api, not once per stream (before: 20 times each).
    Every stream gets the same messages: the snapshot, then every change in order."""
    await admin.pause_queue("default")  # the job waits until every stream is open
    try:
        job = await alice.submit("sleep", {"seconds": 0.3, "steps": 3})
        first: list[asyncio.Event] = [asyncio.Event() for _ in range(WATCHERS)]

        async def watch(index: int) -> list[JobUpdate]:
            seen = []
            async for update in alice.watch(job.id):
                seen.append(update)
                first[index].set()
            return seen

        watching = [asyncio.create_task(watch(i)) for i in range(WATCHERS)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in first)), 30)
        before = conversions(stack)
    finally:
        await admin.resume_queue("default")
    seen = await asyncio.wait_for(asyncio.gather(*watching), 60)
    after = conversions(stack)

    shown = [[(u.sequence, u.job.state, u.job.progress) for u in updates] for updates in seen]
    assert all(one == shown[0] for one in shown), "every stream gets the same messages"
    sequences = [sequence for sequence, _, _ in shown[0]]
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))
    assert shown[0][0][1] == S.QUEUED and shown[0][-1][1] == S.SUCCEEDED
    assert {state for _, state, _ in shown[0]} >= {S.RUNNING}
    assert all(dict(u.job.payload) == {"seconds": 0.3, "steps": 3} for u in seen[0])
    changes = len(sequences) - 1  # after the snapshot each stream started with
    assert changes >= 4  # claimed, three progress steps (the last one 100 %), succeeded
    assert after - before == changes
