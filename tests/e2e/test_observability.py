"""What an operator sees, against real processes: one trace per job from the CLI to the
worker's attempts (exported over OTLP to a receiver in this process), and each service's
/metrics after a workload whose numbers are known.

The stack here is its own (its own Redis and database), so no other test's jobs move the
counters."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conveyor.client import AsyncClient, schedule_request
from conveyor.db import migrate
from conveyor.embedded import EmbeddedRedis
from conveyor.errors import ResourceExhausted
from conveyor.v1 import job_pb2
from tests.observability import ExportedSpan, Sample, SpanCollector, scrape, spans_collector, value
from tests.processes import Service, Stack, fresh_database, make_env

SUCCEEDED = job_pb2.JOB_STATE_SUCCEEDED


@dataclass
class Observed:
    stack: Stack
    spans: SpanCollector
    api: Service
    worker: Service
    scheduler: Service
    admin: str
    user: str


@pytest.fixture(scope="module")
def collector() -> Iterator[SpanCollector]:
    yield from spans_collector()


@pytest.fixture(scope="module")
def observed(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, collector: SpanCollector
) -> Iterator[Observed]:
    redis = EmbeddedRedis(tmp_path_factory.mktemp("obs-redis"))
    redis.start()
    url = fresh_database(database_url, "conveyor_observability")
    migrate(url)
    env = make_env(redis.url, url)
    env.update(collector.env)
    env["CONVEYOR_LOG_FORMAT"] = "json"
    stack = Stack(env, tmp_path_factory.mktemp("obs-logs"))
    api = stack.start("api")
    worker = stack.start("worker", "--concurrency", "2")
    scheduler = stack.start("scheduler")
    admin = stack.create_key("ops", "admin")
    user = stack.create_key("carol")
    yield Observed(stack, collector, api, worker, scheduler, admin, user)
    codes = stack.stop_all()
    redis.stop()
    assert all(code == 0 for code in codes.values()), f"unclean shutdown: {codes}"


@pytest.fixture
async def carol(observed: Observed) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(observed.stack.api_addr, api_key=observed.user) as client:
        yield client


@pytest.fixture
async def ops(observed: Observed) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(observed.stack.api_addr, api_key=observed.admin) as client:
        yield client


async def _until(check: Callable[[], bool], seconds: float = 20.0) -> None:
    """For state only visible by asking (a scrape): ask again, briefly apart, until true."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.1)


def _only(spans: list[ExportedSpan], **match: str) -> ExportedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, f"{match}: {len(found)} spans of {[(s.service, s.name) for s in spans]}"
    return found[0]


# -- traces -------------------------------------------------------------------------------


async def test_a_job_submitted_with_the_cli_is_one_trace_from_client_to_attempt(
    observed: Observed,
) -> None:
    out = observed.stack.cli("submit", "noop", "--wait", "--json", key=observed.user)
    job_id = json.loads(out.stdout.splitlines()[0])["id"]

    def attempt_arrived(spans: list[ExportedSpan]) -> bool:
        return any(
            s.name == "job.attempt" and s.attributes.get("messaging.message.id") == job_id
            for s in spans
        )

    spans = await observed.spans.wait_for(attempt_arrived)
    attempt = next(
        s
        for s in spans
        if s.name == "job.attempt" and s.attributes["messaging.message.id"] == job_id
    )
    # The CLI's root span ends when the command does; wait for it too.
    root_name = "conveyor submit"
    spans = await observed.spans.wait_for(
        lambda all_: any(s.name == root_name and s.trace_id == attempt.trace_id for s in all_)
    )
    trace = observed.spans.trace(attempt.trace_id)

    root = _only(trace, name=root_name)
    assert (root.service, root.parent_id) == ("conveyor-cli", "")
    call = _only(trace, name="/conveyor.v1.JobService/SubmitJob", kind="CLIENT")
    assert (call.service, call.parent_id) == ("conveyor-cli", root.span_id)
    served = _only(trace, name="/conveyor.v1.JobService/SubmitJob", kind="SERVER")
    assert (served.service, served.parent_id) == ("conveyor-api", call.span_id)
    assert served.attributes["messaging.message.id"] == job_id
    queued = _only(trace, name="job.queued")
    assert (queued.service, queued.parent_id) == ("conveyor-worker", served.span_id)
    assert queued.start_ns <= queued.end_ns
    assert (attempt.service, attempt.parent_id, attempt.kind) == (
        "conveyor-worker",
        served.span_id,
        "CONSUMER",
    )
    assert attempt.attributes == {
        "messaging.system": "conveyor",
        "messaging.message.id": job_id,
        "messaging.destination.name": "default",
        "conveyor.job.type": "noop",
        "conveyor.job.attempt": 1,
        "conveyor.job.outcome": "succeeded",
    }
    assert attempt.start_ns >= queued.end_ns
    # The watch that --wait opened is part of the same command, so of the same trace.
    watch = _only(trace, name="/conveyor.v1.JobService/WatchJob", kind="SERVER")
    assert watch.service == "conveyor-api"


