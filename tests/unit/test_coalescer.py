"""The SDK's group commit (`conveyor.client._calls.Coalescer`) on its own: a free slot is
the caller's at once (no timer), tries that arrive while every slot flies queue and leave
as one batch, a caller that left is not sent, and a batch keeps within its merge's item
and byte limits; a batch answers each caller alone (its share of the answer, or its own
error) and a failure of the whole call reaches every caller."""

from __future__ import annotations

import asyncio
from concurrent import futures
from typing import Any

import pytest

from conveyor.client._calls import Batch, Coalescer, Waiting
from conveyor.client._client import SUBMIT_EACH, SUBMIT_JOB, _Calls
from conveyor.errors import InvalidArgument, NotFound, status_of
from conveyor.v1 import job_pb2
from conveyor.v1 import job_service_pb2 as pb


def waiting(payload_bytes: int = 0) -> Waiting:
    """A waiting `submit`, as the client makes it."""
    payload = {"pad": "x" * payload_bytes} if payload_bytes else None
    return Waiting(_Calls.submit("noop", payload), deadline=float("inf"), waiter=futures.Future())


def answer_of(item: Waiting) -> futures.Future[Any]:
    """Where the (blocking) caller of `item` waits."""
    assert isinstance(item.waiter, futures.Future)
    return item.waiter


def test_a_free_slot_is_the_callers_and_the_rest_leave_as_one_batch() -> None:
    """One slot: the first try is sent by its caller; the next three queue and leave
    together when it ends, as one SubmitJobs; once nothing waits the slot is free again."""
    coalescer = Coalescer(slots=1, max_bytes=1 << 20)
    assert coalescer.enter(waiting())
    queued = [waiting() for _ in range(3)]
    assert not any(coalescer.enter(item) for item in queued)
    batch = coalescer.leave()
    assert batch is not None and batch.items == queued
    assert batch.rpc is SUBMIT_EACH.rpc
    request = batch.request()
    assert isinstance(request, pb.SubmitJobsRequest) and request.partial_success
    assert len(request.requests) == 3
    assert coalescer.leave() is None
    assert coalescer.enter(waiting())


def test_a_caller_that_left_is_not_sent_and_a_lone_one_goes_as_its_own_call() -> None:
    coalescer = Coalescer(slots=1, max_bytes=1 << 20)
    assert coalescer.enter(waiting())
    gone, kept = waiting(), waiting()
    coalescer.enter(gone)
    coalescer.enter(kept)
    gone.waiter.cancel()
    batch = coalescer.leave()
    assert batch is not None and batch.items == [kept]
    assert batch.rpc is SUBMIT_JOB and batch.request() is kept.call.request


def test_a_batch_keeps_within_the_byte_limit() -> None:
    coalescer = Coalescer(slots=1, max_bytes=3000)
    assert coalescer.enter(waiting())
    for _ in range(5):
        coalescer.enter(waiting(payload_bytes=1000))
    sizes = []
    while (batch := coalescer.leave()) is not None:
        sizes.append(len(batch.items))
    assert sizes == [2, 2, 1]


def test_each_caller_gets_its_share_or_its_error() -> None:
    """A per-item answer: the job (the caller's submit puts its payload back from the
    request, which the basic view left out) or the error its SubmitJob alone would raise;
    a whole failure: all."""
    items = [waiting(), waiting(payload_bytes=10)]
    refused = InvalidArgument([], "invalid request: priority: must be 0-9")
    answer = pb.SubmitJobsResponse(
        results=[
            pb.SubmitJobsResult(error=status_of(refused)),
            pb.SubmitJobsResult(job=job_pb2.Job(id="j-2")),
        ]
    )
    Batch(items).settle(answer)
    with pytest.raises(InvalidArgument, match="priority"):
        answer_of(items[0]).result()
    job = items[1].call.extract(answer_of(items[1]).result())
    assert job.id == "j-2" and job.payload == {"pad": "x" * 10}

    again = [waiting(), waiting()]
    failure = NotFound("gone")
    Batch(again).fail(failure)
    assert all(answer_of(item).exception() is failure for item in again)


async def test_a_batch_cancelled_as_a_whole_cancels_its_waiting_callers() -> None:
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Any] = loop.create_future()
    item = waiting()
    item.waiter = waiter
    Batch([item]).fail(asyncio.CancelledError())
    assert waiter.cancelled()
