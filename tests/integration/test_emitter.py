"""The emitter's own counts, as the scheduler's metrics serve them (real Redis and database)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from conveyor.api.jobs import JobOperations
from conveyor.client import schedule_request
from conveyor.config import Settings
from conveyor.db import Database, JobStore
from conveyor.db.schedules import ScheduleStore
from conveyor.jobs.model import now_ms
from conveyor.jobs.schedules import schedule_from_proto
from conveyor.redis import EventHub, RedisQueue, connect
from conveyor.scheduling.emitter import Emitter
from conveyor.telemetry.metrics import SchedulerMetrics

HOUR_MS = 3_600_000


@pytest.fixture
async def emitter(db: Database, settings: Settings) -> AsyncIterator[Emitter]:
    """An emitter as a scheduler builds it, on `db` and the test Redis."""
    redis = connect(settings.redis_url)
    hub = EventHub(redis)
    jobs = JobOperations(JobStore(db), RedisQueue(redis, settings), hub, settings)
    yield Emitter(ScheduleStore(db), jobs, hub, settings)
    await hub.close()
    await redis.aclose()


async def test_missed_buckets_a_skip_schedule_leaves_out_are_counted_as_a_metric(
    emitter: Emitter,
) -> None:
    """Guards `conveyor_schedule_buckets_skipped_total`: an hourly schedule (catch-up SKIP)
    whose scheduler was away for ten and a half hours emits no job for its ten missed buckets,
    and the metric an operator watches for that gap moves by ten; the fires counter does not."""
    now = now_ms()
    # Created at `start`, 10.5 hours ago: its buckets since are start + 1 h, ..., + 10 h (half
    # an hour ago), all older than the misfire grace (60 s).
    start = (now - 10 * HOUR_MS - HOUR_MS // 2) // 1000 * 1000
    owner = f"skipper-{uuid.uuid4().hex[:8]}"
    schedule = schedule_from_proto(
        schedule_request(
            "noop", every=3600, catch_up="skip", start=datetime.fromtimestamp(start / 1000, UTC)
        ),
        owner,
        max_payload_bytes=1 << 20,
        now=start,
    )
    assert schedule.next_run == start + HOUR_MS
    assert await emitter.schedules.insert(schedule)
    metrics = SchedulerMetrics(
        fires=lambda: emitter.stats.emitted, skipped=lambda: emitter.stats.skipped
    )

    def sample(name: str) -> float | None:
        return metrics.registry.get_sample_value(name)

    assert sample("conveyor_schedule_buckets_skipped_total") == 0
    due = [s for s in await emitter.schedules.due(now, 500) if s.id == schedule.id]
    await emitter.handle(due)
    assert sample("conveyor_schedule_buckets_skipped_total") == 10
    assert sample("conveyor_schedule_fires_total") == 0, "a skipped bucket makes no job"
    moved = await emitter.schedules.get(schedule.id)
    assert moved is not None and moved.next_run is not None and moved.next_run > now
