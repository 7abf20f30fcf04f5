"""`AsyncWorkerControl`: WorkerControl of one worker process, on that worker's own port.

Each worker serves WorkerControl itself (admin keys only) and announces where in
ListWorkers' `control_address`:

    async with AsyncClient(api_addr, api_key=key) as client:
        for worker in await client.workers():
            async with AsyncWorkerControl(worker.control_address, api_key=key) as control:
                await control.pause()

It sends its calls through an `AsyncClient` made for the worker's address, so the channel
(TLS from `tls` or `CONVEYOR_TLS*`, tracing), the key's metadata and the mapping of failures
to `conveyor.errors` are the API client's own: an unreachable worker is `Unavailable`, a
user key `PermissionDenied`. No call is retried (a control call is the operator's to repeat),
so an unreachable worker fails at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
from google.protobuf.duration_pb2 import Duration

from conveyor.client._calls import Service
from conveyor.client._client import AsyncClient
from conveyor.tls import ClientTls
from conveyor.v1 import worker_control_pb2 as wpb
from conveyor.v1.worker_control_pb2_grpc import WorkerControlStub

CONTROL = Service(wpb.DESCRIPTOR.services_by_name["WorkerControl"], WorkerControlStub)
GET_STATUS = CONTROL.rpc("GetWorkerStatus", wpb.GetWorkerStatusRequest, wpb.GetWorkerStatusResponse)
WATCH_STATUS = CONTROL.rpc(
    "WatchWorkerStatus", wpb.WatchWorkerStatusRequest, wpb.WatchWorkerStatusResponse
)
PAUSE = CONTROL.rpc("PauseWorker", wpb.PauseWorkerRequest, wpb.PauseWorkerResponse)
RESUME = CONTROL.rpc("ResumeWorker", wpb.ResumeWorkerRequest, wpb.ResumeWorkerResponse)
DRAIN = CONTROL.rpc("DrainWorker", wpb.DrainWorkerRequest, wpb.DrainWorkerResponse)


class AsyncWorkerControl:
    """WorkerControl of the worker at `address` (its announced `control_address`). Use as
    `async with AsyncWorkerControl(...) as control`. `api_key`, `timeout` (per call), `tls`
    and `channel` as for `AsyncClient`. Every method returns the worker's `WorkerStatus`
    as it answered (`conveyor.v1.worker_control_pb2.WorkerStatus`)."""

    def __init__(
        self,
        address: str,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        tls: ClientTls = None,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        if not address and channel is None:
            raise ValueError(
                "no address to dial: a worker older than control_address announces none"
            )
        self.address = address
        self._client = AsyncClient(
            address,
            api_key=api_key,
            timeout=timeout,
            tls=tls,
            channel=channel,
            submit_retry=None,
            batch_submits=False,
        )

    async def __aenter__(self) -> AsyncWorkerControl:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel (and so a `watch_status` still open on it)."""
        await self._client.close()

    async def status(self) -> wpb.WorkerStatus:
        """The worker's status now: state, concurrency, running jobs, counters."""
        call = GET_STATUS.call(wpb.GetWorkerStatusRequest(), lambda a: a.status)
        return await self._client._run(call)

    def watch_status(self) -> AsyncIterator[wpb.WorkerStatus]:
        """The status now, then after every change (a few a second at most), until the
        worker stops; the call is cancelled when the caller stops iterating."""
        stream = WATCH_STATUS.stream(wpb.WatchWorkerStatusRequest(), lambda a: a.status)
        return self._client._stream(stream)

    async def pause(self) -> wpb.WorkerStatus:
        """Claim nothing new; running jobs go on."""
        return await self._client._run(PAUSE.call(wpb.PauseWorkerRequest(), lambda a: a.status))

    async def resume(self) -> wpb.WorkerStatus:
        """Claim again after a pause."""
        return await self._client._run(RESUME.call(wpb.ResumeWorkerRequest(), lambda a: a.status))

    async def drain(self, grace: timedelta | None = None) -> wpb.WorkerStatus:
        """Claim nothing new and exit once the running jobs end; those still running after
        `grace` (None: the worker's CONVEYOR_SHUTDOWN_GRACE_SECONDS) are stopped and their
        jobs given back to other workers at once."""
        request = wpb.DrainWorkerRequest()
        if grace is not None:
            request.grace.CopyFrom(_duration(grace))
        return await self._client._run(DRAIN.call(request, lambda a: a.status))


def _duration(value: timedelta) -> Duration:
    duration = Duration()
    duration.FromTimedelta(value)
    return duration
