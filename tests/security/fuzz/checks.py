"""What every fuzz test checks afterwards: the api is up and healthy, its log holds no
traceback, and the database holds exactly the accepted jobs (no partial record)."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections import Counter
from typing import Any

import grpc
import psycopg
import redis
from google.protobuf import text_format
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conveyor.db.bulk import psycopg_dsn
from conveyor.redis.keys import QueueKeys
from conveyor.v1 import job_service_pb2 as pb
from conveyor.v1 import job_service_pb2_grpc
from tests.processes import ROOT, Service
from tests.security.fuzz.engine import Engine
from tests.security.fuzz.ledger import FuzzStack
from tests.security.fuzz.rpcs import (
    CALL_TIMEOUT,
    OWNERS,
    VALID_QUEUES,
    VALID_TYPES,
    Code,
    Failure,
    bearer,
    make_probe,
)

# -- checks -------------------------------------------------------------------------------


def describe(request: Message | None, body: bytes) -> str:
    if request is None:
        return f"raw bytes ({len(body)}): {body[:120]!r}"
    text = text_format.MessageToString(request, as_one_line=True, as_utf8=True)
    return text if len(text) <= 400 else text[:400] + f"... ({len(body)} bytes)"


NUMBERS = re.compile(r"-?\d+")
EXCEPTION_LINE = re.compile(r"^(?:[a-z_]+\.)*[A-Z]\w*(?:Error|Exception|Nesting|Character)\b")
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\dT", re.M)
PROJECT_FRAME = re.compile(
    rf'File "{re.escape(str(ROOT))}/((?:src|services)/[^"]+)", line (\d+), in (\w+)'
)


def log_errors(api: Service) -> Counter[str]:
    """The api log's tracebacks, by exception (numbers elided) and the deepest frame of
    Conveyor's own code."""
    text = api.log.read_text(errors="replace") if api.log.exists() else ""
    found: Counter[str] = Counter()
    starts = [m.start() for m in RECORD_START.finditer(text)] + [len(text)]
    for begin, end in itertools.pairwise(starts):
        record = text[begin:end]
        if "Traceback (most recent call last)" not in record:
            continue
        raised = [line for line in record.splitlines() if EXCEPTION_LINE.match(line)]
        last = raised[-1] if raised else record.strip().splitlines()[-1]
        frames = PROJECT_FRAME.findall(record)
        where = ":".join(frames[-1]) if frames else "grpc (no Conveyor frame)"
        found[f"{NUMBERS.sub('N', last)[:150]} at {where}"] += 1
    return found


def report(failures: list[Failure], api: Service) -> str:
    """Failures grouped by RPC and answer, with the tags all of a group's requests share,
    the smallest request of the group, and the api log's tracebacks by kind and place."""
    groups: dict[tuple[str, str], list[Failure]] = {}
    for failure in failures:
        groups.setdefault((failure.probe.rpc, failure.code), []).append(failure)
    lines = []
    for (rpc, code), items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        common = set.intersection(*(set(f.probe.tags) for f in items))
        counts = Counter(t for f in items for t in f.probe.tags).most_common(6)
        smallest = min(items, key=lambda f: len(f.probe.body))
        lines.append(
            f"{len(items)} x {rpc} -> {code} (expected "
            f"{'/'.join(sorted(c.name for c in smallest.probe.expected))}); shared tags "
            f"{sorted(common)}; frequent {counts}\n"
            f"    smallest ({smallest.probe.caller}): "
            f"{describe(smallest.probe.request, smallest.probe.body)}\n"
            f"    details: {smallest.details!r}"
        )
        # Valid submissions answered wrongly: refused for what other requests carried.
        innocent = [
            f
            for f in items
            if f.probe.rpc.startswith("Submit") and Code.INVALID_ARGUMENT not in f.probe.expected
        ]
        if innocent:
            example = min(innocent, key=lambda f: len(f.probe.body))
            lines.append(
                f"    of which {len(innocent)} to valid requests with nothing hostile in them, "
                f"e.g. {describe(example.probe.request, example.probe.body)}"
            )
    errors = log_errors(api)
    if errors:
        lines.append(f"api log: {sum(errors.values())} logged tracebacks:")
        lines += [f"  {n:5d} x {what}" for what, n in errors.most_common(15)]
    return "\n".join(lines)


async def healthy(addr: str) -> bool:
    async with grpc.aio.insecure_channel(addr) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


JOB_COLUMNS = (
    "id, owner, type, queue, state, priority, payload, max_attempts, timeout_ms, "
    "run_at, create_time, retry, attempt"
)


