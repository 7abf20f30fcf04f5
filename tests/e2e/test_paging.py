"""Paged listings through the real api process (issue 20, item 4): ListApiKeys newest first
and ListJobAttempts oldest first, each item once across pages and under inserts, with page
tokens bound to their listing, filters and caller; ListJobs bounded by create_time."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import Table, create_engine

from conveyor.client import AsyncClient, Job, JobState
from conveyor.db import Database, sync_url
from conveyor.db.models import ApiKeyRow, AttemptRow
from conveyor.errors import InvalidArgument, from_rpc_error
from conveyor.jobs.attempts import AttemptOutcome
from conveyor.v1 import api_key_service_pb2 as kpb
from conveyor.v1 import job_service_pb2 as pb
from conveyor.v1.api_key_service_pb2_grpc import ApiKeyServiceStub
from conveyor.v1.job_service_pb2_grpc import JobServiceStub
from tests.processes import Keys, Stack

# A queue no worker serves: jobs there stay QUEUED.
PARKED = "parked-paging"


class Rpc:
    """One service's stub with a key, errors mapped like the client's."""

    def __init__(self, stub: Any, key: str) -> None:
        self.stub = stub
        self.metadata = (("authorization", f"Bearer {key}"),)

    async def __call__(self, method: str, request: Message) -> Any:
        try:
            return await getattr(self.stub, method)(request, metadata=self.metadata, timeout=30)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None


@pytest.fixture
async def channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(stack.api_addr) as channel:
        yield channel


async def walk(rpc: Rpc, method: str, request: Any, field: str) -> tuple[list[Any], int]:
    """Every item of a listing, following its tokens from `request`'s; and the pages."""
    items: list[Any] = []
    pages = 0
    while True:
        reply = await rpc(method, request)
        items += getattr(reply, field)
        pages += 1
        if not reply.next_page_token:
            return items, pages
        request.page_token = reply.next_page_token


def altered(token: str) -> list[str]:
    """The token with one character changed, at a few places away from its end (whose
    spare bits a base64 decoder may ignore)."""
    return [
        token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
        for i in range(0, len(token) - 2, 7)
    ]


async def ended(client: AsyncClient, job_id: str) -> Job:
    async with asyncio.timeout(30):
        updates = [u async for u in client.watch(job_id)]
    return updates[-1].job


def at(ms: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000 + nanos)


