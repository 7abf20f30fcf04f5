"""Every RPC against every way of asking without the right to: the authorization matrix.

The RPCs come from the services' descriptors (JobService and ApiKeyService on the api,
WorkerControl on a worker's own port), so an RPC added later without a row here fails the
test instead of going unchecked. Each one is called with a well-formed request and:

- no key, a bad key (malformed, unknown id, forged secret, wrong scheme, over-long):
  UNAUTHENTICATED;
- a revoked key (a user's and an admin's, revoked through ApiKeyService): UNAUTHENTICATED;
- another owner's job id (a queued and a cancelled job of bob's, called with alice's key):
  NOT_FOUND, never PERMISSION_DENIED, with the same message as an id that does not exist,
  and bob's jobs unchanged afterwards; ListJobs naming bob as `owner` (an admin-only
  filter): PERMISSION_DENIED, as its proto says;
- a user key on an admin RPC (ApiKeyService, WorkerControl): PERMISSION_DENIED, and nothing
  changed (no key made or revoked, the worker neither paused nor drained).

RPCs without a job id are checked for isolation instead where that means something: alice
submitting with bob's idempotency key gets a job of her own, and her listing shows only her
jobs. Each RPC is finally called with the right key, to show the requests themselves are
good (that is how the dedicated worker is drained at the end). Run with `-s` for the counts.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message

from conveyor.v1 import api_key_service_pb2 as keys_pb
from conveyor.v1 import job_pb2
from conveyor.v1 import job_service_pb2 as jobs_pb
from conveyor.v1 import queue_pb2 as queue_pb
from conveyor.v1 import schedule_service_pb2 as schedule_pb
from conveyor.v1 import worker_control_pb2 as control_pb
from tests.processes import Keys, Service, Stack

QUEUE = "authmatrix"  # no worker serves it: jobs stay where the test put them
CONTROL_QUEUE = "authmatrix-control"
IDEMPOTENCY_KEY = "authmatrix-shared-key"
CALL_TIMEOUT = 10.0
REVOKE_WAIT = 3.0  # revocation takes effect within a second; generous on a busy machine
INTRUDER = "authmatrix-mallory"  # the admin key a refused CreateApiKey asks for
MISSING_JOB = "01a20882-0767-7403-bae1-c2539d44da26"

Code = grpc.StatusCode
SERVICES: list[descriptor.ServiceDescriptor] = [
    jobs_pb.DESCRIPTOR.services_by_name["JobService"],
    keys_pb.DESCRIPTOR.services_by_name["ApiKeyService"],
    control_pb.DESCRIPTOR.services_by_name["WorkerControl"],
    schedule_pb.DESCRIPTOR.services_by_name["ScheduleService"],
]
ADMIN_SERVICES = {"conveyor.v1.ApiKeyService", "conveyor.v1.WorkerControl"}
# JobService RPCs about queues and workers rather than the caller's jobs.
ADMIN_RPCS = {"GetQueueStats", "PauseQueue", "ResumeQueue", "UpdateQueueLimits", "ListWorkers"}
# A queue of its own, so that a pause that wrongly succeeded holds no other test's jobs.
ADMIN_QUEUE = "authmatrix-admin"
# JobService RPCs that name a job: another owner's id must be NOT_FOUND.
JOB_ID_RPCS = {"GetJob", "WatchJob", "CancelJob", "RetryJob", "ListJobAttempts", "GetJobResult"}
# RPCs that name a bulk operation: another owner's id must be NOT_FOUND too.
BULK_ID_RPCS = {"GetBulkOperation", "CancelBulkOperation"}
# RPCs that name a batch (SubmitJobsRequest.on_complete): another owner's id is NOT_FOUND.
BATCH_ID_RPCS = {"GetBatch"}
# What the bulk actions' requests match: nothing (they are dry runs, or act on no job).
NOTHING = 'labels.authmatrix = "none"'
# ScheduleService RPCs that name a schedule: another owner's id must be NOT_FOUND too.
SCHEDULE_ID_RPCS = {
    "GetSchedule",
    "DeleteSchedule",
    "PauseSchedule",
    "ResumeSchedule",
    "TriggerSchedule",
}


@dataclass(frozen=True)
class Rpc:
    """One RPC of one service, callable over a generic channel."""

    method: descriptor.MethodDescriptor

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def service(self) -> str:
        return self.method.containing_service.full_name

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"

    @property
    def streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def admin_only(self) -> bool:
        return self.service in ADMIN_SERVICES or self.name in ADMIN_RPCS

    @property
    def label(self) -> str:
        return f"{self.service.rsplit('.', 1)[-1]}.{self.name}"

    def response_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.output_type)

    def request_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.input_type)


ALL_RPCS = [Rpc(m) for service in SERVICES for m in service.methods]


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str
    reply: Message | None = None


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def invoke(
    channel: grpc.aio.Channel,
    rpc: Rpc,
    request: Message,
    metadata: tuple[tuple[str, str], ...] | None,
) -> Outcome:
    """Call `rpc`; a stream counts as answered once its first message (or its end) arrives,
    then it is cancelled."""
    deserialize = rpc.response_class().FromString
    try:
        if rpc.streaming:
            stream = channel.unary_stream(rpc.path, type(request).SerializeToString, deserialize)
            call = stream(request, metadata=metadata, timeout=CALL_TIMEOUT)
            try:
                async for first in call:
                    return Outcome(Code.OK, "", first)
            finally:
                call.cancel()
            return Outcome(Code.OK, "")
        unary = channel.unary_unary(rpc.path, type(request).SerializeToString, deserialize)
        reply = await unary(request, metadata=metadata, timeout=CALL_TIMEOUT)
        return Outcome(Code.OK, "", reply)
    except grpc.aio.AioRpcError as exc:
        return Outcome(exc.code(), exc.details() or "")


@dataclass
class World:
    """The jobs and keys the requests name, made for this test."""

    alice_job: str  # QUEUED, alice's
    alice_cancelled: str  # CANCELLED, alice's (RetryJob's baseline replays it)
    bob_queued: str
    bob_cancelled: str
    spare_key_id: str  # a key the admin RPCs' requests name; must survive the refusals
    revoked_user: str
    revoked_admin: str
    alice_schedule: str
    bob_schedule: str
    alice_operation: str  # a bulk operation of alice's (it matched no job, so it ended)
    bob_operation: str
    alice_batch: str  # a batch of alice's (one noop job and its callback)
    bob_batch: str


def hourly() -> schedule_pb.Schedule:
    """A schedule whose first bucket is an hour away: nothing fires during the test."""
    schedule = schedule_pb.Schedule(job=jobs_pb.SubmitJobRequest(type="noop", queue=QUEUE))
    schedule.interval.seconds = 3600
    return schedule


def job_requests(world: World) -> dict[str, Callable[[str], Message]]:
    """A well-formed request per RPC; job-id RPCs take the id to name."""

    def submit() -> jobs_pb.SubmitJobRequest:
        return jobs_pb.SubmitJobRequest(type="noop", queue=QUEUE, idempotency_key=IDEMPOTENCY_KEY)

    return {
        "conveyor.v1.JobService.SubmitJob": lambda _: submit(),
        "conveyor.v1.JobService.SubmitJobs": lambda _: jobs_pb.SubmitJobsRequest(
            requests=[submit(), jobs_pb.SubmitJobRequest(type="noop", queue=QUEUE)]
        ),
        "conveyor.v1.JobService.GetJob": lambda job: jobs_pb.GetJobRequest(id=job),
        "conveyor.v1.JobService.ListJobs": lambda _: jobs_pb.ListJobsRequest(
            queue=QUEUE, page_size=1000
        ),
        "conveyor.v1.JobService.WatchJob": lambda job: jobs_pb.WatchJobRequest(id=job),
        "conveyor.v1.JobService.CancelJob": lambda job: jobs_pb.CancelJobRequest(id=job),
        "conveyor.v1.JobService.RetryJob": lambda job: jobs_pb.RetryJobRequest(
            id=job, max_attempts=2
        ),
        "conveyor.v1.JobService.ListJobAttempts": lambda job: jobs_pb.ListJobAttemptsRequest(
            id=job
        ),
        "conveyor.v1.JobService.GetJobResult": lambda job: jobs_pb.GetJobResultRequest(id=job),
        "conveyor.v1.JobService.RetryJobs": lambda _: jobs_pb.RetryJobsRequest(filter=NOTHING),
        "conveyor.v1.JobService.CancelJobs": lambda _: jobs_pb.CancelJobsRequest(filter=NOTHING),
        "conveyor.v1.JobService.DeleteJobs": lambda _: jobs_pb.DeleteJobsRequest(filter=NOTHING),
        "conveyor.v1.JobService.GetBatch": lambda batch: jobs_pb.GetBatchRequest(id=batch),
        "conveyor.v1.JobService.GetBulkOperation": lambda op: jobs_pb.GetBulkOperationRequest(
            id=op
        ),
        "conveyor.v1.JobService.CancelBulkOperation": lambda op: jobs_pb.CancelBulkOperationRequest(
            id=op
        ),
        "conveyor.v1.ScheduleService.CreateSchedule": lambda _: schedule_pb.CreateScheduleRequest(
            schedule=hourly()
        ),
        "conveyor.v1.ScheduleService.GetSchedule": lambda sid: schedule_pb.GetScheduleRequest(
            id=sid
        ),
        "conveyor.v1.ScheduleService.ListSchedules": lambda _: schedule_pb.ListSchedulesRequest(),
        "conveyor.v1.ScheduleService.DeleteSchedule": lambda sid: schedule_pb.DeleteScheduleRequest(
            id=sid
        ),
        "conveyor.v1.ScheduleService.PauseSchedule": lambda sid: schedule_pb.PauseScheduleRequest(
            id=sid
        ),
        "conveyor.v1.ScheduleService.ResumeSchedule": lambda sid: schedule_pb.ResumeScheduleRequest(
            id=sid
        ),
        "conveyor.v1.ScheduleService.TriggerSchedule": lambda sid: (
            schedule_pb.TriggerScheduleRequest(id=sid)
        ),
        "conveyor.v1.JobService.GetQueueStats": lambda _: jobs_pb.GetQueueStatsRequest(
            queue=ADMIN_QUEUE
        ),
        "conveyor.v1.JobService.PauseQueue": lambda _: jobs_pb.PauseQueueRequest(queue=ADMIN_QUEUE),
        "conveyor.v1.JobService.ResumeQueue": lambda _: jobs_pb.ResumeQueueRequest(
            queue=ADMIN_QUEUE
        ),
        "conveyor.v1.JobService.UpdateQueueLimits": lambda _: jobs_pb.UpdateQueueLimitsRequest(
            queue=ADMIN_QUEUE, limits=queue_pb.QueueLimits(max_running=1)
        ),
        "conveyor.v1.JobService.ListWorkers": lambda _: jobs_pb.ListWorkersRequest(),
        "conveyor.v1.ApiKeyService.CreateApiKey": lambda _: keys_pb.CreateApiKeyRequest(
            owner=INTRUDER, role=keys_pb.API_KEY_ROLE_ADMIN, description="authmatrix"
        ),
        "conveyor.v1.ApiKeyService.ListApiKeys": lambda _: keys_pb.ListApiKeysRequest(
            include_revoked=True
        ),
        "conveyor.v1.ApiKeyService.RevokeApiKey": lambda _: keys_pb.RevokeApiKeyRequest(
            id=world.spare_key_id
        ),
        "conveyor.v1.ApiKeyService.UpdateApiKeyLimits": lambda _: keys_pb.UpdateApiKeyLimitsRequest(
            id=world.spare_key_id, submit_limit=keys_pb.RateLimit(per_second=1, burst=1)
        ),
        "conveyor.v1.WorkerControl.GetWorkerStatus": lambda _: control_pb.GetWorkerStatusRequest(),
        "conveyor.v1.WorkerControl.WatchWorkerStatus": lambda _: (
            control_pb.WatchWorkerStatusRequest()
        ),
        "conveyor.v1.WorkerControl.PauseWorker": lambda _: control_pb.PauseWorkerRequest(),
        "conveyor.v1.WorkerControl.ResumeWorker": lambda _: control_pb.ResumeWorkerRequest(),
        "conveyor.v1.WorkerControl.DrainWorker": lambda _: control_pb.DrainWorkerRequest(),
    }


def bad_keys(good: str) -> dict[str, str]:
    """Keys that must not authenticate, derived from a real one where that is sharper."""
    prefix, _, secret = good.rpartition("_")
    flipped = ("B" if secret[0] != "B" else "C") + secret[1:]
    return {
        "malformed": "not-a-key",
        "unknown id": "cvk_" + "0" * 32 + "_" + "A" * 43,
        "forged secret": f"{prefix}_{flipped}",
        "over-long": good + "x",
        "1000 chars": "cvk_" + "x" * 996,
    }


@dataclass
class Tally:
    """Counts per case and every wrong answer, with what was expected."""

    checked: Counter[str] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    rpcs_per_case: dict[str, set[str]] = field(default_factory=dict)

    def expect(self, case: str, rpc: Rpc, got: Outcome, *codes: grpc.StatusCode) -> bool:
        self.checked[case] += 1
        self.rpcs_per_case.setdefault(case, set()).add(rpc.label)
        if got.code in codes:
            return True
        wanted = " or ".join(c.name for c in codes)
        self.wrong.append(
            f"{case}: {rpc.label} answered {got.code.name} ({got.details!r}), expected {wanted}"
        )
        return False


@pytest.fixture
def control_worker(stack: Stack) -> Iterator[Service]:
    """A worker of its own, so a refusal that wrongly succeeded (a drain) harms no one else."""
    service = stack.start(
        "worker", "--queues", CONTROL_QUEUE, "--concurrency", "1", env=stack.worker_env()
    )
    yield service
    if service.proc.poll() is None:
        service.kill()


@pytest.fixture
async def channels(
    stack: Stack, control_worker: Service
) -> AsyncIterator[tuple[grpc.aio.Channel, grpc.aio.Channel]]:
    async with (
        grpc.aio.insecure_channel(stack.api_addr) as api,
        grpc.aio.insecure_channel(control_worker.addr) as worker,
    ):
        yield api, worker


async def start_bulk(api: grpc.aio.Channel, key: str) -> str:
    """A bulk operation of the key's owner that touches no job; its id."""
    request = jobs_pb.CancelJobsRequest(filter=NOTHING, force=True)
    got = await invoke(api, rpc_named("CancelJobs"), request, bearer(key))
    assert isinstance(got.reply, jobs_pb.CancelJobsResponse), got
    return got.reply.operation.id


