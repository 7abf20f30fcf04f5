"""`update_mask` (AIP-134) on UpdateQueueLimits and UpdateApiKeyLimits against the real API:
a change names the limits it sets and keeps the others, a bad mask is INVALID_ARGUMENT on
`update_mask`, no mask keeps the old replace-everything meaning for old clients, concurrent
changes of different limits all land, and the CLI changes only the options it is given
(none: it shows the limits and changes nothing)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from conveyor.client import AsyncClient
from conveyor.errors import InvalidArgument, from_rpc_error
from conveyor.v1 import api_key_service_pb2 as kpb
from conveyor.v1 import job_service_pb2 as jpb
from conveyor.v1 import queue_pb2
from conveyor.v1.api_key_service_pb2_grpc import ApiKeyServiceStub
from conveyor.v1.job_service_pb2_grpc import JobServiceStub
from tests.e2e.test_grpcurl import grpcurl
from tests.processes import Keys, Stack

QUEUE_PATHS = "max_running, rate_jobs, rate_interval, max_running_per_owner, shards"
KEY_PATHS = "submit_limit, read_limit, max_running_jobs"


class Admin:
    """The two RPCs through their stubs, errors mapped as the client maps them."""

    def __init__(self, channel: grpc.aio.Channel, key: str) -> None:
        self.jobs = JobServiceStub(channel)
        self.keys = ApiKeyServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {key}"),)
        self.owners: dict[str, str] = {}

    async def queue_limits(self, request: jpb.UpdateQueueLimitsRequest) -> queue_pb2.QueueLimits:
        try:
            reply: jpb.UpdateQueueLimitsResponse = await self.jobs.UpdateQueueLimits(
                request, metadata=self.metadata, timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        return reply.queue.limits

    async def key_limits(self, request: kpb.UpdateApiKeyLimitsRequest) -> kpb.ApiKey:
        try:
            reply: kpb.UpdateApiKeyLimitsResponse = await self.keys.UpdateApiKeyLimits(
                request, metadata=self.metadata, timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        return reply.key

    async def new_key(self) -> str:
        request = kpb.CreateApiKeyRequest(owner=f"mask-{uuid.uuid4().hex[:8]}")
        made: kpb.CreateApiKeyResponse = await self.keys.CreateApiKey(
            request, metadata=self.metadata, timeout=10
        )
        self.owners[made.key.id] = made.key.owner
        return made.key.id

    async def key(self, key_id: str) -> kpb.ApiKey:
        """A key as stored now (ListApiKeys of its owner: there is no GetApiKey)."""
        request = kpb.ListApiKeysRequest(owner=self.owners[key_id])
        listed: kpb.ListApiKeysResponse = await self.keys.ListApiKeys(
            request, metadata=self.metadata, timeout=10
        )
        [key] = listed.keys
        return key


@pytest.fixture
async def rpc(stack: Stack, keys: Keys) -> AsyncIterator[Admin]:
    async with grpc.aio.insecure_channel(stack.api_addr) as channel:
        yield Admin(channel, keys.admin)


def new_queue() -> str:
    return f"mask-{uuid.uuid4().hex[:12]}"


def limits_of(limits: queue_pb2.QueueLimits) -> tuple[int, int, int, int]:
    """(max_running, rate_jobs, rate_interval ms, max_running_per_owner)."""
    interval = limits.rate_interval.ToMilliseconds()
    return limits.max_running, limits.rate_jobs, interval, limits.max_running_per_owner


def queue_request(
    queue: str, paths: list[str] | None, *, max_running: int = 0, max_running_per_owner: int = 0
) -> jpb.UpdateQueueLimitsRequest:
    """A raw request, with the mask `paths` (None: no mask, as clients before masks send)."""
    limits = queue_pb2.QueueLimits(
        max_running=max_running, max_running_per_owner=max_running_per_owner
    )
    request = jpb.UpdateQueueLimitsRequest(queue=queue, limits=limits)
    if paths is not None:
        request.update_mask.paths.extend(paths)
    return request


async def test_a_queue_limit_changed_alone_keeps_the_others(admin: AsyncClient) -> None:
    """Guards the mask: setting max_running_per_owner through the SDK (which names only the
    limits given) keeps the queue's cap and rate limit; setting rate_jobs alone keeps the
    window; GetQueueStats (Redis's copy, what claims obey) agrees. On main the second call
    reset the cap and the rate limit to none."""
    queue = new_queue()
    await admin.update_queue_limits(queue, max_running=3, rate_jobs=5, rate_interval=2.0)
    changed = await admin.update_queue_limits(queue, max_running_per_owner=2)
    assert limits_of(changed.limits) == (3, 5, 2000, 2)
    rated = await admin.update_queue_limits(queue, rate_jobs=7)
    assert limits_of(rated.limits) == (3, 7, 2000, 2)
    [stats] = await admin.queue_stats(queue)
    assert limits_of(stats.limits) == (3, 7, 2000, 2)


async def test_a_named_queue_limit_left_zero_is_removed_and_a_rate_needs_a_window(
    admin: AsyncClient,
) -> None:
    """Guards how a client removes one limit (name it, leave it 0), and that the merged
    limits are validated as a whole: a rate named alone on a queue with no window is refused
    (and changes nothing)."""
    queue = new_queue()
    await admin.update_queue_limits(queue, max_running=3, max_running_per_owner=2)
    removed = await admin.update_queue_limits(queue, max_running=0)
    assert limits_of(removed.limits) == (0, 0, 0, 2)
    with pytest.raises(InvalidArgument) as refused:
        await admin.update_queue_limits(queue, rate_jobs=5)
    assert [v.field for v in refused.value.violations] == ["limits.rate_interval"]
    [stats] = await admin.queue_stats(queue)
    assert limits_of(stats.limits) == (0, 0, 0, 2)


@pytest.mark.parametrize(
    ("paths", "says"),
    [
        (["max_running", "burst"], "unknown path 'burst'"),
        (["max_running", "max_running"], "path 'max_running' is named twice"),
        (["*", "rate_jobs"], "* must be the only path"),
        ([], "names no field"),
    ],
)
async def test_a_bad_queue_mask_is_refused_on_update_mask(
    rpc: Admin, admin: AsyncClient, paths: list[str], says: str
) -> None:
    """Guards mask validation: an unknown or repeated path, `*` beside others, or a present
    but empty mask is INVALID_ARGUMENT with one violation on `update_mask` that names the
    path and lists the allowed ones, and the queue's limits stay as they were."""
    queue = new_queue()
    await admin.update_queue_limits(queue, max_running=4)
    request = queue_request(queue, paths, max_running=9)
    request.update_mask.SetInParent()
    with pytest.raises(InvalidArgument) as refused:
        await rpc.queue_limits(request)
    [violation] = refused.value.violations
    assert violation.field == "update_mask"
    assert says in violation.description and QUEUE_PATHS in violation.description
    [stats] = await admin.queue_stats(queue)
    assert limits_of(stats.limits) == (4, 0, 0, 0)


async def test_a_queue_request_with_no_mask_replaces_every_limit(
    rpc: Admin, admin: AsyncClient
) -> None:
    """Guards compatibility with clients written before masks (documented in the proto): no
    mask replaces every limit, fields left 0 removing theirs; `*` does the same. Such a
    client knows nothing of shards: its `shards` left 0 keeps the queue's count."""
    queue = new_queue()
    await admin.update_queue_limits(queue, max_running=3, rate_jobs=5, rate_interval=2.0, shards=2)
    replaced = await rpc.queue_limits(queue_request(queue, None, max_running_per_owner=2))
    assert limits_of(replaced) == (0, 0, 0, 2) and replaced.shards == 2
    every = await rpc.queue_limits(queue_request(queue, ["*"], max_running=6))
    assert limits_of(every) == (6, 0, 0, 0) and every.shards == 2


async def test_concurrent_changes_of_different_queue_limits_all_land(
    rpc: Admin, admin: AsyncClient
) -> None:
    """Guards the atomic merge: three admins changing a different limit each, at once, over
    rounds, never lose one another's change, in the database (the answers) or in Redis
    (GetQueueStats, which claims obey). A read-then-write merge loses some of them."""
    queue = new_queue()
    for value in range(1, 13):
        await asyncio.gather(
            rpc.queue_limits(queue_request(queue, ["max_running"], max_running=value)),
            rpc.queue_limits(
                queue_request(queue, ["max_running_per_owner"], max_running_per_owner=value)
            ),
            admin.pause_queue(queue) if value % 2 else admin.resume_queue(queue),
        )
        [stats] = await admin.queue_stats(queue)
        assert (stats.limits.max_running, stats.limits.max_running_per_owner) == (value, value)
        assert stats.paused == bool(value % 2)


async def test_a_key_limit_changed_alone_keeps_the_others(rpc: Admin) -> None:
    """Guards the mask on keys: changing max_running_jobs keeps the key's rate limits, and
    a named rate limit left unset goes back to the server's default. On main the second
    call removed both rate limits."""
    key_id = await rpc.new_key()
    limit = kpb.RateLimit(per_second=5, burst=10)
    await rpc.key_limits(
        kpb.UpdateApiKeyLimitsRequest(id=key_id, submit_limit=limit, read_limit=limit)
    )
    changed = await rpc.key_limits(
        kpb.UpdateApiKeyLimitsRequest(
            id=key_id, max_running_jobs=2, update_mask={"paths": ["max_running_jobs"]}
        )
    )
    assert (changed.submit_limit, changed.read_limit, changed.max_running_jobs) == (limit, limit, 2)
    reset = await rpc.key_limits(
        kpb.UpdateApiKeyLimitsRequest(id=key_id, update_mask={"paths": ["read_limit"]})
    )
    assert reset.submit_limit == limit and not reset.HasField("read_limit")
    assert reset.max_running_jobs == 2


async def test_a_bad_key_mask_is_refused_and_no_mask_replaces_every_limit(rpc: Admin) -> None:
    """Guards the key mask's validation (an unknown path is INVALID_ARGUMENT on
    `update_mask`, listing the paths, and changes nothing) and its compatibility (no mask
    replaces every limit, as before masks)."""
    key_id = await rpc.new_key()
    limit = kpb.RateLimit(per_second=5, burst=10)
    await rpc.key_limits(
        kpb.UpdateApiKeyLimitsRequest(id=key_id, submit_limit=limit, max_running_jobs=3)
    )
    with pytest.raises(InvalidArgument) as refused:
        await rpc.key_limits(
            kpb.UpdateApiKeyLimitsRequest(
                id=key_id, max_running_jobs=1, update_mask={"paths": ["max_running"]}
            )
        )
    [violation] = refused.value.violations
    assert violation.field == "update_mask"
    assert "unknown path 'max_running'" in violation.description
    assert KEY_PATHS in violation.description
    replaced = await rpc.key_limits(kpb.UpdateApiKeyLimitsRequest(id=key_id, read_limit=limit))
    assert not replaced.HasField("submit_limit") and replaced.read_limit == limit
    assert replaced.max_running_jobs == 0


async def test_concurrent_changes_of_different_key_limits_all_land(rpc: Admin) -> None:
    """Guards the key merge: changes of the submit limit, the read limit and the cap, made
    at once over rounds, all land."""
    key_id = await rpc.new_key()
    for value in range(1, 11):
        limit = kpb.RateLimit(per_second=value, burst=value)
        await asyncio.gather(
            *(
                rpc.key_limits(
                    kpb.UpdateApiKeyLimitsRequest(
                        id=key_id,
                        submit_limit=limit,
                        read_limit=limit,
                        max_running_jobs=value,
                        update_mask={"paths": [path]},
                    )
                )
                for path in ("submit_limit", "read_limit", "max_running_jobs")
            )
        )
        key = await rpc.key(key_id)
        assert (key.submit_limit, key.read_limit, key.max_running_jobs) == (limit, limit, value)


def test_the_queue_limits_command_changes_only_the_options_given(stack: Stack, keys: Keys) -> None:
    """Guards the CLI: `queues limits Q` with no option shows the limits and changes
    nothing (on main it removed them all); with one option it changes that limit only."""
    queue = new_queue()

    def limits(*options: str) -> dict[str, object]:
        out = stack.cli("queues", "limits", queue, *options, "--json", key=keys.admin)
        found: dict[str, object] = json.loads(out.stdout)["queues"][0]["limits"]
        return found

    set_all = ("--max-running", "3", "--max-per-owner", "2", "--rate", "5", "--per", "2")
    expected = {"max_running": 3, "max_running_per_owner": 2, "rate_jobs": 5, "rate_interval": "2s",
                "shards": 1}  # fmt: skip
    assert limits(*set_all) == expected
    assert limits() == expected
    shown = stack.cli("queues", "limits", queue, key=keys.admin)
    assert shown.stdout.strip() == f"{queue}: max_running=3 max_per_owner=2 rate=5 per 2s"
    assert "--max-running N" in shown.stderr
    assert limits() == expected
    assert limits("--max-running", "4") == {**expected, "max_running": 4}
    assert limits("--rate", "0") == {"max_running": 4, "max_running_per_owner": 2, "shards": 1}


def test_the_key_limits_command_changes_only_the_options_given(stack: Stack) -> None:
    """Guards `keys limits ID`: with no option it shows the limits and changes nothing (on
    main it reset them all); one option changes that limit only; `default` removes a rate."""
    made = json.loads(stack.cli("keys", "create", "--owner", "mask-cli", "--json").stdout)

    def limits(*options: str) -> dict[str, object]:
        out = stack.cli("keys", "limits", made["id"], *options, "--json")
        found: dict[str, object] = json.loads(out.stdout)
        return {k: found[k] for k in ("submit_limit", "read_limit", "max_running")}

    both = ("--submit-rate", "10", "--read-rate", "20", "--read-burst", "40")
    assert limits(*both) == {"submit_limit": [10, 10], "read_limit": [20, 40], "max_running": 0}
    assert limits() == {"submit_limit": [10, 10], "read_limit": [20, 40], "max_running": 0}
    shown = stack.cli("keys", "limits", made["id"])
    assert shown.stdout.strip() == (
        f"{made['id']}: submit_limit=10/s burst 10 read_limit=20/s burst 40 max_running=none"
    )
    assert "--submit-rate R" in shown.stderr
    assert limits("--max-running", "2") == {
        "submit_limit": [10, 10], "read_limit": [20, 40], "max_running": 2
    }  # fmt: skip
    assert limits("--submit-rate", "default") == {
        "submit_limit": None, "read_limit": [20, 40], "max_running": 2
    }  # fmt: skip
    lonely = stack.cli("keys", "limits", made["id"], "--read-burst", "5", check=False)
    assert lonely.returncode == 2 and "--read-burst needs --read-rate" in lonely.stderr


def test_grpcurl_sends_the_mask_as_the_proto_comments_say(stack: Stack, keys: Keys) -> None:
    """Guards the grpcurl example of the proto comments: the mask as an object of snake_case
    `paths` (grpcurl 1.8 refuses proto3's canonical string form, "maxRunningPerOwner")."""
    queue = new_queue()
    method = "conveyor.v1.JobService/UpdateQueueLimits"
    first = {"queue": queue, "limits": {"max_running": 3, "rate_jobs": 5, "rate_interval": "2s"}}
    then = {"queue": queue, "limits": {"max_running_per_owner": 2},
            "update_mask": {"paths": ["max_running_per_owner"]}}  # fmt: skip
    for body in (first, then):
        out = grpcurl(stack, "-d", json.dumps(body), stack.api_addr, method, key=keys.admin)
        assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["queue"]["limits"] == {
        "max_running": 3, "rate_jobs": 5, "rate_interval": "2s", "max_running_per_owner": 2,
        "shards": 1,
    }  # fmt: skip
