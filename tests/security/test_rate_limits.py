"""Per-owner rate limits against the real API: a key's submit and read buckets refuse with
RESOURCE_EXHAUSTED and a RetryInfo that is long enough and not much longer, a bulk submit
costs one token per job, limits change at runtime, and other owners are not affected."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from conveyor.client import AsyncClient, submit_request
from conveyor.errors import InvalidArgument, ResourceExhausted, from_rpc_error, from_status
from conveyor.v1 import api_key_service_pb2 as pb
from conveyor.v1 import job_service_pb2 as jobs_pb
from conveyor.v1.api_key_service_pb2_grpc import ApiKeyServiceStub
from conveyor.v1.job_service_pb2_grpc import JobServiceStub
from tests.processes import Keys, Stack

QUEUE = "rate-limited"  # no worker serves it: submitted jobs just wait


@pytest.fixture
async def keys_admin(stack: Stack, keys: Keys) -> AsyncIterator[ApiKeyServiceStub]:
    async with grpc.aio.insecure_channel(stack.api_addr) as channel:
        yield ApiKeyServiceStub(channel)


async def admin_call(stub: ApiKeyServiceStub, keys: Keys, method: str, request: object) -> object:
    try:
        return await getattr(stub, method)(
            request, metadata=(("authorization", f"Bearer {keys.admin}"),), timeout=10
        )
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None


async def limited_key(stub: ApiKeyServiceStub, keys: Keys, owner: str, rate: float) -> str:
    made = await admin_call(stub, keys, "CreateApiKey", pb.CreateApiKeyRequest(owner=owner))
    assert isinstance(made, pb.CreateApiKeyResponse)
    limit = pb.RateLimit(per_second=rate, burst=rate)
    request = pb.UpdateApiKeyLimitsRequest(id=made.key.id, submit_limit=limit, read_limit=limit)
    updated = await admin_call(stub, keys, "UpdateApiKeyLimits", request)
    assert isinstance(updated, pb.UpdateApiKeyLimitsResponse)
    assert updated.key.submit_limit.per_second == rate
    return made.secret


async def test_a_per_item_bulk_admits_what_the_bucket_holds(
    stack: Stack, keys: Keys, keys_admin: ApiKeyServiceStub
) -> None:
    """Each request of a `partial_success` SubmitJobs stands alone against the rate limit,
    as that many lone submits would: a bucket of 3 admits the first 3 of 5 and refuses the
    other 2 each with RESOURCE_EXHAUSTED and a RetryInfo (the whole call was refused
    before, so 5 coalesced SDK submits near a limit all failed where 3 alone would pass);
    an empty bucket refuses the call, and then holds a loop that ignores it."""
    secret = await limited_key(keys_admin, keys, "gina", rate=3)
    bulk = jobs_pb.SubmitJobsRequest(
        requests=[submit_request("noop", queue=QUEUE) for _ in range(5)], partial_success=True
    )
    auth = (("authorization", f"Bearer {secret}"),)
    async with grpc.aio.insecure_channel(stack.api_addr) as channel:
        answer = await JobServiceStub(channel).SubmitJobs(bulk, metadata=auth)
        assert [r.WhichOneof("outcome") for r in answer.results] == ["job"] * 3 + ["error"] * 2
        for result in answer.results[3:]:
            refused = from_status(result.error)
            assert isinstance(refused, ResourceExhausted)
            assert 0 < refused.retry_after_seconds <= 0.5
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await JobServiceStub(channel).SubmitJobs(bulk, metadata=auth)
        assert empty.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_submits_beyond_the_bucket_wait_for_their_retry_info(
    stack: Stack, keys: Keys, keys_admin: ApiKeyServiceStub, alice: AsyncClient
) -> None:
    secret = await limited_key(keys_admin, keys, "frank", rate=5)
    async with AsyncClient(stack.api_addr, api_key=secret) as frank:
        for _ in range(5):
            await frank.submit("noop", queue=QUEUE)
        with pytest.raises(ResourceExhausted) as refused:
            await frank.submit("noop", queue=QUEUE)
        wait = refused.value.retry_after_seconds
        assert 0 < wait <= 0.25, "one token at 5/s is at most 0.2 s away"
        for _ in range(3):
            await alice.submit("noop", queue=QUEUE)  # another owner is not limited by frank's
        await asyncio.sleep(wait)
        await frank.submit("noop", queue=QUEUE)
        with pytest.raises(ResourceExhausted):
            await frank.submit_many([submit_request("noop", queue=QUEUE) for _ in range(3)])
        listed = (await frank.list(queue=QUEUE, page_size=100)).items
    assert len(listed) == 6, "refused submits wrote nothing"
    print(f"\nrate limit: 6 of 8 submits accepted at 5/s; RetryInfo {wait:.3f}s")


async def test_reads_have_their_own_bucket(
    stack: Stack, keys: Keys, keys_admin: ApiKeyServiceStub
) -> None:
    secret = await limited_key(keys_admin, keys, "grace", rate=4)
    async with AsyncClient(stack.api_addr, api_key=secret) as grace:
        job = await grace.submit("noop", queue=QUEUE)
        for _ in range(4):
            await grace.get(job.id)
        with pytest.raises(ResourceExhausted):
            await grace.get(job.id)
        with pytest.raises(ResourceExhausted):
            await grace.list(page_size=1)
        await grace.cancel(job.id)  # control calls are not read-limited


async def test_limits_are_validated(keys: Keys, keys_admin: ApiKeyServiceStub) -> None:
    made = await admin_call(keys_admin, keys, "CreateApiKey", pb.CreateApiKeyRequest(owner="h"))
    assert isinstance(made, pb.CreateApiKeyResponse)
    bad = pb.UpdateApiKeyLimitsRequest(
        id=made.key.id,
        submit_limit=pb.RateLimit(per_second=-1),
        read_limit=pb.RateLimit(per_second=float("nan"), burst=float("inf")),
    )
    with pytest.raises(InvalidArgument) as refused:
        await admin_call(keys_admin, keys, "UpdateApiKeyLimits", bad)
    assert {v.field for v in refused.value.violations} == {
        "submit_limit.per_second",
        "read_limit.per_second",
        "read_limit.burst",
    }


async def test_a_client_that_ignores_retry_info_is_slowed_not_served_faster(
    stack: Stack, keys: Keys, keys_admin: ApiKeyServiceStub, alice: AsyncClient
) -> None:
    """Guards the other owners against a retry loop: calls that come back before their
    RetryInfo time are refused only after about CONVEYOR_RATE_LIMIT_HOLD_SECONDS (0.1 s,
    jittered by half), so 4 loops hammering for 1 s make tens of calls, not thousands;
    a client that waits as told is not held, and another owner is served at once."""
    secret = await limited_key(keys_admin, keys, "ivan", rate=2)
    async with AsyncClient(stack.api_addr, api_key=secret) as ivan:
        await ivan.submit("noop", queue=QUEUE)
        await ivan.submit("noop", queue=QUEUE)
        refusals: list[float] = []
        loop = asyncio.get_running_loop()
        until = loop.time() + 1.0

        async def hammer() -> None:
            while loop.time() < until:
                started = loop.time()
                try:
                    await ivan.submit("noop", queue=QUEUE)
                except ResourceExhausted:
                    refusals.append(loop.time() - started)

        others = asyncio.gather(*(hammer() for _ in range(4)))
        start = loop.time()
        await alice.submit("noop", queue=QUEUE)
        alice_took = loop.time() - start
        await others
        held = [t for t in refusals if t >= 0.04]
        print(
            f"\nignoring RetryInfo: {len(refusals)} refusals in 1 s from 4 loops, "
            f"{len(held)} held ≥ 40 ms; another owner's submit took {alice_took * 1e3:.1f} ms"
        )
        assert len(refusals) < 120, "without the hold, 4 loops make thousands of calls a second"
        assert len(held) >= len(refusals) // 2
        assert alice_took < 0.05
        await asyncio.sleep(0.6)  # the bucket refills (2/s): a patient call is not held
        start = loop.time()
        await ivan.submit("noop", queue=QUEUE)
        assert loop.time() - start < 0.05
