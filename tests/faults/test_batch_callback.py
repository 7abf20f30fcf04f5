"""A batch's callback runs exactly once however the batch's last jobs end (issue 25, item 2):
a batch of 1,000 jobs whose two workers are killed -9 and whose Redis is flushed while its
last jobs finish still ends with one callback run, after all 1,000, with their counts.

The callback is made with the batch (one row, in the submit's transaction) and released by
the one transaction that counts the batch's last end; the kill can strand that end before
its resolution, and the flush loses the released callback's place in line, which the
reconciler finds in both cases (conveyor.jobs.dependencies). Run with `-s` for the counts.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter

import grpc
import psycopg

from conveyor.db.bulk import psycopg_dsn
from conveyor.v1 import job_service_pb2 as pb
from conveyor.v1.job_service_pb2_grpc import JobServiceStub
from tests.faults.losses import LOSS_TIMINGS, LossStack, stop_all, wait_until
from tests.handlers import lines

QUEUE = "batchfault"
JOBS = 1000
# The fault comes once this many of the batch have ended: its last jobs are finishing.
FAULT_AT = 850


def ended_count(dsn: str, batch_id: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM jobs WHERE batch_id = %s AND state IN (4, 6, 7)", (batch_id,)
        ).fetchone()
    return int(row[0]) if row else 0


async def test_a_batch_callback_runs_once_through_killed_workers_and_a_flushed_redis(
    loss_stack: LossStack,
) -> None:
    """Guards the issue's acceptance test: 1,000 jobs and a callback; at 850 ended, both
    workers are killed -9 and Redis is flushed, and two new workers start. Every job
    succeeds, the callback job exists once, ran once (its log), after all 1,000, and its
    payload counts the 1,000."""
    env = loss_stack
    stack = env.stack
    stack.env.update(LOSS_TIMINGS)
    stack.start("api")
    workers = [
        stack.start("worker", "--queues", QUEUE, "--concurrency", "4", env=stack.worker_env())
        for _ in range(2)
    ]
    stack.start("scheduler")
    key = stack.create_key("batchfault")
    rng = random.Random(25)
    requests = [
        pb.SubmitJobRequest(
            type="test.touch", queue=QUEUE, max_attempts=10, idempotency_key=uuid.uuid4().hex
        )
        for _ in range(JOBS)
    ]
    for request in requests:
        request.payload.update({"log": str(env.run_log), "seconds": rng.uniform(0.005, 0.02)})
    callback = pb.SubmitJobRequest(type="test.effect", queue=QUEUE, max_attempts=10)
    callback.payload.update({"log": str(env.run_log)})
    call = pb.SubmitJobsRequest(requests=requests, on_complete=callback, view=pb.JOB_VIEW_BASIC)
    async with grpc.aio.insecure_channel(stack.api_addr) as channel:
        made = await JobServiceStub(channel).SubmitJobs(
            call, metadata=(("authorization", f"Bearer {key}"),)
        )
    batch, ids = made.batch, [j.id for j in made.jobs]
    dsn = psycopg_dsn(env.database_url)

    async def most_ended() -> bool:
        return ended_count(dsn, batch.id) >= FAULT_AT

    assert await wait_until(stack, most_ended, 120, 0.05)
    for worker in workers:
        worker.kill()
    env.client().flushall()
    at_fault = ended_count(dsn, batch.id)
    for _ in range(2):
        stack.start("worker", "--queues", QUEUE, "--concurrency", "4", env=stack.worker_env())

    def callback_row() -> tuple[int, dict[str, object], int]:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT state, payload, finish_time FROM jobs WHERE id = %s",
                (batch.callback_job_id,),
            ).fetchone()
        assert row is not None
        return int(row[0]), dict(row[1]), int(row[2] or 0)

    async def callback_done() -> bool:
        return callback_row()[0] == 4

    assert await wait_until(stack, callback_done, 150), callback_row()
    stop_all(stack)
    with psycopg.connect(dsn) as conn:
        callbacks = conn.execute(
            "SELECT count(*) FROM batches WHERE id = %s", (batch.id,)
        ).fetchone()
        members = conn.execute(
            "SELECT state, count(*), max(finish_time) FROM jobs WHERE batch_id = %s AND id <> %s "
            "GROUP BY state",
            (batch.id, batch.callback_job_id),
        ).fetchall()
        started = conn.execute(
            "SELECT start_time FROM jobs WHERE id = %s", (batch.callback_job_id,)
        ).fetchone()
    assert callbacks == (1,)
    assert [(int(s), int(n)) for s, n, _ in members] == [(4, JOBS)]
    assert started is not None and int(started[0]) >= int(members[0][2])
    logged = [line.split() for line in lines(env.run_log)]
    callback_runs = [words for words in logged if words[:2] == ["started", batch.callback_job_id]]
    member_runs = Counter(words[0] for words in logged if len(words) == 2)
    assert len(callback_runs) == 1, callback_runs
    _, payload, _ = callback_row()
    document = payload["batch"]
    assert isinstance(document, dict)
    assert document["counts"] == {"succeeded": JOBS, "dead": 0, "cancelled": 0}
    assert sorted(document["job_ids"]) == sorted(ids)
    print(
        f"\nbatch callback: {JOBS} jobs, fault at {at_fault} ended (2 workers killed -9, "
        f"redis flushed); {sum(member_runs.values()) - JOBS} member re-runs; callback ran "
        f"{len(callback_runs)} time(s)"
    )
