"""API key management and revocation against the real API: admin-only key RPCs, secrets
shown once and never listed, keys that fail their secret check, and revocation that ends
unary calls and open WatchJob streams within about a second."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from conveyor.client import AsyncClient, Job
from conveyor.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    from_rpc_error,
)
from conveyor.server.auth import digest
from conveyor.v1 import api_key_service_pb2 as pb
from conveyor.v1.api_key_service_pb2_grpc import ApiKeyServiceStub
from tests.processes import Keys, Stack

REVOKE_DEADLINE = 1.5  # a second, plus the scheduling slack of a busy 2-core machine


class KeyAdmin:
    """ApiKeyService through its stub, with errors mapped like the client's."""

    def __init__(self, channel: grpc.aio.Channel, key: str) -> None:
        self.stub = ApiKeyServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {key}"),)

    async def call(self, method: str, request: object) -> object:
        try:
            return await getattr(self.stub, method)(request, metadata=self.metadata, timeout=10)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None

    async def create(
        self, owner: str, role: pb.ApiKeyRole = pb.API_KEY_ROLE_USER
    ) -> pb.CreateApiKeyResponse:
        reply = await self.call("CreateApiKey", pb.CreateApiKeyRequest(owner=owner, role=role))
        assert isinstance(reply, pb.CreateApiKeyResponse)
        return reply

    async def revoke(self, key_id: str) -> pb.ApiKey:
        reply = await self.call("RevokeApiKey", pb.RevokeApiKeyRequest(id=key_id))
        assert isinstance(reply, pb.RevokeApiKeyResponse)
        return reply.key


@pytest.fixture
async def channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(stack.api_addr) as channel:
        yield channel


async def test_only_admins_manage_keys_and_secrets_are_shown_once(
    channel: grpc.aio.Channel, keys: Keys
) -> None:
    admin = KeyAdmin(channel, keys.admin)
    made = await admin.create("carol")
    assert made.secret.startswith("cvk_") and made.key.owner == "carol"
    listed = await admin.call("ListApiKeys", pb.ListApiKeysRequest(owner="carol"))
    assert isinstance(listed, pb.ListApiKeysResponse)
    assert [k.id for k in listed.keys] == [made.key.id]
    assert made.secret not in str(listed), "a listing never carries a secret"

    user = KeyAdmin(channel, keys.alice)
    with pytest.raises(PermissionDenied):
        await user.create("mallory", pb.API_KEY_ROLE_ADMIN)
    with pytest.raises(PermissionDenied):
        await user.call("ListApiKeys", pb.ListApiKeysRequest())
    with pytest.raises(PermissionDenied):
        await user.revoke(made.key.id)
    with pytest.raises(InvalidArgument):
        await admin.create("")
    with pytest.raises(InvalidArgument):
        await admin.create("bad owner{}")
    with pytest.raises(InvalidArgument):
        await admin.revoke("not-an-id")
    with pytest.raises(NotFound):
        await admin.revoke("01a20882-0767-7403-bae1-c2539d44da27")


async def test_a_key_with_the_wrong_secret_is_refused(stack: Stack, keys: Keys) -> None:
    async with AsyncClient(stack.api_addr, api_key=keys.alice) as client:
        await client.list(page_size=1)
    forged = keys.alice[:-4] + ("AAAA" if not keys.alice.endswith("AAAA") else "BBBB")
    for bad in [forged, keys.alice + "x", "cvk_" + "0" * 32 + "_" + "A" * 43, "x" * 600]:
        async with AsyncClient(stack.api_addr, api_key=bad) as client:
            with pytest.raises(Unauthenticated):
                await client.list(page_size=1)


async def test_revocation_ends_calls_and_open_streams_within_a_second(
    stack: Stack, channel: grpc.aio.Channel, keys: Keys
) -> None:
    admin = KeyAdmin(channel, keys.admin)
    made = await admin.create("dave")
    async with AsyncClient(stack.api_addr, api_key=made.secret) as dave:
        job = await dave.submit("sleep", {"seconds": 60}, queue="revocation")  # no worker
        updates: list[Job] = []
        opened = asyncio.Event()

        async def watch() -> BaseException | None:
            try:
                async for update in dave.watch(job.id):
                    updates.append(update.job)
                    opened.set()
            except Exception as exc:
                return exc
            return None

        watcher = asyncio.create_task(watch())
        await asyncio.wait_for(opened.wait(), 10)  # the stream is open: its snapshot came
        revoked_at = time.monotonic()
        revoked = await admin.revoke(made.key.id)
        assert revoked.HasField("revoke_time")

        ended = await asyncio.wait_for(watcher, 10)
        stream_ended = time.monotonic() - revoked_at
        assert isinstance(ended, Unauthenticated), ended
        async with asyncio.timeout(10):
            while True:
                try:
                    await dave.get(job.id)
                except Unauthenticated:
                    break
                await asyncio.sleep(0.05)
        calls_refused = time.monotonic() - revoked_at
    print(f"\nrevocation: stream ended after {stream_ended:.2f}s, calls after {calls_refused:.2f}s")
    assert stream_ended <= REVOKE_DEADLINE and calls_refused <= REVOKE_DEADLINE
    again = await admin.revoke(made.key.id)
    assert again.revoke_time == revoked.revoke_time, "revoking twice changes nothing"
    async with AsyncClient(stack.api_addr, api_key=keys.admin) as ops:
        await ops.cancel(job.id)


def test_the_cli_lists_and_revokes_keys(stack: Stack) -> None:
    made = json.loads(
        stack.cli("keys", "create", "--owner", "erin", "--description", "ci", "--json").stdout
    )
    listed = json.loads(stack.cli("keys", "list", "--owner", "erin", "--json").stdout)
    assert [(k["id"], k["description"]) for k in listed] == [(made["id"], "ci")]
    assert made["key"] not in json.dumps(listed)
    limited = json.loads(
        stack.cli("keys", "limits", made["id"], "--submit-rate", "10", "--json").stdout
    )
    assert limited["submit_limit"] == [10.0, 10.0] and limited["read_limit"] is None
    assert "revoked" in stack.cli("keys", "revoke", made["id"]).stdout
    assert json.loads(stack.cli("keys", "list", "--owner", "erin", "--json").stdout) == []
    everything = json.loads(stack.cli("keys", "list", "--owner", "erin", "--all", "--json").stdout)
    assert everything[0]["revoke_time"] is not None
    anonymous = stack.cli("list", key=made["key"], check=False)
    assert anonymous.returncode == 2 and "UNAUTHENTICATED" in anonymous.stderr


def test_no_key_secret_reaches_a_service_log(stack: Stack, keys: Keys) -> None:
    """Every service of the shared stack has logged this whole session by now (all e2e and
    security calls with these keys): none of their secrets, nor their digests, is in a log."""
    logs = {path.name: path.read_text(errors="replace") for path in stack.logs.glob("*.log")}
    assert logs, "the stack keeps service logs"
    for key in (keys.admin, keys.alice, keys.bob):
        secret = key.split("_", 2)[2]  # cvk_<id>_<secret>; a secret may hold "_" itself
        for name, text in logs.items():
            assert secret not in text and digest(secret) not in text, f"{name} leaks a key"
