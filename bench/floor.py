"""The floor: what a bare grpc.aio server costs per call on this machine (issue 21).

`python -m bench.floor PORT` serves JobService on 127.0.0.1:PORT with nothing behind it:
SubmitJob, SubmitJobs and GetJob answer a canned job (a SubmitJob answer echoes the
request's type, queue and payload, as Conveyor's does), with Conveyor's generated stubs,
Conveyor's server options and uvloop. No auth, no validation, no store. The bench runs the
same client loops against it and against `conveyor api`, and divides their server CPU per
call: the ratio is what Conveyor's own work costs over the gRPC it cannot avoid.

WatchJob answers the canned job (QUEUED) under the requested id, then, once CancelJob names
that id, the same job CANCELLED (one answer shared by the id's streams) and ends: the
floor of `watch_fanout`.

`--max-pending-calls N` sets the backlog gRPC core keeps for the loop to take up (see
`conveyor.server.grpcserver.server_options`); with gRPC's default, 1,000, thousands of
WatchJob streams opened at once end partly CANCELLED here too, before any servicer runs.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import grpc
import psutil

from conveyor.embedded import free_port
from conveyor.server.grpcserver import PENDING_CALLS, run, server_options
from conveyor.v1 import job_pb2, job_service_pb2_grpc
from conveyor.v1 import job_service_pb2 as pb

CANNED = job_pb2.Job(
    id="0192f1e2-7c4a-7b3e-9a41-5f1c2d3e4f50",
    owner="bench",
    type="noop",
    queue="parked",
    state=job_pb2.JOB_STATE_QUEUED,
    priority=5,
    max_attempts=3,
    idempotency_key="sdk-0192f1e27c4a7b3e",
)
CANNED.create_time.GetCurrentTime()
CANNED.run_at.GetCurrentTime()


def _echo(request: pb.SubmitJobRequest) -> job_pb2.Job:
    """The canned job with what a real answer would carry back of the request."""
    job = job_pb2.Job()
    job.CopyFrom(CANNED)
    job.type, job.queue, job.idempotency_key = request.type, request.queue, request.idempotency_key
    if request.HasField("payload"):
        job.payload.CopyFrom(request.payload)
    return job


class Floor(job_service_pb2_grpc.JobServiceServicer):
    def __init__(self) -> None:
        # Per watched id: set, with the shared final answer, by CancelJob.
        self._ends: dict[str, asyncio.Future[pb.WatchJobResponse]] = {}

    async def SubmitJob(
        self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SubmitJobResponse:
        return pb.SubmitJobResponse(job=_echo(request))

    async def SubmitJobs(
        self, request: pb.SubmitJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SubmitJobsResponse:
        return pb.SubmitJobsResponse(jobs=[_echo(r) for r in request.requests])

    async def GetJob(
        self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetJobResponse:
        return pb.GetJobResponse(job=CANNED)

    def _end(self, job_id: str) -> asyncio.Future[pb.WatchJobResponse]:
        end = self._ends.get(job_id)
        if end is None:
            end = self._ends[job_id] = asyncio.get_running_loop().create_future()
        return end

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchJobResponse]:
        job = job_pb2.Job()
        job.CopyFrom(CANNED)
        job.id = request.id
        yield pb.WatchJobResponse(sequence=1, job=job)
        yield await self._end(request.id)

    async def CancelJob(
        self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CancelJobResponse:
        job = job_pb2.Job()
        job.CopyFrom(CANNED)
        job.id, job.state = request.id, job_pb2.JOB_STATE_CANCELLED
        end = self._end(request.id)
        if not end.done():
            end.set_result(pb.WatchJobResponse(sequence=2, job=job))
        self._ends.pop(request.id, None)
        return pb.CancelJobResponse(job=job)


async def serve(port: int, max_pending_calls: int = PENDING_CALLS) -> None:
    server = grpc.aio.server(options=server_options(4 * 2**20, max_pending_calls=max_pending_calls))
    job_service_pb2_grpc.add_JobServiceServicer_to_server(Floor(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("serving", flush=True)
    await server.wait_for_termination()


@contextmanager
def floor_server(env: Mapping[str, str]) -> Iterator[tuple[psutil.Process, str]]:
    """The floor in a process of its own (so its CPU is its own): the process and address."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.floor", str(port)], env=dict(env), stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"serving\n"
        yield psutil.Process(proc.pid), f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("--max-pending-calls", type=int, default=PENDING_CALLS)
    args = parser.parse_args()
    run(lambda: serve(args.port, args.max_pending_calls))
