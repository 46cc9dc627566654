"""WorkerService over Connect/gRPC: a thin translation onto `WorkerGateway`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from connectrpc.request import RequestContext

from ironflow.v1 import workers_pb2
from ironflow.v1.workers_connect import WorkerService

from ._gateway import WorkerGateway

Ctx = RequestContext[Any, Any]


class WorkerServiceRpc(WorkerService):
    def __init__(self, gateway: WorkerGateway) -> None:
        self._gateway = gateway

    async def connect(
        self, request: AsyncIterator[workers_pb2.ConnectRequest], ctx: Ctx
    ) -> AsyncIterator[workers_pb2.ConnectResponse]:
        async for message in self._gateway.connect(request):
            yield message

    async def poll(self, request: workers_pb2.PollRequest, ctx: Ctx) -> workers_pb2.PollResponse:
        return await self._gateway.poll(request)

    async def heartbeat(
        self, request: workers_pb2.HeartbeatRequest, ctx: Ctx
    ) -> workers_pb2.HeartbeatResponse:
        return await self._gateway.heartbeat(request)

    async def report(self, request: workers_pb2.ReportRequest, ctx: Ctx) -> workers_pb2.ReportResponse:
        return await self._gateway.report(request)
