"""ScheduleService: decode the request, call ScheduleOperations, encode the answer."""

from __future__ import annotations

from conveyor.api.schedules import ScheduleOperations
from conveyor.server.auth import Authenticator, Principal
from conveyor.server.grpcserver import unary
from conveyor.v1 import schedule_service_pb2 as pb
from conveyor.v1 import schedule_service_pb2_grpc


class ScheduleServicer(schedule_service_pb2_grpc.ScheduleServiceServicer):
    def __init__(self, ops: ScheduleOperations, auth: Authenticator) -> None:
        self.ops = ops
        self.auth = auth

    @unary
    async def CreateSchedule(
        self, request: pb.CreateScheduleRequest, principal: Principal
    ) -> pb.CreateScheduleResponse:
        made = await self.ops.create(principal, request.schedule)
        return pb.CreateScheduleResponse(schedule=made.to_proto())

    @unary
    async def GetSchedule(
        self, request: pb.GetScheduleRequest, principal: Principal
    ) -> pb.GetScheduleResponse:
        found = await self.ops.get(principal, request.id)
        return pb.GetScheduleResponse(schedule=found.to_proto())

    @unary
    async def ListSchedules(
        self, request: pb.ListSchedulesRequest, principal: Principal
    ) -> pb.ListSchedulesResponse:
        found, token = await self.ops.list_schedules(
            principal, request.page_size, request.page_token, request.owner
        )
        return pb.ListSchedulesResponse(
            schedules=[s.to_proto() for s in found], next_page_token=token
        )

    @unary
    async def DeleteSchedule(
        self, request: pb.DeleteScheduleRequest, principal: Principal
    ) -> pb.DeleteScheduleResponse:
        await self.ops.delete(principal, request.id)
        return pb.DeleteScheduleResponse()

    @unary
    async def PauseSchedule(
        self, request: pb.PauseScheduleRequest, principal: Principal
    ) -> pb.PauseScheduleResponse:
        paused = await self.ops.pause(principal, request.id)
        return pb.PauseScheduleResponse(schedule=paused.to_proto())

    @unary
    async def ResumeSchedule(
        self, request: pb.ResumeScheduleRequest, principal: Principal
    ) -> pb.ResumeScheduleResponse:
        resumed = await self.ops.resume(principal, request.id)
        return pb.ResumeScheduleResponse(schedule=resumed.to_proto())

    @unary
    async def TriggerSchedule(
        self, request: pb.TriggerScheduleRequest, principal: Principal
    ) -> pb.TriggerScheduleResponse:
        job = await self.ops.trigger(principal, request.id)
        return pb.TriggerScheduleResponse(job=job.to_proto())
