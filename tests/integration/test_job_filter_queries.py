"""ListJobs filters (conveyor.jobs.filters compiled by conveyor.db.job_filters) run on a
real PostgreSQL and a real SQLite: each field and operator selects exactly the jobs it
says, on both databases alike; RUNNING comes from the ids the caller knows run; a filtered
listing pages by id like an unfiltered one; and values travel as bound parameters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pytest
from sqlalchemy import Table, update

from conveyor.db import Database, JobStore
from conveyor.db.jobs import SCAN_WINDOW
from conveyor.db.models import JobRow
from conveyor.jobs.filters import parse
from conveyor.jobs.model import FALLBACK_RETRY, Job, JobDefaults, JobSpec, JobState, now_ms

pytestmark = pytest.mark.usefixtures("clean")

_JOBS = cast(Table, JobRow.__table__)
DEFAULTS = JobDefaults(3, 1000, FALLBACK_RETRY)
STEP = 1000
# Jobs are made "created" a little before now, in whole seconds: within ID_CLOCK_SLACK_MS
# of their ids' own times, as submitted jobs are.
T0 = (now_ms() // 1000 - 30) * 1000


@pytest.fixture(autouse=True)
def fresh_t0() -> None:
    """T0 is taken as each test starts: job ids are made when the job is inserted, and a
    listing's time bounds allow their times only ID_CLOCK_SLACK_MS of difference from the
    create times, which a T0 taken at collection, minutes earlier in a long run, exceeds."""
    global T0
    T0 = (now_ms() // 1000 - 30) * 1000


def at(ms: int, zone: timezone = UTC) -> str:
    """An RFC 3339 time for a filter."""
    return datetime.fromtimestamp(ms / 1000, zone).isoformat()


class Jobs:
    """Named jobs in the store, each made with the columns a test sets (labels and the
    rest written to the row directly: the submit path is not what is tested here)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.store = JobStore(db)
        self.names: dict[str, str] = {}

    async def add(
        self,
        name: str,
        *,
        owner: str = "alice",
        queue: str = "default",
        type: str = "noop",
        payload: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None,
        created: int | None = None,  # None: T0
        **row: Any,
    ) -> Job:
        spec = JobSpec(type=type, queue=queue, payload=payload or {})
        job = spec.new_job(owner, defaults=DEFAULTS, now=T0 if created is None else created)
        await self.store.insert([job])
        values = {"labels": labels or {}, **row}
        async with self.db.engine.begin() as conn:
            await conn.execute(update(_JOBS).where(_JOBS.c.id == job.id).values(**values))
        self.names[job.id] = name
        return job

    async def matching(
        self, text: str, *, owner: str | None = None, running: tuple[str, ...] = (), **kw: Any
    ) -> list[str]:
        """Names of the jobs `text` lists (newest first), all pages of 2 walked."""
        found: list[str] = []
        before = None
        while True:
            page = await self.store.list_jobs(
                owner, filter=parse(text), running=running, limit=2, before_id=before, **kw
            )
            found += [self.names[j.id] for j in page]
            if len(page) < 2:
                return found
            before = page[-1].id


@pytest.fixture
async def jobs(db: Database) -> Jobs:
    """Four jobs; on PostgreSQL, label and payload filters look at the newest two by id
    before they ask the GIN index, so both halves of JobStore._recent_then_indexed run."""
    made = Jobs(db)
    made.store.scan_window = 2
    await made.add(
        "a",
        labels={"team": "billing", "env": "prod"},
        payload={"customer": {"id": 42, "tier": "gold"}, "retry": True, "note": None},
        state=int(JobState.SUCCEEDED),
        finish_time=T0 + 2 * STEP,
        error="",
    )
    await made.add(
        "b",
        queue="emails",
        type="email.send",
        labels={"team": "billing"},
        payload={"customer": {"id": 7}, "amount": 1.5, "retry": False},
        state=int(JobState.DEAD),
        finish_time=T0 + 3 * STEP,
        error="SMTP said: 550 Mailbox UNAVAILABLE",
        created=T0 + STEP,
    )
    await made.add(
        "c",
        labels={"team": "search", "app.kubernetes.io": "web"},
        payload={"customer": {"id": "42"}, "count": 3},
        state=int(JobState.QUEUED),
        created=T0 + 2 * STEP,
    )
    await made.add(
        "d",
        owner="bob",
        payload={"count": 3.0},
        state=int(JobState.RETRYING),
        error="timed out after 30s",
        created=T0 + 3 * STEP,
    )
    return made


