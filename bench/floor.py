"""The floor: what a bare grpc.aio server costs per call on this machine (issue 21).

`python -m bench.floor PORT` serves JobService on 127.0.0.1:PORT with nothing behind it:
SubmitJob, SubmitJobs and GetJob answer a canned job (a SubmitJob answer echoes the
request's type, queue and payload, as Conveyor's does), with Conveyor's generated stubs,
Conveyor's server options and uvloop. No auth, no validation, no store. The bench runs the
same client loops against it and against `conveyor api`, and divides their server CPU per
call: the ratio is what Conveyor's own work costs over the gRPC it cannot avoid.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import grpc
import psutil

from conveyor.embedded import free_port
from conveyor.server.grpcserver import run, server_options
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


async def serve(port: int) -> None:
    server = grpc.aio.server(options=server_options(4 * 2**20))
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
    run(lambda: serve(int(sys.argv[1])))
