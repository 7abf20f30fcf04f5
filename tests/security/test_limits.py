"""Server limits with their own errors: WatchJob streams per owner, calls per server, and
the largest message, each RESOURCE_EXHAUSTED (or INVALID_ARGUMENT for a payload) while the
server stays up and other owners are served."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from conveyor.client import AsyncClient
from conveyor.embedded import free_port
from conveyor.errors import ConveyorError, InvalidArgument, ResourceExhausted
from conveyor.v1 import job_service_pb2 as pb
from conveyor.v1.job_service_pb2_grpc import JobServiceStub
from tests.processes import Keys, Service, Stack

QUEUE = "limits"  # no worker serves it


@pytest.fixture
def capped_api(stack: Stack) -> Iterator[Service]:
    service = stack.start(
        "api",
        env={
            "CONVEYOR_API_ADDR": f"127.0.0.1:{free_port()}",
            "CONVEYOR_MAX_STREAMS_PER_OWNER": "2",
            "CONVEYOR_MAX_CONCURRENT_RPCS": "6",
            "CONVEYOR_MAX_PAYLOAD_BYTES": "2048",
            "CONVEYOR_MAX_MESSAGE_BYTES": "65536",
        },
    )
    yield service
    assert service.stop() == 0


async def open_stream(client: AsyncClient, job_id: str) -> tuple[asyncio.Task[None], asyncio.Event]:
    """A WatchJob stream held open (its job never changes); set once the snapshot came."""
    opened = asyncio.Event()

    async def hold() -> None:
        async for _ in client.watch(job_id):
            opened.set()

    return asyncio.create_task(hold()), opened


@pytest.fixture
async def clients(
    capped_api: Service, keys: Keys
) -> AsyncIterator[tuple[AsyncClient, AsyncClient]]:
    async with (
        AsyncClient(capped_api.addr, api_key=keys.alice) as alice,
        AsyncClient(capped_api.addr, api_key=keys.bob) as bob,
    ):
        yield alice, bob


async def test_streams_per_owner_are_capped(clients: tuple[AsyncClient, AsyncClient]) -> None:
    alice, bob = clients
    job = await alice.submit("noop", queue=QUEUE)
    held = [await open_stream(alice, job.id) for _ in range(2)]
    await asyncio.wait_for(asyncio.gather(*(opened.wait() for _, opened in held)), 10)
    with pytest.raises(ResourceExhausted, match="open streams"):
        async for _ in alice.watch(job.id):
            pass
    theirs = await bob.submit("noop", queue=QUEUE)
    task, opened = await open_stream(bob, theirs.id)
    await asyncio.wait_for(opened.wait(), 10)  # another owner is not capped by alice's
    held[0][0].cancel()
    await asyncio.gather(held[0][0], return_exceptions=True)
    async with asyncio.timeout(10):
        while True:  # the server notices the closed stream on its next turn
            again, reopened = await open_stream(alice, job.id)
            await asyncio.wait(
                [again, asyncio.ensure_future(reopened.wait())], timeout=2,
                return_when=asyncio.FIRST_COMPLETED,
            )  # fmt: skip
            if reopened.is_set():
                break
            await asyncio.gather(again, return_exceptions=True)
    for t in (held[1][0], task, again):
        t.cancel()
    await asyncio.gather(held[1][0], task, again, return_exceptions=True)
    for j in (job, theirs):
        await (alice if j is job else bob).cancel(j.id)


async def test_calls_beyond_the_server_cap_are_refused(
    clients: tuple[AsyncClient, AsyncClient], keys: Keys, capped_api: Service
) -> None:
    alice, bob = clients
    jobs = [await alice.submit("noop", queue=QUEUE), await bob.submit("noop", queue=QUEUE)]
    held = [await open_stream(c, j.id) for c, j in ((alice, jobs[0]), (alice, jobs[0]),
                                                    (bob, jobs[1]), (bob, jobs[1]))]  # fmt: skip
    await asyncio.wait_for(asyncio.gather(*(o.wait() for _, o in held)), 10)
    async with AsyncClient(capped_api.addr, api_key=keys.admin) as admin:
        extra = [await open_stream(admin, jobs[0].id) for _ in range(2)]  # 6 calls running
        await asyncio.wait_for(asyncio.gather(*(o.wait() for _, o in extra)), 10)
        with pytest.raises(ResourceExhausted):
            await admin.get(jobs[0].id)
        for task, _ in held + extra:
            task.cancel()
        await asyncio.gather(*(t for t, _ in held + extra), return_exceptions=True)
    assert capped_api.proc.poll() is None


async def test_oversized_payloads_and_messages_have_their_own_errors(
    clients: tuple[AsyncClient, AsyncClient],
) -> None:
    alice, _ = clients
    with pytest.raises(InvalidArgument, match="payload"):
        await alice.submit("noop", {"blob": "x" * 4096}, queue=QUEUE)
    with pytest.raises(ConveyorError) as too_big:
        await alice.submit("noop", {"blob": "x" * 100_000}, queue=QUEUE)
    assert isinstance(too_big.value, ResourceExhausted), too_big.value
    assert (await alice.submit("noop", {"blob": "x" * 100}, queue=QUEUE)).id


async def test_deadlines_are_honoured_and_leave_the_server_well(
    clients: tuple[AsyncClient, AsyncClient], capped_api: Service, keys: Keys
) -> None:
    """A call still running when its deadline passes (here a stream held open) ends
    DEADLINE_EXCEEDED for the client; the server drops it and goes on serving."""
    alice, _ = clients
    job = await alice.submit("noop", queue=QUEUE)
    async with grpc.aio.insecure_channel(capped_api.addr) as channel:
        call = JobServiceStub(channel).WatchJob(  # a stream held open past its deadline
            pb.WatchJobRequest(id=job.id),
            metadata=(("authorization", f"Bearer {keys.alice}"),),
            timeout=0.5,
        )
        with pytest.raises(grpc.aio.AioRpcError) as expired:
            async for _ in call:
                pass
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (await alice.get(job.id)).id == job.id and capped_api.proc.poll() is None
    await alice.cancel(job.id)