def partial_records(fuzz: FuzzStack) -> list[str]:
    """Every row in `jobs` must be a complete job some call was told was accepted, and every
    accepted job must be in the database and in Redis (nothing runs here, nothing expires)."""
    problems: list[str] = []
    with psycopg.connect(psycopg_dsn(fuzz.database_url)) as conn:
        rows = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs").fetchall()
        attempts = conn.execute("SELECT count(*) FROM job_attempts").fetchone()
        # No call is in flight now, so a connection inside a transaction for seconds was
        # left there, and nothing it writes from now on is ever committed. (A health check's
        # `SELECT 1` is inside its transaction for a millisecond, once a second.)
        stuck = conn.execute(
            "SELECT pid, xact_start, left(query, 80) "
            "FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%' "
            "AND xact_start < now() - interval '3 seconds'"
        ).fetchall()
    stored: dict[str, tuple[Any, ...]] = {row[0]: row for row in rows}
    accepted = fuzz.ledger.jobs
    for job_id in stored.keys() - accepted.keys():
        problems.append(f"row {job_id} was never accepted: {stored[job_id][:4]}")
    for job_id in accepted.keys() - stored.keys():
        problems.append(f"accepted job {job_id} has no row (told by {accepted[job_id].via})")
    for (
        job_id,
        owner,
        type_,
        queue,
        state,
        priority,
        payload,
        max_attempts,
        timeout_ms,
        run_at,
        create_time,
        retry,
        attempt,
    ) in rows:
        bad = []
        if not 1 <= state <= 7:
            bad.append(f"state {state}")
        if not (owner and type_ and queue) or owner not in OWNERS:
            bad.append(f"owner/type/queue {owner!r}/{type_!r}/{queue!r}")
        if not isinstance(payload, dict):
            bad.append(f"payload {type(payload).__name__}")
        if not max_attempts >= 1 or not 0 <= priority <= 9 or not timeout_ms > 0:
            bad.append(f"max_attempts {max_attempts} priority {priority} timeout {timeout_ms}")
        if not (create_time > 0 and run_at > 0 and isinstance(retry, dict) and attempt == 0):
            bad.append(f"times {create_time}/{run_at} retry {retry} attempt {attempt}")
        mine = accepted.get(job_id)
        if mine is not None and (mine.owner, mine.type, mine.queue) != (owner, type_, queue):
            bad.append(f"accepted as {mine}, stored as {(owner, type_, queue)}")
        if bad:
            problems.append(f"row {job_id} incomplete: {'; '.join(bad)}")
    for pid, since, query in stuck:
        problems.append(
            f"database connection {pid} is idle inside a transaction begun at {since:%H:%M:%S} "
            f"(last statement {query!r}): nothing it writes is committed"
        )
    if attempts is not None and attempts[0]:
        problems.append(f"{attempts[0]} attempt rows, but nothing ran")
    client = redis.Redis.from_url(fuzz.redis_url, decode_responses=True)
    try:
        ids = list(accepted)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            pipe = client.pipeline(transaction=False)
            for job_id in chunk:
                pipe.hmget(QueueKeys(accepted[job_id].queue).job(job_id), "owner", "state")
            for job_id, (owner, state) in zip(chunk, pipe.execute(), strict=True):
                if owner != accepted[job_id].owner or not state or not 1 <= int(state) <= 7:
                    problems.append(
                        f"accepted job {job_id} missing or wrong in redis: {owner!r} {state!r}"
                    )
    finally:
        client.close()
    return problems


async def walk_pages(
    addr: str, meta: tuple[tuple[str, str], ...], first: pb.ListJobsRequest
) -> tuple[list[int], list[str]]:
    """Every page of a listing through its tokens: the pages' sizes and the jobs' ids."""
    sizes, ids = [], []
    request = pb.ListJobsRequest()
    request.CopyFrom(first)
    options = [("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(addr, options=options) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        while True:
            reply = await stub.ListJobs(request, metadata=meta, timeout=CALL_TIMEOUT)
            sizes.append(reply.ByteSize())
            ids += [job.id for job in reply.jobs]
            if not reply.next_page_token:
                return sizes, ids
            request.page_token = reply.next_page_token


async def check_survived(fuzz: FuzzStack, engine: Engine, what: str) -> None:
    """The api is alive and healthy, the answers were right, its log holds no traceback
    (hostile input is refused, not logged as a fault), and no partial record appeared since
    the previous check (the last test checks them all); prints the counts either way."""
    crashed = fuzz.api.proc.poll() is not None
    serving = not crashed and await healthy(fuzz.stack.api_addr)
    found = await asyncio.to_thread(partial_records, fuzz)
    problems = [p for p in found if p not in fuzz.ledger.reported]  # new since the last test
    fuzz.ledger.reported.update(problems)
    print(
        f"\n{what}: {engine.sent} requests ({engine.raw} raw), codes {dict(engine.codes)}, "
        f"{len(engine.failures)} wrong answers, {int(crashed)} server crashes, "
        f"{len(problems)} new partial records ({len(found)} in all, "
        f"{len(fuzz.ledger.jobs)} jobs accepted so far)"
    )
    messages = []
    if engine.failures:
        messages.append(
            f"{len(engine.failures)} wrong answers:\n{report(engine.failures, fuzz.api)}"
        )
    if crashed or not serving:
        messages.append(f"api {'exited' if crashed else 'not SERVING'}:\n{fuzz.api.tail(60)}")
    if problems:
        messages.append(f"{len(problems)} partial records:\n" + "\n".join(problems[:20]))
    tracebacks = log_errors(fuzz.api)
    if tracebacks and not engine.failures:  # with failures, `report` lists them already
        messages.append(
            f"api log: {sum(tracebacks.values())} logged tracebacks:\n"
            + "\n".join(f"  {n:5d} x {what}" for what, n in tracebacks.most_common(15))
        )
    if messages:
        print("\n".join(messages))
    assert not messages, "\n\n".join(messages)


async def seed(engine: Engine, fuzz: FuzzStack) -> None:
    """A few jobs and page tokens per owner, so ids and tokens exist to be reused."""
    fuzz.ledger.seeded = True
    items = []
    for owner in OWNERS:
        for i in range(12):
            request = pb.SubmitJobRequest(type=VALID_TYPES[i % 3], queue=VALID_QUEUES[i % 3])
            items.append(
                make_probe("SubmitJob", request, owner, bearer(fuzz.keys[owner]), ["seed"])
            )
    await engine.run_list(items)
    items = []
    for owner in OWNERS:
        for queue in VALID_QUEUES[:3]:
            listing = pb.ListJobsRequest(queue=queue, page_size=1)
            items.append(make_probe("ListJobs", listing, owner, bearer(fuzz.keys[owner]), ["seed"]))
    await engine.run_list(items)
