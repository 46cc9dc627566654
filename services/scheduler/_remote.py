"""The registry and ingest as the scheduler uses them, over gRPC (the distributed shape)."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc

from ironflow.services.core.grpc_client import call
from ironflow.v1 import events_pb2, events_pb2_grpc, functions_pb2, functions_pb2_grpc

from ._catalog import FunctionSource
from ._scheduler import EventWatermark

CALL_TIMEOUT = 10.0
_PAGE = 500


def remote_functions(channel: grpc.aio.Channel) -> FunctionSource:
    """Every active function, read from the registry page by page."""
    stub = functions_pb2_grpc.RegistryServiceStub(channel)

    async def load() -> list[functions_pb2.Function]:
        functions: list[functions_pb2.Function] = []
        cursor = ""
        while True:
            request = functions_pb2.ListFunctionsRequest(
                status=functions_pb2.FUNCTION_STATUS_ACTIVE, limit=_PAGE, cursor=cursor
            )
            page = await call(stub.ListFunctions, request, deadline=CALL_TIMEOUT, peer="registry")
            functions.extend(page.functions)
            cursor = page.next_cursor
            if not cursor:
                return functions

    return load


def remote_watermark(channel: grpc.aio.Channel) -> EventWatermark:
    """Ingest's trigger watermark (see `EventWatermark`)."""
    stub = events_pb2_grpc.EventServiceStub(channel)

    async def watermark() -> datetime | None:
        response = await call(
            stub.GetTriggerWatermark,
            events_pb2.GetTriggerWatermarkRequest(),
            deadline=CALL_TIMEOUT,
            peer="ingest",
        )
        if not response.HasField("watermark"):
            return None
        mark: datetime = response.watermark.ToDatetime(tzinfo=UTC)
        return mark

    return watermark
