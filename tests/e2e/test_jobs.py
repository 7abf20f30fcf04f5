"""JobService end to end: real api and worker processes, PostgreSQL and Redis, the client."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from google.protobuf import json_format

from conveyor.client import AsyncClient, Job, JobState, JobUpdate, submit_request
from conveyor.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from conveyor.v1 import job_service_pb2 as pb
from tests.processes import Keys, Stack

S = JobState
# A queue no worker serves: jobs there stay QUEUED until a test acts on them.
PARKED = "parked"


async def watch_all(client: AsyncClient, job_id: str, after: int = 0) -> list[JobUpdate]:
    async with asyncio.timeout(30):
        return [update async for update in client.watch(job_id, after)]


async def wait_state(client: AsyncClient, job_id: str, state: int) -> Job:
    async with asyncio.timeout(30):
        async for update in client.watch(job_id):
            if update.job.state == state:
                return update.job
    raise AssertionError(f"job {job_id} ended without reaching {S(state).name}")


async def test_sleep_job_streams_progress_to_succeeded(alice: AsyncClient) -> None:
    job = await alice.submit("sleep", {"seconds": 0.5, "steps": 5})
    assert job.state == S.QUEUED and job.owner == "alice"
    updates = await watch_all(alice, job.id)
    sequences = [u.sequence for u in updates]
    assert sequences == sorted(set(sequences)), "sequence must strictly increase"
    assert updates[-1].job.state == S.SUCCEEDED
    assert updates[-1].job.progress == 100 and updates[-1].job.attempt == 1
    assert {u.job.state for u in updates} >= {S.RUNNING, S.SUCCEEDED}
    assert any(0 < u.job.progress < 100 for u in updates), "progress was reported"
    assert all(dict(u.job.payload) == {"seconds": 0.5, "steps": 5} for u in updates)
    final = await alice.get(job.id)
    assert final.state == S.SUCCEEDED and final.finish_time is not None


async def test_watch_resumes_after_a_sequence_without_gaps(alice: AsyncClient) -> None:
    job = await alice.submit("sleep", {"seconds": 0.2, "steps": 4})
    full = await watch_all(alice, job.id)
    last = full[-1].sequence
    resumed = await watch_all(alice, job.id, after=2)
    assert [u.sequence for u in resumed] == list(range(3, last + 1))
    assert resumed[-1].job.state == S.SUCCEEDED


async def test_watching_an_ended_job_yields_it_and_ends(alice: AsyncClient) -> None:
    job = await alice.submit("noop")
    await watch_all(alice, job.id)
    again = await watch_all(alice, job.id)
    assert len(again) == 1 and again[0].job.state == S.SUCCEEDED


async def test_cancel_a_queued_job(alice: AsyncClient) -> None:
    job = await alice.submit("noop", queue=PARKED)
    cancelled = await alice.cancel(job.id)
    assert cancelled.state == S.CANCELLED
    assert (await alice.get(job.id)).state == S.CANCELLED
    with pytest.raises(FailedPrecondition):
        await alice.cancel(job.id)


async def test_cancel_a_running_job_stops_it_within_a_second(alice: AsyncClient) -> None:
    job = await alice.submit("sleep", {"seconds": 60, "steps": 600})
    await wait_state(alice, job.id, S.RUNNING)
    started = time.monotonic()
    await alice.cancel(job.id)
    updates = await watch_all(alice, job.id)
    assert updates[-1].job.state == S.CANCELLED
    assert time.monotonic() - started < 1.0
    # The handler really stopped: no progress is reported after the cancellation.
    progress = (await alice.get(job.id)).progress
    await asyncio.sleep(0.3)
    assert (await alice.get(job.id)).progress == progress


async def test_failing_job_is_retried_then_dead(alice: AsyncClient) -> None:
    job = await alice.submit("fail", {"message": "boom"}, max_attempts=2)
    updates = await watch_all(alice, job.id)
    states = [u.job.state for u in updates]
    assert S.RETRYING in states
    final = updates[-1].job
    assert final.state == S.DEAD and final.attempt == 2
    assert "boom" in final.error


async def test_permanent_error_skips_retries(alice: AsyncClient) -> None:
    job = await alice.submit("fail", {"permanent": True}, max_attempts=5)
    final = (await watch_all(alice, job.id))[-1].job
    assert final.state == S.DEAD and final.attempt == 1


async def test_delayed_job_waits_for_run_at(alice: AsyncClient) -> None:
    from datetime import UTC, datetime, timedelta

    run_at = datetime.now(UTC) + timedelta(seconds=1)
    job = await alice.submit("noop", run_at=run_at)
    assert job.state == S.SCHEDULED
    final = (await watch_all(alice, job.id))[-1].job
    assert final.state == S.SUCCEEDED
    assert final.start_time is not None
    assert final.start_time >= run_at - timedelta(milliseconds=5)


async def test_bulk_submit_runs_every_job(alice: AsyncClient) -> None:
    requests = [submit_request("noop", {"i": i}) for i in range(100)]
    jobs = await alice.submit_many(requests, view=pb.JOB_VIEW_FULL)
    assert len({j.id for j in jobs}) == 100
    assert [dict(j.payload)["i"] for j in jobs] == list(range(100))
    for job in jobs[-5:]:
        assert (await watch_all(alice, job.id))[-1].job.state == S.SUCCEEDED


async def test_idempotent_submission(alice: AsyncClient) -> None:
    first = await alice.submit("noop", {"n": 1}, queue=PARKED, idempotency_key="report-42")
    again = await alice.submit("noop", {"n": 1}, queue=PARKED, idempotency_key="report-42")
    assert again.id == first.id
    with pytest.raises(AlreadyExists):
        await alice.submit("noop", {"n": 2}, queue=PARKED, idempotency_key="report-42")


async def test_list_pages_through_an_owners_jobs(stack: Stack) -> None:
    key = stack.create_key("lister")
    async with AsyncClient(stack.api_addr, api_key=key) as client:
        made = [(await client.submit("noop", {"i": i}, queue=PARKED)).id for i in range(7)]
        seen: list[str] = []
        token = ""
        pages = 0
        while True:
            page = await client.list(page_size=3, page_token=token, queue=PARKED)
            seen += [j.id for j in page.items]
            pages += 1
            token = page.next_page_token
            if not token:
                break
        assert pages == 3 and seen == list(reversed(made))
        queued = await client.list(state=S.QUEUED, page_size=100)
        assert len(queued.items) == 7
        with pytest.raises(InvalidArgument):
            await client.list(page_token="forged-token")
        first = await client.list(page_size=3, queue=PARKED)
        with pytest.raises(InvalidArgument):  # a token is bound to the filters it was made for
            await client.list(page_size=3, page_token=first.next_page_token, queue="other")
        token = first.next_page_token
        for i in range(len(token)):  # any altered character breaks the signature
            altered = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
            with pytest.raises(InvalidArgument):
                await client.list(page_size=3, page_token=altered, queue=PARKED)
    async with AsyncClient(stack.api_addr, api_key=stack.create_key("other-lister")) as other:
        with pytest.raises(InvalidArgument):  # and to the owner it was made for
            await other.list(page_size=3, page_token=token, queue=PARKED)


async def test_admins_list_any_owner_and_users_only_their_own(
    stack: Stack, keys: Keys, alice: AsyncClient
) -> None:
    job = await alice.submit("noop", queue="admin-listing")
    async with AsyncClient(stack.api_addr, api_key=keys.admin) as admin:
        everyone = await admin.list(queue="admin-listing", page_size=100)
        only_alice = await admin.list(queue="admin-listing", owner="alice", page_size=100)
        nobody = await admin.list(queue="admin-listing", owner="bob", page_size=100)
        await admin.cancel(job.id)  # an admin acts on any owner's job
    assert job.id in [j.id for j in everyone.items] and job.id in [j.id for j in only_alice.items]
    assert nobody.items == []
    with pytest.raises(PermissionDenied):
        await alice.list(owner="bob")
    assert [j.id for j in (await alice.list(owner="alice", queue="admin-listing")).items] == [
        job.id
    ]


async def test_other_owners_jobs_are_not_found(alice: AsyncClient, bob: AsyncClient) -> None:
    job = await alice.submit("noop", queue=PARKED)
    with pytest.raises(NotFound):
        await bob.get(job.id)
    with pytest.raises(NotFound):
        await bob.cancel(job.id)
    with pytest.raises(NotFound):
        await watch_all(bob, job.id)
    assert job.id not in [j.id for j in (await bob.list(page_size=1000)).items]


async def test_bad_requests_get_field_violations(alice: AsyncClient) -> None:
    with pytest.raises(InvalidArgument) as bad:
        await alice.submit("", priority=12)
    assert {v.field for v in bad.value.violations} == {"type", "priority"}
    with pytest.raises(InvalidArgument) as bulk:
        await alice.submit_many([submit_request("noop"), submit_request("noop", priority=-1)])
    assert [v.field for v in bulk.value.violations] == ["requests[1].priority"]
    with pytest.raises(InvalidArgument):
        await alice.submit_many([])
    with pytest.raises(InvalidArgument):
        await alice.get("not-an-id")
    with pytest.raises(NotFound):
        await alice.get("01a20882-0767-7403-bae1-c2539d44da27")


async def test_calls_without_a_valid_key_are_unauthenticated(stack: Stack) -> None:
    for key in ("", "cvk_wrong"):
        async with AsyncClient(stack.api_addr, api_key=key) as client:
            with pytest.raises(Unauthenticated):
                await client.submit("noop")
            with pytest.raises(Unauthenticated):
                await watch_all(client, "01a20882-0767-7403-bae1-c2539d44da27")


async def test_nothing_half_written_on_a_rejected_bulk(alice: AsyncClient, stack: Stack) -> None:
    key = stack.create_key("bulk-owner")
    async with AsyncClient(stack.api_addr, api_key=key) as client:
        await client.submit("noop", {"v": 1}, queue=PARKED, idempotency_key="dup")
        with pytest.raises(AlreadyExists):
            await client.submit_many(
                [
                    submit_request("noop", queue=PARKED),
                    submit_request("noop", {"v": 2}, queue=PARKED, idempotency_key="dup"),
                ]
            )
        assert len((await client.list(page_size=100)).items) == 1


async def test_sync_handler_from_a_user_module_runs_in_the_pool(alice: AsyncClient) -> None:
    job = await alice.submit("test.sync_steps", {"steps": 4, "delay": 0.05})
    updates = await watch_all(alice, job.id)
    assert updates[-1].job.state == S.SUCCEEDED
    # Reports are coalesced (at most one per 100 ms), so which steps show is not fixed.
    messages = [u.job.progress_message for u in updates if u.job.progress_message]
    assert messages and all(m.startswith("step ") for m in messages)
    progress = [u.job.progress for u in updates]
    assert progress == sorted(progress)


async def test_cancelled_sync_handler_ends_cancelled(alice: AsyncClient) -> None:
    job = await alice.submit("test.sync_steps", {"steps": 600, "delay": 0.05})
    await wait_state(alice, job.id, S.RUNNING)
    await alice.cancel(job.id)
    assert (await watch_all(alice, job.id))[-1].job.state == S.CANCELLED


async def test_resuming_after_the_last_sequence_of_an_ended_job_ends_at_once(
    alice: AsyncClient,
) -> None:
    job = await alice.submit("noop")
    last = (await watch_all(alice, job.id))[-1].sequence
    assert await watch_all(alice, job.id, after=last) == []
    beyond = await watch_all(alice, job.id, after=last + 100)  # not a point this job issued
    assert [u.sequence for u in beyond] == [last]


async def test_a_handlers_return_value_is_the_jobs_result(
    alice: AsyncClient, bob: AsyncClient
) -> None:
    """Guards GetJobResult: an object comes back as it was returned, any other JSON value
    as {"value": ...}, nothing as no result; only the owner reads it, and only once the
    job SUCCEEDED. A result that is not JSON, or over CONVEYOR_MAX_STORED_RESULT_BYTES, makes the
    job DEAD with an error that says so (running it again would not help)."""
    cases: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {
        "object": ({"value": {"rows": 3, "ok": True}}, {"rows": 3, "ok": True}),
        "list": ({"value": [1, "a"]}, {"value": [1, "a"]}),
        "nothing": ({}, None),
    }
    for name, (payload, expected) in cases.items():
        job = await alice.submit("test.result", payload)
        final = (await watch_all(alice, job.id))[-1].job
        assert final.state == S.SUCCEEDED, (name, final.error)
        got = await alice.result(job.id)
        assert got.result == expected, name
        assert got.job.id == job.id and got.job.state is S.SUCCEEDED
        with pytest.raises(NotFound):
            await bob.result(job.id)
    parked = await alice.submit("noop", queue=PARKED)
    with pytest.raises(FailedPrecondition, match="it is QUEUED"):
        await alice.result(parked.id)
    failing: list[tuple[dict[str, Any], str]] = [
        ({"unjsonable": True}, "not JSON"),
        ({"bytes": 9_000_000}, "bytes"),
    ]
    for payload, why in failing:
        job = await alice.submit("test.result", payload, max_attempts=3)
        final = (await watch_all(alice, job.id))[-1].job
        assert final.state == S.DEAD and final.attempt == 1, final
        assert why in final.error


async def test_a_submit_answers_with_the_payload_as_stored(alice: AsyncClient) -> None:
    """Guards the answer's payload, copied from the request rather than rebuilt: it equals
    what GetJob (rebuilt from the stored job) shows, for a new job, for the earlier job a
    repeated idempotency key returns, and for each job of a full-view bulk."""
    payload = {"n": 3, "x": 2.5, "deep": {"list": [1, "a", None, True, {"k": []}]}, "e": {}}
    made = await alice.submit(
        "noop", payload, queue="parked", idempotency_key=f"echo-{time.time()}"
    )
    again = await alice.submit(
        "noop", payload, queue="parked", idempotency_key=made.idempotency_key
    )
    stored = await alice.get(made.id)
    assert again.id == made.id
    for answer in (made, again):
        assert answer.payload == stored.payload == payload
        assert json_format.MessageToDict(answer.raw.payload) == json_format.MessageToDict(
            stored.raw.payload
        )
    assert type(stored.payload["deep"]["list"][0]) is int
    bulk = await alice.submit_many(
        [submit_request("noop", payload, queue="parked"), submit_request("noop", queue="parked")],
        view=pb.JOB_VIEW_FULL,
    )
    assert bulk[0].payload == stored.payload
    assert not bulk[1].raw.HasField("payload") and bulk[1].payload == {}
