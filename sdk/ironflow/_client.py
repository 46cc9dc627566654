"""`ironflow.Client`: the async client, speaking gRPC (grpcio) to the server or its front door."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlparse

import grpc
from google.protobuf import json_format

from ironflow.v1 import (
    common_pb2,
    events_pb2,
    events_pb2_grpc,
    functions_pb2,
    functions_pb2_grpc,
)

from ._convert import from_struct, from_timestamp, to_struct
from ._errors import IronflowError
from ._models import EmitResult, Event, EventPage, FunctionInfo, PublishResult

DEFAULT_SERVER_URL = "http://localhost:9123"
DEFAULT_TIMEOUT_SECONDS = 30.0

T = TypeVar("T")

_STATUS_NAMES = {
    functions_pb2.FUNCTION_STATUS_ACTIVE: "active",
    functions_pb2.FUNCTION_STATUS_PAUSED: "paused",
    functions_pb2.FUNCTION_STATUS_DELETED: "deleted",
}
_MODE_NAMES = {functions_pb2.FUNCTION_MODE_PULL: "pull", functions_pb2.FUNCTION_MODE_PUSH: "push"}


def resolve_server_url(server_url: str | None) -> str:
    return server_url or os.environ.get("IRONFLOW_SERVER_URL") or DEFAULT_SERVER_URL


def _channel(server_url: str) -> grpc.aio.Channel:
    parsed = urlparse(server_url if "://" in server_url else f"http://{server_url}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise IronflowError(
            "INVALID_ARGUMENT", f"server_url must look like http://host:port, got {server_url!r}"
        )
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    target = f"{parsed.hostname}:{port}"
    options = [("grpc.keepalive_time_ms", 30_000), ("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    if parsed.scheme == "https":
        return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(), options=options)
    return grpc.aio.insecure_channel(target, options=options)


class Client:
    """Async client. Use as `async with ironflow.Client() as client:` or call `close()` when done."""

    def __init__(
        self,
        server_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.server_url = resolve_server_url(server_url)
        self._api_key = api_key or os.environ.get("IRONFLOW_API_KEY")
        self._timeout = timeout
        self._channel = _channel(self.server_url)
        self._events = events_pb2_grpc.EventServiceStub(self._channel)
        self._registry = functions_pb2_grpc.RegistryServiceStub(self._channel)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    # -- events -------------------------------------------------------------------------------

    async def emit(
        self,
        name: str,
        data: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> EmitResult:
        """Store an event and start every function it triggers."""
        request = events_pb2.EmitRequest(
            name=name,
            data=_struct_argument(data),
            idempotency_key=idempotency_key or "",
            metadata=metadata or {},
        )
        response: events_pb2.EmitResponse = await self._call(self._events.Emit, request)
        return EmitResult(
            event_id=response.event_id,
            run_ids=list(response.run_ids),
            sequence=response.sequence,
            duplicate=response.duplicate,
        )

    async def publish(
        self,
        topic: str,
        data: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> PublishResult:
        """Send a message to real-time subscribers of `topic:<topic>`. Starts no run."""
        request = events_pb2.PublishRequest(
            topic=topic,
            data=_struct_argument(data),
            idempotency_key=idempotency_key or "",
            metadata=metadata or {},
        )
        response: events_pb2.PublishResponse = await self._call(self._events.Publish, request)
        return PublishResult(
            event_id=response.event_id, sequence=response.sequence, duplicate=response.duplicate
        )

    async def get_event(self, event_id: str) -> Event:
        response: events_pb2.GetEventResponse = await self._call(
            self._events.GetEvent, events_pb2.GetEventRequest(id=event_id)
        )
        return _event(response.event)

    async def list_events(
        self,
        *,
        name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        namespace: str = "events",
    ) -> EventPage:
        """Stored events, newest first. Pass `next_cursor` back as `cursor` for the next page."""
        request = events_pb2.ListEventsRequest(
            name=name or "", limit=limit, cursor=cursor or "", namespace=namespace
        )
        response: events_pb2.ListEventsResponse = await self._call(self._events.ListEvents, request)
        return EventPage(events=[_event(e) for e in response.events], next_cursor=response.next_cursor)

    # -- functions ----------------------------------------------------------------------------

    async def list_functions(self, *, limit: int = 100, cursor: str | None = None) -> list[FunctionInfo]:
        functions: list[FunctionInfo] = []
        next_cursor = cursor or ""
        while True:
            request = functions_pb2.ListFunctionsRequest(limit=limit, cursor=next_cursor)
            response: functions_pb2.ListFunctionsResponse = await self._call(
                self._registry.ListFunctions, request
            )
            functions.extend(_function(f) for f in response.functions)
            next_cursor = response.next_cursor
            if not next_cursor or cursor is not None:
                return functions

    async def get_function(self, function_id: str, *, version: int | None = None) -> FunctionInfo:
        request = functions_pb2.GetFunctionRequest(id=function_id, version=version or 0)
        response: functions_pb2.GetFunctionResponse = await self._call(self._registry.GetFunction, request)
        return _function(response.function)

    # -- plumbing -----------------------------------------------------------------------------

    async def _call(self, method: Callable[..., Awaitable[T]], request: Any) -> T:
        metadata = (("authorization", f"Bearer {self._api_key}"),) if self._api_key else None
        try:
            return await method(request, timeout=self._timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, self.server_url) from None


def _struct_argument(data: dict[str, Any] | None) -> Any:
    if data is None:
        return to_struct({})
    if not isinstance(data, dict):
        raise IronflowError(
            "INVALID_ARGUMENT", f"data: must be a dict (a JSON object), got {type(data).__name__}"
        )
    try:
        return to_struct(data)
    except (ValueError, TypeError, AttributeError) as exc:
        raise IronflowError("INVALID_ARGUMENT", f"data: must be JSON-serialisable ({exc})") from None


def _error(exc: grpc.aio.AioRpcError, server_url: str) -> IronflowError:
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return IronflowError(
            "UNAVAILABLE", f"cannot reach the Ironflow server at {server_url}: {exc.details()}"
        )
    return IronflowError(code.name if code is not None else "UNKNOWN", exc.details() or "")


def _event(message: common_pb2.Event) -> Event:
    return Event(
        id=message.id,
        name=message.name,
        namespace=message.namespace,
        subject=message.subject,
        data=from_struct(message.data),
        metadata=dict(message.metadata),
        idempotency_key=message.idempotency_key or None,
        timestamp=from_timestamp(message.timestamp),
        sequence=message.sequence,
    )


def _function(message: functions_pb2.Function) -> FunctionInfo:
    definition = json_format.MessageToDict(message.definition, preserving_proto_field_name=True)
    return FunctionInfo(
        id=message.definition.id,
        name=message.definition.name,
        version=message.version,
        status=_STATUS_NAMES.get(message.status, "unknown"),
        mode=_MODE_NAMES.get(message.definition.mode, "pull"),
        triggers=list(definition.get("triggers", [])),
        created_at=from_timestamp(message.created_at),
        updated_at=from_timestamp(message.updated_at),
        definition=definition,
    )
