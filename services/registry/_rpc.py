"""RegistryService over Connect/gRPC."""

from __future__ import annotations

from typing import Any

from connectrpc.request import RequestContext

from ironflow.v1 import functions_pb2
from ironflow.v1.functions_connect import RegistryService

from ._registry import Registry

Ctx = RequestContext[Any, Any]


class RegistryServiceRpc(RegistryService):
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def register_functions(
        self, request: functions_pb2.RegisterFunctionsRequest, ctx: Ctx
    ) -> functions_pb2.RegisterFunctionsResponse:
        stored = await self._registry.register(
            list(request.functions), endpoint_url=request.endpoint_url, takeover=request.takeover
        )
        return functions_pb2.RegisterFunctionsResponse(functions=[s.to_proto() for s in stored])

    async def get_function(
        self, request: functions_pb2.GetFunctionRequest, ctx: Ctx
    ) -> functions_pb2.GetFunctionResponse:
        stored = await self._registry.get(request.id, version=request.version)
        return functions_pb2.GetFunctionResponse(function=stored.to_proto())

    async def list_functions(
        self, request: functions_pb2.ListFunctionsRequest, ctx: Ctx
    ) -> functions_pb2.ListFunctionsResponse:
        page, next_cursor = await self._registry.list_functions(
            status=request.status, limit=request.limit, cursor=request.cursor
        )
        return functions_pb2.ListFunctionsResponse(
            functions=[s.to_proto() for s in page], next_cursor=next_cursor
        )

    async def set_function_status(
        self, request: functions_pb2.SetFunctionStatusRequest, ctx: Ctx
    ) -> functions_pb2.SetFunctionStatusResponse:
        stored = await self._registry.set_status(request.id, request.status)
        return functions_pb2.SetFunctionStatusResponse(function=stored.to_proto())

    async def delete_function(
        self, request: functions_pb2.DeleteFunctionRequest, ctx: Ctx
    ) -> functions_pb2.DeleteFunctionResponse:
        await self._registry.delete(request.id)
        return functions_pb2.DeleteFunctionResponse()