async def test_every_attempt_of_a_retried_job_joins_the_submit_trace(
    observed: Observed, carol: AsyncClient
) -> None:
    job = await carol.submit("fail", {"message": "boom"}, max_attempts=2)

    def both(spans: list[ExportedSpan]) -> bool:
        ours = [s for s in spans if s.attributes.get("messaging.message.id") == job.id]
        return len([s for s in ours if s.name == "job.attempt"]) == 2

    spans = await observed.spans.wait_for(both)
    attempts = sorted(
        (
            s
            for s in spans
            if s.name == "job.attempt" and s.attributes["messaging.message.id"] == job.id
        ),
        key=lambda s: int(s.attributes["conveyor.job.attempt"]),
    )
    assert len({s.trace_id for s in attempts}) == 1
    assert len({s.parent_id for s in attempts}) == 1  # both children of the submit
    assert [s.attributes["conveyor.job.outcome"] for s in attempts] == ["retried", "dead"]
    assert all(s.status == 2 for s in attempts)  # ERROR


async def test_worker_logs_name_the_job_attempt_and_trace(
    observed: Observed, carol: AsyncClient
) -> None:
    job = await carol.submit("fail", {"message": "logged failure"}, max_attempts=1)

    def attempt_of(spans: list[ExportedSpan]) -> bool:
        return any(
            s.name == "job.attempt" and s.attributes.get("messaging.message.id") == job.id
            for s in spans
        )

    spans = await observed.spans.wait_for(attempt_of)
    attempt = next(
        s
        for s in spans
        if s.name == "job.attempt" and s.attributes["messaging.message.id"] == job.id
    )
    lines = [json.loads(line) for line in _json_lines(observed.worker.log)]
    ours = [line for line in lines if line.get("job_id") == job.id]
    assert ours, "no log line names the job"
    failed = next(line for line in ours if "logged failure" in line["event"])
    assert failed["attempt"] == 1 and failed["job_type"] == "fail"
    assert failed["trace_id"] == attempt.trace_id and failed["span_id"] == attempt.span_id
    assert failed["level"] == "info" and failed["timestamp"].endswith("Z")


def _json_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("{")]


# -- metrics ------------------------------------------------------------------------------


