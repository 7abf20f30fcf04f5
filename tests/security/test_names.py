"""User-chosen names cost nothing per name: queue and job-type strings are the user's, so

- a job type no one registered is refused (INVALID_ARGUMENT naming the known types) when
  the API can know (its own registry, or types live workers announce), in SubmitJob,
  SubmitJobs, CreateSchedule and `conveyor submit`; accepted with a `blocked_reason` that
  says so when it cannot (no live worker serves the job's queue);
- a queue no worker ever served is accepted, and its jobs say so in `blocked_reason`;
- `/metrics` labels only existing queues and known types (the rest are `other`), so 10,000
  made-up queue names add a handful of series and the scrape stays fast.

Against the session's real stack (api and a worker on `default` loading tests.handlers).
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable

import pytest

from conveyor.client import AsyncClient, Job, JobState, schedule_request, submit_request
from conveyor.errors import InvalidArgument
from conveyor.v1 import job_pb2
from tests.observability import Sample, scrape, value
from tests.processes import Keys, Service, Stack
from tests.worker_only_handlers import WORKER_ONLY_TYPE

# The label of names that do not exist (conveyor.telemetry.metrics.OTHER; spelled out so
# this file also runs against code that predates it).
OTHER = "other"
# Made-up queue names the metrics test submits to (the figure: 10,000).
JUNK_NAMES = 10_000
BULK = 1_000  # requests per SubmitJobs (MAX_BULK)
# Series the junk may add at most: `other` labels for the counters it touches.
SERIES_ALLOWED = 5
SCRAPE_SECONDS_ALLOWED = 1.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def api_of(stack: Stack) -> Service:
    return next(s for s in stack.services if s.name == "api")


async def final(client: AsyncClient, job_id: str) -> Job:
    async with asyncio.timeout(20):
        return [u async for u in client.watch(job_id)][-1].job


async def reason_becomes(client: AsyncClient, job_id: str, wanted: Callable[[str], bool]) -> Job:
    """The job once `wanted` holds of its blocked_reason (the API rereads workers every
    second)."""
    async with asyncio.timeout(10):
        while not wanted((job := await client.get(job_id)).blocked_reason):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return job


def timed_scrape(service: Service) -> tuple[dict[Sample, float], float]:
    started = time.perf_counter()
    samples = scrape(service)
    return samples, time.perf_counter() - started


def series_count(service: Service) -> int:
    """Lines of /metrics that are samples (what a Prometheus server stores as series)."""
    with urllib.request.urlopen(f"http://{service.metrics_addr}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


# -- job types ------------------------------------------------------------------------------


async def test_an_unknown_type_is_refused_naming_the_known_ones(
    stack: Stack, keys: Keys, alice: AsyncClient
) -> None:
    """`slep` (a typo of `sleep`) on a queue a live worker serves is INVALID_ARGUMENT with a
    violation on `type` that names the known types, and nothing is stored."""
    with pytest.raises(InvalidArgument) as refused:
        await alice.submit("slep", {"seconds": 1})
    [violation] = refused.value.violations
    assert violation.field == "type"
    assert "unknown job type 'slep'" in violation.description
    assert "sleep" in violation.description and "noop" in violation.description

    async with AsyncClient(stack.api_addr, api_key=stack.create_key(unique("bulk"))) as fresh:
        with pytest.raises(InvalidArgument) as bulk:
            await fresh.submit_many([submit_request("noop"), submit_request("slep")])
        assert [v.field for v in bulk.value.violations] == ["requests[1].type"]
        assert not (await fresh.list()).items  # all or nothing: the noop was not stored

    with pytest.raises(InvalidArgument) as schedule:
        await alice.create_schedule(schedule_request("slep", every=60))
    assert [v.field for v in schedule.value.violations] == ["schedule.job_template.type"]

    cli = stack.cli("submit", "slep", key=keys.alice, check=False)
    assert cli.returncode == 2  # a refused call (conveyor.cli.common.call)
    assert "unknown job type 'slep'" in cli.stderr


async def test_a_type_only_a_live_worker_announces_is_accepted(
    stack: Stack, alice: AsyncClient
) -> None:
    """A type the API does not load but a live worker announces is accepted and runs; once
    no live worker serves its queue, the API cannot know, so it accepts and says so."""
    queue = unique("names-extra")
    worker = stack.start(
        "worker",
        "--queues",
        queue,
        env={
            **stack.worker_env(),
            "CONVEYOR_HANDLERS": "tests.handlers,tests.worker_only_handlers",
        },
    )
    try:
        job = await alice.submit(WORKER_ONLY_TYPE, queue=queue)
        assert (await final(alice, job.id)).state == JobState.SUCCEEDED
    finally:
        assert worker.stop() == 0
    later = await alice.submit(WORKER_ONLY_TYPE, queue=queue)
    seen = await reason_becomes(alice, later.id, lambda r: r.startswith("no live worker"))
    assert seen.blocked_reason == (
        f"no live worker serves queue {queue!r}, and job type {WORKER_ONLY_TYPE!r} cannot be "
        "checked until one does (the API does not load it and no live worker announces it)"
    )
    assert seen.raw.blocked == job_pb2.BlockedReason(
        kind=job_pb2.BLOCKED_KIND_NO_WORKER, queue=queue, job_type=WORKER_ONLY_TYPE,
        type_unverified=True,
    )  # fmt: skip
    # A type the API loads is checked, so a queue without workers is all there is to say.
    known = await alice.get((await alice.submit("noop", queue=queue)).id)
    assert known.blocked_reason == f"no live worker serves queue {queue!r}"
    assert known.raw.blocked == job_pb2.BlockedReason(
        kind=job_pb2.BLOCKED_KIND_NO_WORKER, queue=queue, job_type="noop"
    )
    await alice.cancel(later.id)
    await alice.cancel(known.id)


# -- queues ---------------------------------------------------------------------------------


async def test_a_queue_no_worker_ever_served_says_so_and_runs_once_served(
    stack: Stack, alice: AsyncClient
) -> None:
    """A job on a queue nobody ever served is accepted and says why it waits; a worker
    that starts serving the queue runs it."""
    queue = unique("names-new")
    job = await alice.submit("noop", queue=queue)
    unserved = await alice.get(job.id)
    assert unserved.blocked_reason == (
        f"no worker has ever served queue {queue!r} and no admin configured it: "
        "the job waits until a worker serves that queue"
    )
    assert unserved.raw.blocked == job_pb2.BlockedReason(
        kind=job_pb2.BLOCKED_KIND_QUEUE_NEVER_SERVED, queue=queue
    )
    worker = stack.start("worker", "--queues", queue, env=stack.worker_env())
    try:
        assert (await final(alice, job.id)).state == JobState.SUCCEEDED
    finally:
        assert worker.stop() == 0


async def test_made_up_queue_names_add_a_handful_of_series(
    stack: Stack, admin: AsyncClient
) -> None:
    """10,000 jobs to 10,000 new queue names add at most a handful of series to the api's
    /metrics (they count under queue="other"), the scrape stays fast, and existing queues
    (the default, one an admin configured) keep their own labels."""
    configured = unique("names-configured")
    await admin.pause_queue(configured)
    api = api_of(stack)
    before, _ = timed_scrape(api)
    series_before = series_count(api)
    owner = unique("mallory")
    async with AsyncClient(stack.api_addr, api_key=stack.create_key(owner)) as mallory:
        for start in range(0, JUNK_NAMES, BULK):
            names = [f"junk-{owner}-{i}" for i in range(start, start + BULK)]
            await mallory.submit_many([submit_request("noop", queue=name) for name in names])
    after, seconds = timed_scrape(api)
    series_after = series_count(api)
    print(f"series {series_before} -> {series_after}; scrape {seconds:.3f} s")
    assert series_after - series_before <= SERIES_ALLOWED
    assert seconds < SCRAPE_SECONDS_ALLOWED
    submitted = "conveyor_jobs_submitted_total"
    grew = value(after, submitted, queue=OTHER, type="noop") - value(
        before, submitted, queue=OTHER, type="noop"
    )
    assert grew == JUNK_NAMES
    assert not any(dict(labels).get("queue", "").startswith("junk-") for _, labels in after)
    assert value(after, "conveyor_queue_paused", queue=configured) == 1
    assert ("conveyor_queue_depth", (("queue", "default"),)) in after
    await admin.resume_queue(configured)


async def test_a_worker_counts_types_it_cannot_run_as_other(
    stack: Stack, alice: AsyncClient
) -> None:
    """A job of a type no one knows, accepted while no worker served its queue, goes DEAD
    on the worker that then serves it, counted under type="other" (not its own name)."""
    queue = unique("names-fold")
    made_up = unique("names.made_up")
    job = await alice.submit(made_up, queue=queue, max_attempts=1)
    worker = stack.start("worker", "--queues", queue, env=stack.worker_env())
    try:
        assert (await final(alice, job.id)).state == JobState.DEAD
        samples = await wait_for_sample(
            lambda: scrape_async(worker), "conveyor_job_outcomes_total", queue, "dead"
        )
    finally:
        assert worker.stop() == 0
    assert value(samples, "conveyor_job_outcomes_total", queue=queue, type=OTHER,
                 outcome="dead") == 1  # fmt: skip
    assert not any(dict(labels).get("type") == made_up for _, labels in samples)


async def scrape_async(service: Service) -> dict[Sample, float]:
    return await asyncio.to_thread(scrape, service)


async def wait_for_sample(
    read: Callable[[], Awaitable[dict[Sample, float]]], name: str, queue: str, outcome: str
) -> dict[Sample, float]:
    """The worker's samples once it counted an outcome on `queue` (counted after the
    database took it, just after the job's last event)."""
    async with asyncio.timeout(10):
        while True:
            samples = await read()
            if any(
                n == name and ("queue", queue) in labels and ("outcome", outcome) in labels
                for n, labels in samples
            ):
                return samples
            await asyncio.sleep(0.05)