async def test_api_keys_page_newest_first_each_once(channel: grpc.aio.Channel, keys: Keys) -> None:
    """Guards ListApiKeys paging: every key of the listing once, newest first by
    (create_time, id), with a key made mid-listing on no later page; page_size 0 is the
    whole (under 1000) listing; tokens work only for the listing, filters and caller they
    were issued for; page_size over 1000 is INVALID_ARGUMENT. Fails before paging (the
    request has no page_size)."""
    admin = Rpc(ApiKeyServiceStub(channel), keys.admin)
    made = [
        (await admin("CreateApiKey", kpb.CreateApiKeyRequest(owner="pager"))).key for _ in range(5)
    ]

    def order(key: kpb.ApiKey) -> tuple[int, str]:
        return key.create_time.ToMilliseconds(), key.id

    first = await admin("ListApiKeys", kpb.ListApiKeysRequest(owner="pager", page_size=2))
    late = (await admin("CreateApiKey", kpb.CreateApiKeyRequest(owner="pager"))).key
    rest, pages = await walk(
        admin,
        "ListApiKeys",
        kpb.ListApiKeysRequest(owner="pager", page_size=2, page_token=first.next_page_token),
        "keys",
    )
    every = sorted([*made, late], key=order, reverse=True)
    cursor = order(first.keys[-1])
    assert [k.id for k in first.keys] == [k.id for k in sorted(made, key=order, reverse=True)[:2]]
    assert [k.id for k in rest] == [k.id for k in every if order(k) < cursor]
    assert sorted(k.id for k in [*first.keys, *rest] if k.id != late.id) == sorted(
        k.id for k in made
    ), "each key once"
    assert pages == 2
    whole = await admin("ListApiKeys", kpb.ListApiKeysRequest(owner="pager"))
    assert [k.id for k in whole.keys] == [k.id for k in every] and not whole.next_page_token

    token = first.next_page_token
    refused = [
        kpb.ListApiKeysRequest(owner="pager", page_size=1001),
        kpb.ListApiKeysRequest(owner="pager", page_size=-1),
        kpb.ListApiKeysRequest(owner="other", page_size=2, page_token=token),
        kpb.ListApiKeysRequest(page_size=2, page_token=token),
        kpb.ListApiKeysRequest(owner="pager", include_revoked=True, page_size=2, page_token=token),
        *(kpb.ListApiKeysRequest(owner="pager", page_size=2, page_token=t) for t in altered(token)),
    ]
    for request in refused:
        with pytest.raises(InvalidArgument):
            await admin("ListApiKeys", request)

    jobs = Rpc(JobServiceStub(channel), keys.admin)
    for _ in range(2):
        await jobs("SubmitJob", pb.SubmitJobRequest(type="noop", queue=PARKED))
    jobs_token = (await jobs("ListJobs", pb.ListJobsRequest(page_size=1))).next_page_token
    assert jobs_token
    with pytest.raises(InvalidArgument):  # another listing's token
        await admin("ListApiKeys", kpb.ListApiKeysRequest(page_token=jobs_token))
    other = await admin(
        "CreateApiKey",
        kpb.CreateApiKeyRequest(owner="pager-admin", role=kpb.API_KEY_ROLE_ADMIN),
    )
    with pytest.raises(InvalidArgument):  # another caller's token
        await Rpc(ApiKeyServiceStub(channel), other.secret)(
            "ListApiKeys", kpb.ListApiKeysRequest(owner="pager", page_size=2, page_token=token)
        )


async def test_attempts_page_oldest_first_each_once(
    channel: grpc.aio.Channel, keys: Keys, alice: AsyncClient
) -> None:
    """Guards ListJobAttempts paging: attempts by number from the first, each once, and
    those a replay records after the listing began come on its later pages; page_size 0 is
    every (under 1000) attempt; tokens work only for the job and caller they were issued
    for. Fails before paging (the request has no page_size)."""
    job = await alice.submit("fail", {"message": "boom"}, max_attempts=5)
    assert (await ended(alice, job.id)).state == JobState.DEAD
    rpc = Rpc(JobServiceStub(channel), keys.alice)
    first = await rpc("ListJobAttempts", pb.ListJobAttemptsRequest(id=job.id, page_size=2))
    assert [a.attempt for a in first.attempts] == [1, 2] and first.next_page_token

    await alice.retry(job.id, max_attempts=2)  # attempts 6 and 7, recorded mid-listing
    replayed = await ended(alice, job.id)
    assert replayed.state == JobState.DEAD and replayed.attempt == 7
    request = pb.ListJobAttemptsRequest(id=job.id, page_size=2, page_token=first.next_page_token)
    rest, pages = await walk(rpc, "ListJobAttempts", request, "attempts")
    assert [a.attempt for a in [*first.attempts, *rest]] == [1, 2, 3, 4, 5, 6, 7]
    assert pages == 3 and all(a.job_id == job.id for a in rest)
    whole = await rpc("ListJobAttempts", pb.ListJobAttemptsRequest(id=job.id))
    assert [a.attempt for a in whole.attempts] == list(range(1, 8))
    assert not whole.next_page_token

    token = first.next_page_token
    another = await alice.submit("noop", queue=PARKED)
    refused = [
        pb.ListJobAttemptsRequest(id=job.id, page_size=1001),
        pb.ListJobAttemptsRequest(id=job.id, page_size=-1),
        pb.ListJobAttemptsRequest(id=another.id, page_size=2, page_token=token),
        pb.ListJobAttemptsRequest(id=job.id, page_size=2, page_token="forged"),
        *(pb.ListJobAttemptsRequest(id=job.id, page_size=2, page_token=t) for t in altered(token)),
    ]
    for bad in refused:
        with pytest.raises(InvalidArgument):
            await rpc("ListJobAttempts", bad)
    with pytest.raises(InvalidArgument):  # an admin sees the job, but not with alice's token
        await Rpc(JobServiceStub(channel), keys.admin)(
            "ListJobAttempts", pb.ListJobAttemptsRequest(id=job.id, page_token=token)
        )
    jobs_token = (await alice.list(page_size=1)).next_page_token
    assert jobs_token
    with pytest.raises(InvalidArgument):  # another listing's token
        await rpc("ListJobAttempts", pb.ListJobAttemptsRequest(id=job.id, page_token=jobs_token))