async def start_batch(api: grpc.aio.Channel, key: str) -> str:
    """A batch of the key's owner (one noop job and a noop callback); its id."""
    request = jobs_pb.SubmitJobsRequest(
        requests=[jobs_pb.SubmitJobRequest(type="noop", queue=QUEUE)],
        on_complete=jobs_pb.SubmitJobRequest(type="noop", queue=QUEUE),
    )
    got = await invoke(api, rpc_named("SubmitJobs"), request, bearer(key))
    assert isinstance(got.reply, jobs_pb.SubmitJobsResponse), got
    return got.reply.batch.id


async def create_schedule(api: grpc.aio.Channel, key: str) -> str:
    got = await invoke(
        api,
        rpc_named("CreateSchedule"),
        schedule_pb.CreateScheduleRequest(schedule=hourly()),
        bearer(key),
    )
    assert isinstance(got.reply, schedule_pb.CreateScheduleResponse), got
    return got.reply.schedule.id


def rpc_named(name: str) -> Rpc:
    return next(r for r in ALL_RPCS if r.name == name)


async def submit_job(api: grpc.aio.Channel, key: str, **fields: Any) -> job_pb2.Job:
    got = await invoke(
        api, rpc_named("SubmitJob"), jobs_pb.SubmitJobRequest(queue=QUEUE, **fields), bearer(key)
    )
    assert got.code == Code.OK and isinstance(got.reply, jobs_pb.SubmitJobResponse), got
    job: job_pb2.Job = got.reply.job
    return job


