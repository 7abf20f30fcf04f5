"""Ambiguous answers: a submit whose API process dies (or stalls past the caller's
deadline) may have been committed, and the caller cannot tell. The SDK gives each job an
idempotency key of its own and sends the same request again on UNAVAILABLE and
DEADLINE_EXCEEDED, so every logical submit makes exactly one job.

Each test runs an API process of its own on a fixed port (beside the shared stack's, on
the same Redis and database), so it can be killed, restarted on that port, or stopped
(SIGSTOP) without disturbing other tests. Run with `pytest -s` for the counts.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import psycopg
import pytest

from conveyor.client import AsyncClient, Client, Job, SubmitRetry, submit_request
from conveyor.db.bulk import psycopg_dsn
from conveyor.embedded import free_port
from conveyor.errors import ConveyorError, InvalidArgument
from tests.processes import Keys, Service, Stack

BULKS = 20
BULK_SIZE = 50
# The bulks during which the API is killed: right as each is sent, and a moment into it.
KILLS = {4: 0.0, 12: 0.005}


@dataclass
class OwnApi:
    """An API process of the test's own on a fixed address: killed, restarted, stopped."""

    stack: Stack
    addr: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    service: Service | None = None

    def start(self) -> Service:
        self.service = self.stack.start("api", env={"CONVEYOR_API_ADDR": self.addr})
        return self.service

    @property
    def running(self) -> Service:
        assert self.service is not None
        return self.service

    def pause(self) -> None:
        self.running.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.running.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def own_api(stack: Stack) -> Iterator[OwnApi]:
    api = OwnApi(stack)
    api.start()
    yield api
    api.resume()
    if api.running.proc.poll() is None:  # not killed by the test (or a failure of it)
        assert api.running.stop() == 0