async def test_each_field_and_operator_selects_what_it_says(jobs: Jobs) -> None:
    """Guards the compiled SQL of every field: the same answers on PostgreSQL (JSONB
    containment, ILIKE) and SQLite (json_type/json_extract, LIKE); a missing label,
    payload key or finish time is "not equal", never unknown."""
    expect = {
        "state = SUCCEEDED": ["a"],
        "state != DEAD": ["d", "c", "a"],
        "state = QUEUED OR state = RETRYING": ["d", "c"],
        "queue = emails": ["b"],
        "type = noop AND -queue = emails": ["d", "c", "a"],
        "owner = bob": ["d"],
        "labels.team = billing": ["b", "a"],
        'labels.team = "billing" labels.env = prod': ["a"],
        "labels.team != billing": ["d", "c"],
        "labels.env:*": ["a"],
        "NOT labels.env:*": ["d", "c", "b"],
        "labels.app.kubernetes.io = web": ["c"],
        "payload.customer.id = 42": ["a"],
        'payload.customer.id = "42"': ["c"],
        "payload.customer.id != 42": ["d", "c", "b"],
        "payload.customer.tier = gold": ["a"],
        "payload.retry = true": ["a"],
        "payload.retry = false": ["b"],
        "payload.note = null": ["a"],
        "payload.amount = 1.5": ["b"],
        "payload.count = 3": ["d", "c"],
        'error:"mailbox unavailable"': ["b"],
        "error:TIMED": ["d"],
        "-error:timed": ["c", "b", "a"],
        f"create_time >= {at(T0 + STEP)}": ["d", "c", "b"],
        f'create_time < "{at(T0 + STEP)}"': ["a"],
        f"create_time = {at(T0 + 2 * STEP)}": ["c"],
        f"create_time > {at(T0 + STEP, timezone(timedelta(hours=1)))}": ["d", "c"],
        f"create_time > {at(T0)} create_time <= {at(T0 + 2 * STEP)}": ["c", "b"],
        f"finish_time <= {at(T0 + 2 * STEP)}": ["a"],
        f"finish_time > {at(T0)}": ["b", "a"],
        f"finish_time != {at(T0 + 3 * STEP)}": ["d", "c", "a"],
        "labels.team = billing AND state = DEAD OR owner = bob": ["b"],
        "labels.team = billing OR owner = bob": ["d", "b", "a"],
        "(labels.team = billing OR owner = bob) AND -state = DEAD": ["d", "a"],
    }
    for text, names in expect.items():
        assert await jobs.matching(text) == names, text
    jobs.store.scan_window = SCAN_WINDOW  # more than there are jobs: one statement
    for text in ("labels.team = billing", "payload.count = 3", "NOT labels.env:*"):
        assert await jobs.matching(text) == expect[text], text
    assert await jobs.matching("labels.team = billing", owner="bob") == []
    assert await jobs.matching("state != SUCCEEDED", owner="alice", queue="default") == ["c"]


async def test_running_comes_from_the_ids_given(jobs: Jobs) -> None:
    """Guards the true state in lists: rows of running jobs say QUEUED or RETRYING, so
    `state = RUNNING` lists the ids the caller knows run, and QUEUED/RETRYING leave them
    out."""
    by_name = {name: job_id for job_id, name in jobs.names.items()}
    running = (by_name["c"], by_name["d"], "0000-not-a-job")
    assert await jobs.matching("state = RUNNING", running=running) == ["d", "c"]
    assert await jobs.matching("state = QUEUED", running=running) == []
    assert await jobs.matching("state = RETRYING") == ["d"]
    assert await jobs.matching("state != RUNNING", running=running) == ["b", "a"]
    assert await jobs.matching("state = RUNNING") == []
    assert await jobs.matching("-state = RUNNING", running=(by_name["c"],)) == ["d", "b", "a"]


async def test_a_filtered_listing_pages_by_id(db: Database) -> None:
    """Guards keyset paging with a filter: every match once, newest first, whatever the
    page size; jobs added between pages (newer ids) do not shift the pages after them."""
    made = Jobs(db)
    for i in range(12):
        await made.add(f"j{i}", labels={"even": str(i % 2 == 0).lower()}, created=T0 + i)
    evens = [f"j{i}" for i in range(10, -1, -2)]
    store, even = made.store, parse("labels.even = true")
    store.scan_window = 3  # pages end inside the newest three jobs, and beyond them
    late: list[str] = []
    for size in (1, 2, 5, 50):
        expected = late[::-1] + evens  # those added by earlier walks are the newest
        seen: list[str] = []
        before = None
        while page := await store.list_jobs(None, filter=even, limit=size, before_id=before):
            seen += [made.names[j.id] for j in page]
            before = page[-1].id
            late.append(f"late{len(seen)}-{size}")
            await made.add(late[-1], labels={"even": "true"})
        assert seen == expected, size


async def test_values_are_bound_parameters(jobs: Jobs) -> None:
    """Guards against SQL built from text: quotes, LIKE wildcards and backslashes in a
    value match only themselves on both databases."""
    tricky = 'it\'s "50%" off_\\'
    await jobs.add("q", labels={"note": tricky}, error=f"said {tricky}")
    await jobs.add("r", labels={"note": "its 50 off"}, error="said it's 500 offX")
    assert await jobs.matching(r'labels.note = "it\'s \"50%\" off_\\"') == ["q"]
    assert await jobs.matching(r"labels.note = 'it\'s \"50%\" off_\\'") == ["q"]
    assert await jobs.matching(r'error:"\"50%\" off_"') == ["q"]
    assert await jobs.matching('error:"%"') == ["q"]
    assert await jobs.matching("labels.note != \"x' OR '1'='1\"") == ["r", "q", "d", "c", "b", "a"]
    assert await jobs.matching("labels.note = \"x' OR '1'='1\"") == []
