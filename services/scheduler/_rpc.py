"""SchedulerService over Connect/gRPC: a thin translation onto `Scheduler`."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from connectrpc.request import RequestContext
from google.protobuf import duration_pb2

from ironflow.services.core.errors import invalid_argument
from ironflow.services.core.protojson import duration_seconds
from ironflow.v1 import runs_pb2
from ironflow.v1.runs_connect import SchedulerService

from ._scheduler import Scheduler

Ctx = RequestContext[Any, Any]
DEFAULT_WAIT = timedelta(seconds=30)
MAX_WAIT = timedelta(minutes=5)


def wait_timeout(requested: duration_pb2.Duration | None) -> timedelta:
    """How long a caller may wait for runs (WaitForRuns, EmitSync): [30s], at most 5 minutes."""
    if requested is None:
        return DEFAULT_WAIT
    seconds = duration_seconds(requested)
    if not 0 <= seconds <= MAX_WAIT.total_seconds():
        raise invalid_argument("timeout", f"must be between 0 and {MAX_WAIT.total_seconds():g}s")
    return timedelta(seconds=seconds)


class SchedulerServiceRpc(SchedulerService):
    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    async def trigger(self, request: runs_pb2.TriggerRequest, ctx: Ctx) -> runs_pb2.TriggerResponse:
        return runs_pb2.TriggerResponse(run_ids=await self._scheduler.trigger(request.event))

    async def invoke(self, request: runs_pb2.InvokeRequest, ctx: Ctx) -> runs_pb2.InvokeResponse:
        return runs_pb2.InvokeResponse(run_id=await self._scheduler.invoke(request))

    async def resume_run(self, request: runs_pb2.ResumeRunRequest, ctx: Ctx) -> runs_pb2.ResumeRunResponse:
        return runs_pb2.ResumeRunResponse(run=await self._scheduler.resume_run(request.id, request.from_step))

    async def get_run(self, request: runs_pb2.GetRunRequest, ctx: Ctx) -> runs_pb2.GetRunResponse:
        return runs_pb2.GetRunResponse(run=await self._scheduler.get_run(request.id))

    async def list_runs(self, request: runs_pb2.ListRunsRequest, ctx: Ctx) -> runs_pb2.ListRunsResponse:
        return await self._scheduler.list_runs(request)

    async def get_run_steps(
        self, request: runs_pb2.GetRunStepsRequest, ctx: Ctx
    ) -> runs_pb2.GetRunStepsResponse:
        return runs_pb2.GetRunStepsResponse(steps=await self._scheduler.get_run_steps(request.run_id))

    async def cancel_run(self, request: runs_pb2.CancelRunRequest, ctx: Ctx) -> runs_pb2.CancelRunResponse:
        return runs_pb2.CancelRunResponse(run=await self._scheduler.cancel_run(request.id, request.reason))

    async def wait_for_runs(
        self, request: runs_pb2.WaitForRunsRequest, ctx: Ctx
    ) -> runs_pb2.WaitForRunsResponse:
        timeout = wait_timeout(request.timeout if request.HasField("timeout") else None)
        results, all_ended = await self._scheduler.wait_for_runs(list(request.run_ids), timeout)
        return runs_pb2.WaitForRunsResponse(results=results, all_ended=all_ended)

    async def lease_jobs(self, request: runs_pb2.LeaseJobsRequest, ctx: Ctx) -> runs_pb2.LeaseJobsResponse:
        return await self._scheduler.lease_jobs(request)

    async def renew_leases(
        self, request: runs_pb2.RenewLeasesRequest, ctx: Ctx
    ) -> runs_pb2.RenewLeasesResponse:
        return await self._scheduler.renew_leases(request)

    async def report_job(self, request: runs_pb2.ReportJobRequest, ctx: Ctx) -> runs_pb2.ReportJobResponse:
        return await self._scheduler.report_jobs(request)

    async def release_jobs(
        self, request: runs_pb2.ReleaseJobsRequest, ctx: Ctx
    ) -> runs_pb2.ReleaseJobsResponse:
        return await self._scheduler.release_jobs(request)