async def cancel_job(api: grpc.aio.Channel, key: str, job_id: str) -> None:
    got = await invoke(
        api, rpc_named("CancelJob"), jobs_pb.CancelJobRequest(id=job_id), bearer(key)
    )
    assert got.code == Code.OK, got


async def get_job(api: grpc.aio.Channel, key: str, job_id: str) -> job_pb2.Job:
    got = await invoke(api, rpc_named("GetJob"), jobs_pb.GetJobRequest(id=job_id), bearer(key))
    assert got.code == Code.OK and isinstance(got.reply, jobs_pb.GetJobResponse), got
    job: job_pb2.Job = got.reply.job
    return job


async def create_key(
    api: grpc.aio.Channel, admin: str, owner: str, role: keys_pb.ApiKeyRole
) -> keys_pb.CreateApiKeyResponse:
    got = await invoke(
        api,
        rpc_named("CreateApiKey"),
        keys_pb.CreateApiKeyRequest(owner=owner, role=role, description="authmatrix"),
        bearer(admin),
    )
    assert got.code == Code.OK and isinstance(got.reply, keys_pb.CreateApiKeyResponse), got
    return got.reply


async def revoked_keys(api: grpc.aio.Channel, admin: str) -> tuple[str, str]:
    """A user key and an admin key, each shown to work, then revoked and refused."""
    made = [
        await create_key(api, admin, "authmatrix-revoked", keys_pb.API_KEY_ROLE_USER),
        await create_key(api, admin, "authmatrix-revoked-admin", keys_pb.API_KEY_ROLE_ADMIN),
    ]
    probe = rpc_named("ListJobs")
    for key in made:
        works = await invoke(api, probe, jobs_pb.ListJobsRequest(page_size=1), bearer(key.secret))
        assert works.code == Code.OK, works
        revoke = keys_pb.RevokeApiKeyRequest(id=key.key.id)
        got = await invoke(api, rpc_named("RevokeApiKey"), revoke, bearer(admin))
        assert got.code == Code.OK, got
    deadline = time.monotonic() + REVOKE_WAIT
    for key in made:
        while True:
            refused = await invoke(
                api, probe, jobs_pb.ListJobsRequest(page_size=1), bearer(key.secret)
            )
            if refused.code == Code.UNAUTHENTICATED:
                break
            assert time.monotonic() < deadline, f"revoked key still answered {refused}"
            await asyncio.sleep(0.1)
    return made[0].secret, made[1].secret


