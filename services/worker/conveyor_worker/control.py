"""WorkerControl: status, a status stream, pause, resume and drain of this worker process.

Admin keys only. The status stream sends the status at once and then after each change,
coalesced to at most `STATUS_INTERVAL` apart, so a busy worker does not flood watchers.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

from conveyor.errors import FieldViolation, InvalidArgument
from conveyor.server.auth import Authenticator, Principal
from conveyor.server.grpcserver import streaming, unary
from conveyor.v1 import worker_control_pb2 as pb
from conveyor.v1 import worker_control_pb2_grpc
from conveyor.worker.runner import Worker

STATUS_INTERVAL = 0.2
MAX_DRAIN_GRACE_SECONDS = 24 * 3600


def status_proto(worker: Worker) -> pb.WorkerStatus:
    return pb.WorkerStatus(
        worker_id=worker.worker_id,
        state=int(worker.state),  # type: ignore[arg-type]
        concurrency=worker.concurrency,
        running_jobs=[
            pb.RunningJob(job_id=job_id, type=r.claim.job.type, progress=r.progress)
            for job_id, r in worker.running.items()
        ],
        processed=worker.stats.processed,
        failed=worker.stats.failed,
        queues=worker.queues,
        host=socket.gethostname(),
        stale_writes=worker.recorder.stats.stale_writes,
        overrunning_handlers=worker.overrunning,
    )


class WorkerControlServicer(worker_control_pb2_grpc.WorkerControlServicer):
    def __init__(self, worker: Worker, auth: Authenticator) -> None:
        self.worker = worker
        self.auth = auth

    @unary
    async def GetWorkerStatus(
        self, request: pb.GetWorkerStatusRequest, principal: Principal
    ) -> pb.GetWorkerStatusResponse:
        principal.require_admin()
        return pb.GetWorkerStatusResponse(status=status_proto(self.worker))

    @streaming
    async def WatchWorkerStatus(
        self, request: pb.WatchWorkerStatusRequest, principal: Principal
    ) -> AsyncIterator[pb.WatchWorkerStatusResponse]:
        principal.require_admin()
        while True:
            changed = asyncio.ensure_future(self.worker.changed())
            status = status_proto(self.worker)
            yield pb.WatchWorkerStatusResponse(status=status)
            if status.state == pb.WORKER_STATE_STOPPED:
                changed.cancel()
                return
            await changed
            await asyncio.sleep(STATUS_INTERVAL)

    @unary
    async def PauseWorker(
        self, request: pb.PauseWorkerRequest, principal: Principal
    ) -> pb.PauseWorkerResponse:
        principal.require_admin()
        self.worker.pause()
        return pb.PauseWorkerResponse(status=status_proto(self.worker))

    @unary
    async def ResumeWorker(
        self, request: pb.ResumeWorkerRequest, principal: Principal
    ) -> pb.ResumeWorkerResponse:
        principal.require_admin()
        self.worker.resume()
        return pb.ResumeWorkerResponse(status=status_proto(self.worker))

    @unary
    async def DrainWorker(
        self, request: pb.DrainWorkerRequest, principal: Principal
    ) -> pb.DrainWorkerResponse:
        principal.require_admin()
        grace = request.grace.ToTimedelta().total_seconds() if request.HasField("grace") else None
        if grace is not None and not 0 <= grace <= MAX_DRAIN_GRACE_SECONDS:
            raise InvalidArgument(
                [FieldViolation("grace", f"must be 0 to {MAX_DRAIN_GRACE_SECONDS} seconds")]
            )
        self.worker.drain(self.worker.settings.shutdown_grace_seconds if grace is None else grace)
        return pb.DrainWorkerResponse(status=status_proto(self.worker))
