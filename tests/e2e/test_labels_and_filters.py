"""Labels and ListJobs' filter through the real api and worker processes: labels are kept
and returned (submit, get, list, a schedule's jobs), are part of an idempotent request,
and find jobs together with the payload, state and error; bad labels and bad filters are
field violations; a running job lists as RUNNING (the database never says so)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from conveyor.client import AsyncClient, Job, JobState, Page, schedule_request
from conveyor.errors import AlreadyExists, InvalidArgument, PermissionDenied

# A queue no worker serves: its jobs stay QUEUED.
PARKED = "parked-labels"


def ids(page: Page[Job]) -> list[str]:
    return [job.id for job in page]


async def test_labels_are_kept_returned_and_found(alice: AsyncClient, bob: AsyncClient) -> None:
    run = uuid.uuid4().hex
    billing = await alice.submit(
        "noop", {"customer": {"id": 7}, "kind": "monthly"}, queue=PARKED,
        labels={"team": "billing", "run": run},
    )  # fmt: skip
    ops = await alice.submit(
        "noop", {"customer": {"id": 8}}, queue=PARKED, labels={"team": "ops", "run": run}
    )
    assert billing.labels == {"team": "billing", "run": run}
    assert (await alice.get(billing.id)).labels == billing.labels
    mine = f'labels.run = "{run}"'
    assert ids(await alice.list(filter=mine)) == [ops.id, billing.id], "newest first"
    assert ids(await alice.list(filter=f'{mine} AND labels.team = "billing"')) == [billing.id]
    assert ids(await alice.list(filter=f"{mine} AND -labels.team = billing")) == [ops.id]
    assert ids(await alice.list(filter=f"{mine} AND payload.customer.id = 8")) == [ops.id]
    assert ids(await alice.list(filter=f'{mine} AND payload.kind = "monthly"')) == [billing.id]
    assert ids(await alice.list(filter=f"{mine} AND labels.team:*")) == [ops.id, billing.id]
    assert ids(await alice.list(filter=f"{mine} AND state = QUEUED", queue=PARKED)) == [
        ops.id,
        billing.id,
    ]
    first = await alice.list(filter=mine, page_size=1)
    second = await alice.list(filter=mine, page_size=1, page_token=first.next_page_token)
    assert ids(first) + ids(second) == [ops.id, billing.id] and not second.next_page_token
    assert ids(await bob.list(filter=mine)) == [], "another owner's labels find nothing"

    key = f"labelled-{run}"
    again = await alice.submit("noop", queue=PARKED, labels={"run": run}, idempotency_key=key)
    same = await alice.submit("noop", queue=PARKED, labels={"run": run}, idempotency_key=key)
    assert same.id == again.id
    with pytest.raises(AlreadyExists):
        await alice.submit("noop", queue=PARKED, labels={"run": "other"}, idempotency_key=key)

    made = await alice.create_schedule(
        schedule_request("noop", every=3600, queue=PARKED, labels={"run": run, "from": "cron"})
    )
    triggered = await alice.trigger_schedule(made.id)
    assert triggered.labels == {"run": run, "from": "cron"}
    await alice.delete_schedule(made.id)


async def test_bad_labels_and_filters_are_field_violations(alice: AsyncClient) -> None:
    with pytest.raises(InvalidArgument) as bad:
        await alice.submit("noop", queue=PARKED, labels={"Team": "x", "ok": "y" * 257})
    assert sorted(v.field for v in bad.value.violations) == ['labels["Team"]', 'labels["ok"]']
    assert ids(await alice.list(queue=PARKED, filter='labels.ok = "x"')) == []
    with pytest.raises(InvalidArgument) as refused:
        await alice.list(filter="state = QUEUED AND stat = DEAD")
    [violation] = refused.value.violations
    assert violation.field == "filter" and "at 20" in violation.description, violation
    with pytest.raises(PermissionDenied):
        await alice.list(filter='owner = "bob"')


async def test_a_running_job_lists_as_running(alice: AsyncClient) -> None:
    run = uuid.uuid4().hex
    job = await alice.submit("sleep", {"seconds": 30, "steps": 30}, labels={"run": run})
    async with asyncio.timeout(30):
        async for update in alice.watch(job.id):
            if update.job.state is JobState.RUNNING:
                break
    mine = f'labels.run = "{run}"'
    try:
        [listed] = await alice.list(filter=mine)
        assert listed.state is JobState.RUNNING and listed.attempt == 1, listed
        assert listed.start_time is not None
        assert ids(await alice.list(filter=f"{mine} AND state = RUNNING")) == [job.id]
        assert ids(await alice.list(filter=f"{mine} AND state = QUEUED")) == []
        assert ids(await alice.list(filter=f"{mine} AND state != QUEUED")) == [job.id]
    finally:
        await alice.cancel(job.id)
    assert ids(await alice.list(filter=f"{mine} AND state = CANCELLED")) == [job.id]