async def worker_state(worker: grpc.aio.Channel, admin: str) -> int:
    got = await invoke(
        worker, rpc_named("GetWorkerStatus"), control_pb.GetWorkerStatusRequest(), bearer(admin)
    )
    assert got.code == Code.OK and isinstance(got.reply, control_pb.GetWorkerStatusResponse), got
    return int(got.reply.status.state)


async def test_every_rpc_refuses_callers_without_the_right(
    channels: tuple[grpc.aio.Channel, grpc.aio.Channel],
    control_worker: Service,
    keys: Keys,
) -> None:
    """Guards DESIGN.md §6 and issue 5's matrix: every RPC x {no key, bad key, revoked key,
    other owner, user on admin RPC} is refused with the right code, and nothing a refused
    call asked for happened."""
    api, worker = channels
    started = time.monotonic()

    alice_job = (await submit_job(api, keys.alice, type="noop")).id
    alice_cancelled = (await submit_job(api, keys.alice, type="noop")).id
    await cancel_job(api, keys.alice, alice_cancelled)
    bob_queued = (await submit_job(api, keys.bob, type="noop", idempotency_key=IDEMPOTENCY_KEY)).id
    bob_cancelled = (await submit_job(api, keys.bob, type="noop")).id
    await cancel_job(api, keys.bob, bob_cancelled)
    spare = await create_key(api, keys.admin, "authmatrix-spare", keys_pb.API_KEY_ROLE_USER)
    revoked_user, revoked_admin = await revoked_keys(api, keys.admin)
    alice_schedule = await create_schedule(api, keys.alice)
    bob_schedule = await create_schedule(api, keys.bob)
    alice_operation = await start_bulk(api, keys.alice)
    bob_operation = await start_bulk(api, keys.bob)
    alice_batch = await start_batch(api, keys.alice)
    bob_batch = await start_batch(api, keys.bob)
    world = World(
        alice_job,
        alice_cancelled,
        bob_queued,
        bob_cancelled,
        spare.key.id,
        revoked_user,
        revoked_admin,
        alice_schedule,
        bob_schedule,
        alice_operation,
        bob_operation,
        alice_batch,
        bob_batch,
    )

    builders = job_requests(world)
    covered = {r.method.full_name for r in ALL_RPCS}
    assert covered == set(builders), (
        f"RPCs without a request here: {sorted(covered - set(builders))}; "
        f"rows for RPCs that are gone: {sorted(set(builders) - covered)}"
    )

    def request(rpc: Rpc, target: str = "") -> Message:
        """The RPC's request, naming `target` (default: alice's job or schedule)."""
        default = alice_schedule if rpc.name in SCHEDULE_ID_RPCS else alice_job
        if rpc.name in BULK_ID_RPCS:
            default = alice_operation
        if rpc.name in BATCH_ID_RPCS:
            default = alice_batch
        return builders[rpc.method.full_name](target or default)

    def channel(rpc: Rpc) -> grpc.aio.Channel:
        return worker if rpc.service == "conveyor.v1.WorkerControl" else api

    def rightful(rpc: Rpc) -> str:
        return keys.admin if rpc.admin_only else keys.alice

    tally = Tally()
    UNAUTH = Code.UNAUTHENTICATED
    for rpc in ALL_RPCS:
        got = await invoke(channel(rpc), rpc, request(rpc), None)
        tally.expect("no key", rpc, got, UNAUTH)
        for variant, bad in bad_keys(rightful(rpc)).items():
            got = await invoke(channel(rpc), rpc, request(rpc), bearer(bad))
            tally.expect(f"bad key ({variant})", rpc, got, UNAUTH)
        wrong_scheme = (("authorization", f"Basic {rightful(rpc)}"),)
        got = await invoke(channel(rpc), rpc, request(rpc), wrong_scheme)
        tally.expect("bad key (wrong scheme)", rpc, got, UNAUTH)
        for variant, revoked in [("user", revoked_user), ("admin", revoked_admin)]:
            got = await invoke(channel(rpc), rpc, request(rpc), bearer(revoked))
            tally.expect(f"revoked key ({variant})", rpc, got, UNAUTH)

    # Another owner's job: exactly what a job that does not exist gets.
    not_applicable: dict[str, list[str]] = {"other owner": [], "user on admin RPC": []}
    for rpc in ALL_RPCS:
        if rpc.name in ("ListJobs", "ListSchedules"):
            theirs_listed: Message = (
                jobs_pb.ListJobsRequest(queue=QUEUE, owner="bob")
                if rpc.name == "ListJobs"
                else schedule_pb.ListSchedulesRequest(owner="bob")
            )
            got = await invoke(api, rpc, theirs_listed, bearer(keys.alice))
            tally.expect("other owner", rpc, got, Code.PERMISSION_DENIED)
            continue
        if rpc.name not in JOB_ID_RPCS | SCHEDULE_ID_RPCS | BULK_ID_RPCS | BATCH_ID_RPCS:
            isolated = rpc.name in ("SubmitJob", "SubmitJobs")
            not_applicable["other owner"].append(rpc.label + (" (isolation below)" * isolated))
            continue
        missing = await invoke(api, rpc, request(rpc, MISSING_JOB), bearer(keys.alice))
        assert missing.code == Code.NOT_FOUND, (rpc.label, missing)
        bobs = (bob_schedule,) if rpc.name in SCHEDULE_ID_RPCS else (bob_queued, bob_cancelled)
        if rpc.name in BULK_ID_RPCS:
            bobs = (bob_operation,)
        if rpc.name in BATCH_ID_RPCS:
            bobs = (bob_batch,)
        for theirs in bobs:
            got = await invoke(api, rpc, request(rpc, theirs), bearer(keys.alice))
            if tally.expect("other owner", rpc, got, Code.NOT_FOUND):
                same = got.details.replace(theirs, "<id>") == missing.details.replace(
                    MISSING_JOB, "<id>"
                )
                if not same:
                    tally.wrong.append(
                        f"other owner: {rpc.label} says {got.details!r} for another owner's "
                        f"job but {missing.details!r} for a missing one (existence leaks)"
                    )

    for rpc in ALL_RPCS:
        if not rpc.admin_only:
            not_applicable["user on admin RPC"].append(rpc.label)
            continue
        got = await invoke(channel(rpc), rpc, request(rpc), bearer(keys.alice))
        tally.expect("user on admin RPC", rpc, got, Code.PERMISSION_DENIED)

    # Nothing a refused call asked for happened.
    assert (await get_job(api, keys.bob, bob_queued)).state == job_pb2.JOB_STATE_QUEUED
    assert (await get_job(api, keys.bob, bob_cancelled)).state == job_pb2.JOB_STATE_CANCELLED
    assert (await get_job(api, keys.alice, alice_cancelled)).state == job_pb2.JOB_STATE_CANCELLED
    assert await worker_state(worker, keys.admin) == control_pb.WORKER_STATE_RUNNING
    for owner_key, schedule_id in ((keys.alice, alice_schedule), (keys.bob, bob_schedule)):
        still = await invoke(
            api,
            rpc_named("GetSchedule"),
            schedule_pb.GetScheduleRequest(id=schedule_id),
            bearer(owner_key),
        )
        assert isinstance(still.reply, schedule_pb.GetScheduleResponse), still
        assert not still.reply.schedule.paused, "a refused call paused a schedule"
    listed = await invoke(
        api,
        rpc_named("ListApiKeys"),
        keys_pb.ListApiKeysRequest(include_revoked=True),
        bearer(keys.admin),
    )
    assert isinstance(listed.reply, keys_pb.ListApiKeysResponse), listed
    by_id = {k.id: k for k in listed.reply.keys}
    assert not [k for k in listed.reply.keys if k.owner == INTRUDER], "a refused call made a key"
    spare_now = by_id[spare.key.id]
    assert not spare_now.HasField("revoke_time") and not spare_now.HasField("submit_limit")

    # Isolation where there is no job id to refuse: submits and listings stay per owner.
    isolation = 0
    mine = await invoke(
        api, rpc_named("SubmitJob"), request(rpc_named("SubmitJob")), bearer(keys.alice)
    )
    assert isinstance(mine.reply, jobs_pb.SubmitJobResponse), mine
    assert mine.reply.job.owner == "alice" and mine.reply.job.id != bob_queued, (
        "alice's submit with bob's idempotency key must make her own job"
    )
    isolation += 1
    bulk = await invoke(
        api, rpc_named("SubmitJobs"), request(rpc_named("SubmitJobs")), bearer(keys.alice)
    )
    assert isinstance(bulk.reply, jobs_pb.SubmitJobsResponse), bulk
    assert [j.owner for j in bulk.reply.jobs] == ["alice", "alice"]
    assert bulk.reply.jobs[0].id == mine.reply.job.id, "her own key returns her own job"
    assert bob_queued not in {j.id for j in bulk.reply.jobs}
    isolation += 1
    page = await invoke(
        api, rpc_named("ListJobs"), request(rpc_named("ListJobs")), bearer(keys.alice)
    )
    assert isinstance(page.reply, jobs_pb.ListJobsResponse), page
    assert page.reply.jobs and {j.owner for j in page.reply.jobs} == {"alice"}
    assert not {bob_queued, bob_cancelled} & {j.id for j in page.reply.jobs}
    isolation += 1

    # The same requests with the right key are answered: the refusals were about the key.
    # Order matters: ResumeWorker undoes PauseWorker, DrainWorker (last) ends the worker.
    baseline = 0
    last = {"DrainWorker", "RevokeApiKey", "DeleteSchedule"}
    order = sorted(ALL_RPCS, key=lambda r: r.name in last)
    for rpc in order:
        target = alice_cancelled if rpc.name == "RetryJob" else ""
        got = await invoke(channel(rpc), rpc, request(rpc, target), bearer(rightful(rpc)))
        # alice's job is QUEUED, so it has no result: the call got past the key all the same.
        # alice's bulk operation has ended, so it cannot be cancelled: the same.
        maybe_refused = rpc.name in ("GetJobResult", "CancelBulkOperation")
        answered = {Code.OK, Code.FAILED_PRECONDITION} if maybe_refused else {Code.OK}
        assert got.code in answered, (rpc.label, got)
        baseline += 1
        if isinstance(got.reply, keys_pb.CreateApiKeyResponse):  # leave no admin key behind
            revoke = keys_pb.RevokeApiKeyRequest(id=got.reply.key.id)
            gone = await invoke(api, rpc_named("RevokeApiKey"), revoke, bearer(keys.admin))
            assert gone.code == Code.OK, gone
    assert await asyncio.to_thread(control_worker.proc.wait, 30) == 0, control_worker.tail()

    for job_id in {
        alice_job,
        alice_cancelled,
        mine.reply.job.id,
        *(j.id for j in bulk.reply.jobs),
        bob_queued,
    }:
        owner_key = keys.bob if job_id == bob_queued else keys.alice
        await invoke(
            api, rpc_named("CancelJob"), jobs_pb.CancelJobRequest(id=job_id), bearer(owner_key)
        )

    cases = {
        "no key": "no key",
        "bad key": "bad key",
        "revoked key": "revoked key",
        "other owner": "other owner",
        "user on admin RPC": "user on admin RPC",
    }
    per_case = {
        name: sum(n for case, n in tally.checked.items() if case.startswith(prefix))
        for name, prefix in cases.items()
    }
    total = sum(tally.checked.values())
    print(
        f"\nauth matrix: {len(ALL_RPCS)} RPCs x {len(cases)} cases, {total} refusals checked, "
        f"{len(tally.wrong)} wrong ({', '.join(f'{k} {v}' for k, v in per_case.items())}); "
        f"{isolation} isolation checks, {baseline} rightful calls answered; "
        f"{time.monotonic() - started:.1f}s"
    )
    for case, rpcs in not_applicable.items():
        print(f"  not applicable, {case}: {', '.join(rpcs)}")
    for line in tally.wrong:
        print(f"  WRONG {line}")
    assert not tally.wrong, "\n".join(tally.wrong)