def rows(stack: Stack, queue: str) -> list[tuple[str, int, str]]:
    """(id, the payload's logical number, idempotency key) of every job in `queue`."""
    with psycopg.connect(psycopg_dsn(stack.env["CONVEYOR_DATABASE_URL"])) as conn:
        found = conn.execute(
            "SELECT id, (payload->>'n')::int, coalesce(idempotency_key, '') FROM jobs"
            " WHERE queue = %s",
            [queue],
        ).fetchall()
    return [(str(i), int(n), str(k)) for i, n, k in found]


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll `condition` (state in another process or task, nothing to await) to a deadline."""
    async with asyncio.timeout(seconds):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


@dataclass
class Load:
    """The logical submits made, and the jobs each returned, by logical number."""

    queue: str = field(default_factory=lambda: f"ambiguous-{uuid.uuid4().hex[:8]}")
    returned: dict[int, str] = field(default_factory=dict)
    submits: int = 0
    next_n: int = 0
    # Per logical submit: when it was sent and answered, and its jobs' create times (epoch s).
    spans: list[tuple[float, float, list[float]]] = field(default_factory=list)

    def numbers(self, count: int) -> list[int]:
        first, self.next_n = self.next_n, self.next_n + count
        return list(range(first, first + count))

    def record(self, numbers: list[int], sent: float, jobs: list[Job]) -> None:
        self.submits += 1
        self.returned.update(zip(numbers, (job.id for job in jobs), strict=True))
        made = [job.create_time.timestamp() for job in jobs]
        self.spans.append((sent, time.time(), made))

    def committed_before(self, kills: list[float]) -> int:
        """Jobs committed before a kill whose call was answered only after it: the
        answers the kill took, that a retry returned."""
        return sum(
            sum(made < kill for made in jobs)
            for kill in kills
            for sent, answered, jobs in self.spans
            if sent < kill < answered
        )


@pytest.mark.timeout(180)
async def test_kill_9_mid_bulk_loses_and_duplicates_nothing(
    stack: Stack, keys: Keys, own_api: OwnApi
) -> None:
    """20 bulks of 50 and single submits in a loop while the API is killed (-9) mid-bulk
    twice and restarted on its port: every logical submit returns its jobs, and the
    database holds exactly one job per logical job (none lost, none twice)."""
    load = Load()
    in_flight = asyncio.Event()
    bulks_done = asyncio.Event()
    kills: list[float] = []
    restarts: list[float] = []

    async def bulks(client: AsyncClient) -> None:
        for b in range(BULKS):
            numbers = load.numbers(BULK_SIZE)
            batch = [submit_request("noop", {"n": n}, queue=load.queue) for n in numbers]
            sent = time.time()
            if b in KILLS:
                in_flight.set()
            load.record(numbers, sent, await client.submit_many(batch))
        bulks_done.set()

    async def singles(client: AsyncClient) -> None:
        while not bulks_done.is_set():
            numbers, sent = load.numbers(1), time.time()
            job = await client.submit("noop", {"n": numbers[0]}, queue=load.queue)
            load.record(numbers, sent, [job])

    async def killer() -> None:
        for offset in KILLS.values():
            await in_flight.wait()
            in_flight.clear()
            await asyncio.sleep(offset)  # fault timing, not a wait for a condition
            own_api.running.kill()
            kills.append(time.time())
            began = time.monotonic()
            await asyncio.to_thread(own_api.start)
            restarts.append(time.monotonic() - began)

    async with (
        AsyncClient(own_api.addr, api_key=keys.alice) as bulk_client,
        AsyncClient(own_api.addr, api_key=keys.alice) as single_client,
    ):
        await asyncio.gather(bulks(bulk_client), singles(single_client), killer())
        absorbed = bulk_client.absorbed + single_client.absorbed

    stored = rows(stack, load.queue)
    numbers = [n for _, n, _ in stored]
    duplicates = len(numbers) - len(set(numbers))
    lost = set(load.returned) - set(numbers)
    print(
        f"\nambiguous submits: {load.submits} submits ({BULKS} bulks of {BULK_SIZE}),"
        f" {sum(absorbed.values())} retries, absorbed {dict(absorbed)},"
        f" {len(stored)} jobs in the database, {duplicates} duplicates, {len(lost)} lost;"
        f" {load.committed_before(kills)} jobs committed before a kill took their answer;"
        f" API restarts took {', '.join(f'{s:.1f}s' for s in restarts)}"
    )
    assert len(restarts) == len(KILLS)
    assert absorbed["UNAVAILABLE"] >= 1, "a kill was absorbed by a retry"
    assert duplicates == 0 and not lost
    assert len(stored) == len(load.returned) == load.next_n
    assert {i for i, _, _ in stored} == set(load.returned.values()), "the jobs returned"
    assert all(key.startswith("sdk-") for _, _, key in stored)


async def test_a_retried_bulk_returns_the_jobs_of_its_first_try(alice: AsyncClient) -> None:
    """The server answers a bulk whose jobs all exist already (same keys, same requests)
    with those jobs, in request order, not with an error: what makes a bulk retryable."""
    queue = f"ambiguous-{uuid.uuid4().hex[:8]}"
    batch = [submit_request("noop", {"n": n}, queue=queue) for n in range(5)]
    for request in batch:
        request.idempotency_key = f"bulk-{uuid.uuid4().hex}"
    first = await alice.submit_many(batch)
    again = await alice.submit_many(batch)
    assert [j.id for j in again] == [j.id for j in first]
    assert [j.idempotency_key for j in again] == [r.idempotency_key for r in batch]


async def test_the_sdk_keys_each_job_and_the_callers_key_wins(alice: AsyncClient) -> None:
    """Without a key every job gets one of its own (`sdk-…`), the caller's requests left as
    they were; a key the caller gave is sent as it is; None sends none."""
    queue = f"ambiguous-{uuid.uuid4().hex[:8]}"
    mine = f"mine-{uuid.uuid4().hex}"
    batch = [submit_request("noop", queue=queue), submit_request("noop", queue=queue)]
    batch[1].idempotency_key = mine
    jobs = await alice.submit_many(batch)
    assert jobs[0].idempotency_key.startswith("sdk-") and jobs[1].idempotency_key == mine
    assert batch[0].idempotency_key == "", "the caller's request is not changed"
    again = await alice.submit_many(batch)
    assert again[0].id != jobs[0].id, "a new call is a new logical submit"
    assert again[1].id == jobs[1].id

    single = await alice.submit("noop", queue=queue)
    assert single.idempotency_key.startswith("sdk-")
    assert (
        await alice.submit("noop", queue=queue, idempotency_key=mine + "x")
    ).idempotency_key == mine + "x"
    assert (await alice.submit("noop", queue=queue, idempotency_key=None)).idempotency_key == ""
    unkeyed = await alice.submit_many([submit_request("noop", queue=queue)], idempotency_keys=False)
    assert unkeyed[0].idempotency_key == ""


@pytest.fixture
async def impatient(own_api: OwnApi, keys: Keys) -> AsyncIterator[AsyncClient]:
    """A client of `own_api` with a short per-try timeout."""
    async with AsyncClient(own_api.addr, api_key=keys.alice, timeout=0.5) as client:
        yield client


async def test_deadline_exceeded_is_retried_with_the_same_key(
    stack: Stack, own_api: OwnApi, impatient: AsyncClient
) -> None:
    """A try that outlives its deadline (the API stalled, SIGSTOP) may still be committed
    when the API resumes: the retry sends the same key, so one job results."""
    queue = f"ambiguous-{uuid.uuid4().hex[:8]}"
    own_api.pause()
    try:
        submit = asyncio.ensure_future(impatient.submit("noop", {"n": 1}, queue=queue))
        await until(lambda: impatient.absorbed["DEADLINE_EXCEEDED"] >= 1)
    finally:
        own_api.resume()
    job = await submit
    stored = rows(stack, queue)
    print(f"\ndeadline: absorbed {dict(impatient.absorbed)}, {len(stored)} job(s) stored")
    assert [(i, k) for i, _, k in stored] == [(job.id, job.idempotency_key)]


async def test_the_blocking_client_retries_with_the_same_key(
    stack: Stack, keys: Keys, own_api: OwnApi
) -> None:
    """`Client` (the CLI's) retries the same way: a bulk whose first try timed out on a
    stalled API makes its jobs once."""
    queue = f"ambiguous-{uuid.uuid4().hex[:8]}"
    batch = [submit_request("noop", {"n": n}, queue=queue) for n in range(3)]
    with Client(own_api.addr, api_key=keys.alice, timeout=0.5) as client:
        own_api.pause()
        try:
            submit = asyncio.ensure_future(asyncio.to_thread(client.submit_many, batch))
            await until(lambda: client.absorbed["DEADLINE_EXCEEDED"] >= 1)
        finally:
            own_api.resume()
        jobs = await submit
    stored = rows(stack, queue)
    print(f"\nblocking: absorbed {dict(client.absorbed)}, {len(stored)} job(s) stored")
    assert sorted((i, n) for i, n, _ in stored) == sorted((job.id, n) for n, job in enumerate(jobs))


async def test_a_submit_without_a_key_is_not_retried(
    own_api: OwnApi, impatient: AsyncClient
) -> None:
    """`idempotency_key=None` opts out of the key, and so of retries: an ambiguous answer
    reaches the caller at once rather than risk a second job."""
    own_api.pause()
    try:
        with pytest.raises(ConveyorError) as failed:
            await impatient.submit("noop", queue="ambiguous", idempotency_key=None)
    finally:
        own_api.resume()
    assert failed.value.code.name == "DEADLINE_EXCEEDED"
    assert not impatient.absorbed


async def test_invalid_argument_is_raised_at_once(alice: AsyncClient) -> None:
    """A verdict on the request itself (INVALID_ARGUMENT) would be the same on any retry:
    it is raised on the first answer, nothing retried."""
    began = time.monotonic()
    with pytest.raises(InvalidArgument):
        await alice.submit("noop", queue="ambiguous", priority=42)
    with pytest.raises(InvalidArgument):
        await alice.submit_many([submit_request("", queue="ambiguous")])
    assert not alice.absorbed
    assert time.monotonic() - began < 1.0


async def test_retries_stop_at_the_budget(own_api: OwnApi, keys: Keys) -> None:
    """An API that stays away: the tries stop at `SubmitRetry.attempts`, and the last
    answer (UNAVAILABLE) reaches the caller."""
    own_api.running.kill()
    policy = SubmitRetry(attempts=3, initial=0.01, maximum=0.02)
    async with AsyncClient(own_api.addr, api_key=keys.alice, submit_retry=policy) as client:
        with pytest.raises(ConveyorError) as failed:
            await client.submit("noop", queue="ambiguous")
        assert failed.value.code.name == "UNAVAILABLE"
        assert client.absorbed == {"UNAVAILABLE": 2}