async def test_a_page_of_attempts_fits_a_default_client(
    stack: Stack, channel: grpc.aio.Channel, keys: Keys, alice: AsyncClient
) -> None:
    """Guards the size cut of ListJobAttempts pages: 600 attempts with 8,000-character
    tracebacks (the most a record keeps) are about 4.9 MB, over the 4 MiB a stock gRPC
    client receives; pages end early with a token, and walking them (as `conveyor attempts`
    does) lists all 600. Before, the one answer was refused by the client
    (RESOURCE_EXHAUSTED)."""
    job = await alice.submit("noop", queue=PARKED)
    rows = [
        {
            "job_id": job.id,
            "attempt": n,
            "outcome": int(AttemptOutcome.FAILED),
            "worker_id": "w",
            "start_time": n,
            "finish_time": n + 1,
            "error": "boom",
            "traceback": f"{n:08d}" * 1000,
        }
        for n in range(1, 601)
    ]
    db = Database(stack.env["CONVEYOR_DATABASE_URL"])
    try:
        async with db.engine.begin() as conn:
            await conn.execute(cast(Table, AttemptRow.__table__).insert(), rows)
    finally:
        await db.close()
    rpc = Rpc(JobServiceStub(channel), keys.alice)
    found, pages = await walk(
        rpc, "ListJobAttempts", pb.ListJobAttemptsRequest(id=job.id), "attempts"
    )
    assert [a.attempt for a in found] == list(range(1, 601)) and pages == 2
    shown = json.loads(stack.cli("attempts", job.id, "--json", key=keys.alice).stdout)
    assert [a["attempt"] for a in shown] == list(range(1, 601))  # the CLI walks the pages


async def test_list_jobs_by_create_time(stack: Stack) -> None:
    """Guards ListJobs' create_time bounds: [start, end) compared with each job's
    create_time exactly (a nanosecond past a job's time leaves it out at the start and in
    at the end), combined with the other filters and paged with tokens bound to the
    bounds; an end before the start, or an invalid Timestamp, is INVALID_ARGUMENT, and an
    empty range lists nothing. Fails before the bounds (no such fields)."""
    async with AsyncClient(stack.api_addr, api_key=stack.create_key("timed")) as client:
        made = [await client.submit("noop", queue=PARKED) for _ in range(6)]
        await client.submit("noop", queue="other-timed")
        times = {j.id: j.raw.create_time.ToMilliseconds() for j in made}
        low, high = times[made[1].id], times[made[4].id]
        assert low < high, "three commits apart"

        async def listed(start: Timestamp | None, end: Timestamp | None, size: int) -> list[str]:
            ids: list[str] = []
            token = ""
            while True:
                page = await client.list(
                    queue=PARKED,
                    create_time_start=start,
                    create_time_end=end,
                    page_size=size,
                    page_token=token,
                )
                ids += [j.id for j in page.items]
                token = page.next_page_token
                if not token:
                    return ids

        def within(start: int, end: int) -> list[str]:
            return [j.id for j in reversed(made) if start <= times[j.id] < end]

        assert await listed(at(low), at(high), 1) == within(low, high)
        assert await listed(at(low), at(high), 100) == within(low, high)
        assert await listed(at(low, 1), at(high, 1), 2) == within(low + 1, high + 1)
        assert await listed(at(low), None, 2) == within(low, 1 << 60)
        assert await listed(None, at(high), 100) == within(0, high)
        assert await listed(at(low), at(low), 100) == [], "an empty range"
        everyone = await client.list(create_time_start=at(low), page_size=100)
        assert len(everyone.items) == len(within(low, 1 << 60)) + 1, "the other queue's too"

        first = await client.list(
            queue=PARKED, create_time_start=at(low), create_time_end=at(high), page_size=1
        )
        token = first.next_page_token
        for start, end in [
            (at(low), at(high + 1)),
            (at(low - 1), at(high)),
            (None, at(high)),
            (at(low), None),
            (None, None),
        ]:
            with pytest.raises(InvalidArgument):  # a token is bound to the bounds
                await client.list(
                    queue=PARKED,
                    create_time_start=start,
                    create_time_end=end,
                    page_size=1,
                    page_token=token,
                )
        for start, end in [
            (at(high), at(low)),
            (at(low, 1), at(low)),
            (Timestamp(seconds=1, nanos=2_000_000_000), None),
            (None, Timestamp(seconds=300_000_000_000)),
        ]:
            with pytest.raises(InvalidArgument):
                await client.list(create_time_start=start, create_time_end=end)


