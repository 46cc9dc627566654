"""Just enough ASGI for small JSON REST routes, with the project's error shape.

The REST surface is a handful of routes next to the Connect services; a web framework would bring
its own routing, error pages and lifecycle to reconcile with connect-python's, for no gain here.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from .errors import ErrorCode, ServiceError, http_status, invalid_argument

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("ironflow.http")


class Request:
    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self._receive = receive

    @property
    def method(self) -> str:
        return str(self.scope["method"])

    @property
    def path(self) -> str:
        return str(self.scope["path"])

    def query(self) -> dict[str, str]:
        raw = self.scope.get("query_string", b"").decode("latin-1")
        return dict(parse_qsl(raw, keep_blank_values=True))

    async def body(self, *, max_bytes: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ServiceError(ErrorCode.CANCELLED, "client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_bytes:
                raise invalid_argument("body", f"is larger than the {max_bytes}-byte limit")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def json_object(self, *, max_bytes: int) -> dict[str, Any]:
        raw = await self.body(max_bytes=max_bytes)
        try:
            value = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise invalid_argument("body", f"is not valid JSON ({exc})") from exc
        if not isinstance(value, dict):
            raise invalid_argument("body", "must be a JSON object")
        return value


async def send_json(send: Send, status: int, body: Any) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def send_error(send: Send, exc: Exception) -> None:
    """The REST error shape: `{"code": "invalid_argument", "message": ...}` with the matching status."""
    if not isinstance(exc, ServiceError):
        trace_id = uuid.uuid4().hex
        log.error("unexpected error in REST handler (trace id %s)", trace_id, exc_info=exc)
        exc = ServiceError(ErrorCode.INTERNAL, f"internal error (trace id {trace_id})")
    await send_json(send, http_status(exc.code), {"code": exc.code.value.lower(), "message": exc.message})


def reject_unknown_fields(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise invalid_argument(unknown[0], f"unknown field; allowed fields are {', '.join(sorted(allowed))}")
