"""EventService over Connect/gRPC: protobuf in, `Ingest` calls, protobuf out."""

from __future__ import annotations

from typing import Any

from connectrpc.request import RequestContext

from ironflow.services.core.protojson import dict_to_struct, struct_to_dict, to_timestamp
from ironflow.services.core.subjects import subject_for
from ironflow.v1 import common_pb2, events_pb2
from ironflow.v1.events_connect import EventService

from ._ingest import Accepted, Ingest
from ._store import StoredEvent

Ctx = RequestContext[Any, Any]


def event_to_proto(event: StoredEvent) -> common_pb2.Event:
    return common_pb2.Event(
        id=event.id,
        name=event.name,
        namespace=event.namespace,
        subject=subject_for(event.namespace, event.name),
        data=dict_to_struct(event.data),
        metadata=event.metadata,
        idempotency_key=event.idempotency_key or "",
        timestamp=to_timestamp(event.created_at),
        sequence=event.stream_sequence or 0,
    )


class EventServiceRpc(EventService):
    def __init__(self, ingest: Ingest) -> None:
        self._ingest = ingest

    async def _emit(self, request: events_pb2.EmitRequest) -> tuple[Accepted, list[str]]:
        return await self._ingest.emit(
            request.name,
            struct_to_dict(request.data),
            idempotency_key=request.idempotency_key,
            metadata=dict(request.metadata),
        )

    async def emit(self, request: events_pb2.EmitRequest, ctx: Ctx) -> events_pb2.EmitResponse:
        accepted, run_ids = await self._emit(request)
        return events_pb2.EmitResponse(
            event_id=accepted.event.id,
            run_ids=run_ids,
            sequence=accepted.sequence,
            duplicate=accepted.duplicate,
        )

    async def emit_sync(self, request: events_pb2.EmitSyncRequest, ctx: Ctx) -> events_pb2.EmitSyncResponse:
        accepted, results = await self._ingest.emit_sync(
            request.name,
            struct_to_dict(request.data),
            idempotency_key=request.idempotency_key,
            metadata=dict(request.metadata),
            wait=request.timeout.ToTimedelta() if request.HasField("timeout") else None,
        )
        return events_pb2.EmitSyncResponse(event_id=accepted.event.id, results=results)

    async def publish(self, request: events_pb2.PublishRequest, ctx: Ctx) -> events_pb2.PublishResponse:
        accepted = await self._ingest.publish(
            request.topic,
            struct_to_dict(request.data),
            idempotency_key=request.idempotency_key,
            metadata=dict(request.metadata),
        )
        return events_pb2.PublishResponse(
            event_id=accepted.event.id, sequence=accepted.sequence, duplicate=accepted.duplicate
        )

    async def get_event(self, request: events_pb2.GetEventRequest, ctx: Ctx) -> events_pb2.GetEventResponse:
        return events_pb2.GetEventResponse(event=event_to_proto(await self._ingest.get(request.id)))

    async def list_events(
        self, request: events_pb2.ListEventsRequest, ctx: Ctx
    ) -> events_pb2.ListEventsResponse:
        page, next_cursor = await self._ingest.list_events(
            namespace=request.namespace, name=request.name, limit=request.limit, cursor=request.cursor
        )
        return events_pb2.ListEventsResponse(
            events=[event_to_proto(event) for event in page], next_cursor=next_cursor
        )

    async def get_trigger_watermark(
        self, request: events_pb2.GetTriggerWatermarkRequest, ctx: Ctx
    ) -> events_pb2.GetTriggerWatermarkResponse:
        response = events_pb2.GetTriggerWatermarkResponse()
        watermark = await self._ingest.trigger_watermark()
        if watermark is not None:
            response.watermark.CopyFrom(to_timestamp(watermark))
        return response