def test_the_cli_lists_every_key(stack: Stack) -> None:
    """Guards `conveyor keys list` walking the store's pages: 1,001 keys of an owner are
    all listed, newest first, each once. Before pages it stopped at 1,000."""
    rows = [
        {
            "id": str(uuid.UUID(int=i + 1, version=4)),
            "key_hash": f"crowd-{i:058d}",
            "owner": "crowd",
            "role": "user",
            "description": "",
            "max_running": 0,
            "create_time": 1_000_000 + i // 3,  # three keys a millisecond: ties across pages
        }
        for i in range(1001)
    ]
    engine = create_engine(sync_url(stack.env["CONVEYOR_DATABASE_URL"]))
    try:
        with engine.begin() as conn:
            conn.execute(cast(Table, ApiKeyRow.__table__).insert(), rows)
    finally:
        engine.dispose()
    listed = json.loads(stack.cli("keys", "list", "--owner", "crowd", "--json").stdout)
    newest_first = sorted(rows, key=lambda r: (r["create_time"], r["id"]), reverse=True)
    assert [k["id"] for k in listed] == [r["id"] for r in newest_first]


def test_the_cli_lists_jobs_by_create_time(stack: Stack) -> None:
    """Guards `conveyor list --created-after/--created-before`: ISO 8601 times (as the
    JSON output writes them), the first inclusive and the second exclusive; a time that is
    not ISO 8601 exits 2 saying which option."""
    key = stack.create_key("cli-timed")

    def submit() -> dict[str, Any]:
        out = stack.cli("submit", "noop", "--queue", PARKED, "--json", key=key)
        made: dict[str, Any] = json.loads(out.stdout)
        return made

    made = [submit() for _ in range(3)]
    first, middle, last = (job["create_time"] for job in made)
    assert first < middle < last, "three commits apart"

    def listed(*options: str) -> list[str]:
        out = stack.cli("list", "--queue", PARKED, "--json", *options, key=key)
        return [job["id"] for job in json.loads(out.stdout)["jobs"]]

    ids = [job["id"] for job in made]
    assert listed("--created-after", middle) == [ids[2], ids[1]]
    assert listed("--created-before", middle) == [ids[0]]
    assert listed("--created-after", first, "--created-before", last) == [ids[1], ids[0]]
    refused = stack.cli("list", "--created-after", "yesterday", key=key, check=False)
    assert refused.returncode == 2 and "--created-after" in refused.stderr
    backwards = stack.cli(
        "list", "--created-after", last, "--created-before", first, key=key, check=False
    )
    assert backwards.returncode == 2 and "INVALID_ARGUMENT" in backwards.stderr