async def test_metrics_count_a_known_workload(
    observed: Observed, carol: AsyncClient, ops: AsyncClient
) -> None:
    api_before, worker_before = scrape(observed.api), scrape(observed.worker)

    def delta(
        now: dict[Sample, float], before: dict[Sample, float], name: str, **labels: str
    ) -> float:
        return value(now, name, **labels) - value(before, name, **labels)

    # 3 successes, one job retried once then dead, all on the default queue.
    done = [await carol.submit("noop", queue="default") for _ in range(3)]
    doomed = await carol.submit("fail", queue="default", max_attempts=2)
    for job in [*done, doomed]:
        async with asyncio.timeout(20):
            [_ async for _ in carol.watch(job.id)]
    # 2 jobs held in a paused queue, one of them cancelled.
    await ops.pause_queue("held")
    held = [await carol.submit("noop", queue="held") for _ in range(2)]
    await carol.cancel(held[0].id)

    api = scrape(observed.api)
    assert (
        delta(api, api_before, "conveyor_jobs_submitted_total", queue="default", type="noop") == 3
    )
    assert (
        delta(api, api_before, "conveyor_jobs_submitted_total", queue="default", type="fail") == 1
    )
    assert delta(api, api_before, "conveyor_jobs_submitted_total", queue="held", type="noop") == 2
    assert (
        delta(
            api,
            api_before,
            "conveyor_job_outcomes_total",
            queue="held",
            type="noop",
            outcome="cancelled",
        )
        == 1
    )
    assert value(api, "conveyor_queue_depth", queue="held") == 1
    assert value(api, "conveyor_queue_paused", queue="held") == 1
    assert value(api, "conveyor_queue_paused", queue="default") == 0
    assert value(api, "conveyor_queue_depth", queue="default") == 0
    assert value(api, "conveyor_queue_oldest_age_seconds", queue="held") > 0
    assert value(api, "conveyor_queue_running", queue="default") == 0

    # The worker writes outcomes after it answers the watch: wait for its counters.
    def outcomes_written() -> bool:
        now = scrape(observed.worker)
        return (
            delta(
                now,
                worker_before,
                "conveyor_job_outcomes_total",
                queue="default",
                type="noop",
                outcome="succeeded",
            )
            >= 3
            and delta(
                now,
                worker_before,
                "conveyor_job_outcomes_total",
                queue="default",
                type="fail",
                outcome="dead",
            )
            >= 1
        )

    await _until(outcomes_written)
    worker = scrape(observed.worker)
    outcome = "conveyor_job_outcomes_total"
    assert (
        delta(worker, worker_before, outcome, queue="default", type="noop", outcome="succeeded")
        == 3
    )
    assert (
        delta(worker, worker_before, outcome, queue="default", type="fail", outcome="retried") == 1
    )
    assert delta(worker, worker_before, outcome, queue="default", type="fail", outcome="dead") == 1
    # One wait per claim (4 jobs, 5 claims), one run per attempt, by outcome.
    assert (
        delta(
            worker, worker_before, "conveyor_job_wait_seconds_count", queue="default", type="noop"
        )
        == 3
    )
    assert (
        delta(
            worker, worker_before, "conveyor_job_wait_seconds_count", queue="default", type="fail"
        )
        == 2
    )
    run = "conveyor_job_run_seconds_count"
    assert delta(worker, worker_before, run, queue="default", type="noop", outcome="succeeded") == 3
    assert delta(worker, worker_before, run, queue="default", type="fail", outcome="retried") == 1
    assert value(worker, "conveyor_worker_concurrency") == 2
    assert value(worker, "conveyor_worker_running_jobs") == 0
    assert value(worker, "conveyor_stale_writes_refused_total") == 0
    assert value(worker, "process_resident_memory_bytes") > 0
    await ops.resume_queue("held")


async def test_metrics_count_open_watch_streams(
    observed: Observed, carol: AsyncClient, ops: AsyncClient
) -> None:
    await ops.pause_queue("watched")
    job = await carol.submit("noop", queue="watched")
    before = value(scrape(observed.api), "conveyor_watch_streams")
    first = asyncio.Event()

    async def watch() -> None:
        async for _ in carol.watch(job.id):
            first.set()

    watching = asyncio.create_task(watch())
    await asyncio.wait_for(first.wait(), 10)
    assert value(scrape(observed.api), "conveyor_watch_streams") == before + 1
    watching.cancel()
    await _until(lambda: value(scrape(observed.api), "conveyor_watch_streams") == before)
    await ops.resume_queue("watched")


async def test_metrics_count_rate_limit_refusals(observed: Observed) -> None:
    made = json.loads(observed.stack.cli("keys", "create", "--owner", "dave", "--json").stdout)
    observed.stack.cli("keys", "limits", made["id"], "--submit-rate", "0.01", "--submit-burst", "1")
    before = value(scrape(observed.api), "conveyor_rate_limited_total", kind="submit")
    async with AsyncClient(observed.stack.api_addr, api_key=made["key"]) as dave:
        await dave.submit("noop", queue="limited")
        with pytest.raises(ResourceExhausted):
            await dave.submit("noop", queue="limited")
    after = value(scrape(observed.api), "conveyor_rate_limited_total", kind="submit")
    assert after == before + 1


async def test_scheduler_metrics_count_fires(observed: Observed, carol: AsyncClient) -> None:
    before = value(scrape(observed.scheduler), "conveyor_schedule_fires_total")
    made = await carol.create_schedule(schedule_request("noop", every=1, queue="ticks"))
    try:
        await _until(
            lambda: value(scrape(observed.scheduler), "conveyor_schedule_fires_total") > before
        )
    finally:
        await carol.delete_schedule(made.id)
    samples = scrape(observed.scheduler)
    assert ("conveyor_retention_deleted_jobs_total", ()) in samples
    assert ("conveyor_schedule_buckets_skipped_total", ()) in samples
    assert value(samples, "process_cpu_seconds_total") > 0
