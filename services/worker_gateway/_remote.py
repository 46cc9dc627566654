"""The scheduler's job RPCs and the registry as the gateway uses them, over gRPC (distributed shape).

Leasing and reporting are not retried here: a lease whose answer was lost lapses and the run is
handed out again, and a report repeated after it was applied would be refused as stale. The worker
re-sends what it must.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from ironflow.services.core.grpc_client import call
from ironflow.v1 import functions_pb2, functions_pb2_grpc, runs_pb2, runs_pb2_grpc

from ._gateway import RegisterFunctions

CALL_TIMEOUT = 10.0
# A report batch commits many checkpoints at once; give a loaded database room.
REPORT_TIMEOUT = 30.0


class RemoteJobScheduler:
    """`SchedulerApi` over gRPC."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = runs_pb2_grpc.SchedulerServiceStub(channel)

    async def lease_jobs(self, request: runs_pb2.LeaseJobsRequest) -> runs_pb2.LeaseJobsResponse:
        return await call(self._stub.LeaseJobs, request, deadline=CALL_TIMEOUT, peer="scheduler")

    async def renew_leases(self, request: runs_pb2.RenewLeasesRequest) -> runs_pb2.RenewLeasesResponse:
        return await call(self._stub.RenewLeases, request, deadline=CALL_TIMEOUT, peer="scheduler")

    async def report_jobs(self, request: runs_pb2.ReportJobRequest) -> runs_pb2.ReportJobResponse:
        return await call(self._stub.ReportJob, request, deadline=REPORT_TIMEOUT, peer="scheduler")

    async def release_jobs(self, request: runs_pb2.ReleaseJobsRequest) -> runs_pb2.ReleaseJobsResponse:
        return await call(self._stub.ReleaseJobs, request, deadline=CALL_TIMEOUT, peer="scheduler")


def remote_register(channel: grpc.aio.Channel) -> RegisterFunctions:
    stub = functions_pb2_grpc.RegistryServiceStub(channel)

    async def register(definitions: Sequence[functions_pb2.FunctionDefinition], takeover: bool) -> None:
        request = functions_pb2.RegisterFunctionsRequest(functions=list(definitions), takeover=takeover)
        await call(stub.RegisterFunctions, request, deadline=REPORT_TIMEOUT, peer="registry")

    return register
