"""REST routes of ingest: `POST /api/v1/events`, `GET /api/v1/events`, `GET /api/v1/events/{id}`."""

from __future__ import annotations

from typing import Any

from ironflow.services.core.errors import ErrorCode, ServiceError, invalid_argument
from ironflow.services.core.http import (
    Receive,
    Request,
    Scope,
    Send,
    reject_unknown_fields,
    send_error,
    send_json,
)
from ironflow.services.core.subjects import subject_for

from ._ingest import Ingest
from ._store import StoredEvent

PREFIX = "/api/v1/events"
_EMIT_FIELDS = {"name", "data", "idempotency_key", "metadata"}
# The body may carry a full payload plus JSON framing; `data` itself is checked against the limit.
_BODY_OVERHEAD = 64 * 1024


def event_to_json(event: StoredEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "name": event.name,
        "namespace": event.namespace,
        "subject": subject_for(event.namespace, event.name),
        "data": event.data,
        "metadata": event.metadata,
        "idempotency_key": event.idempotency_key,
        "timestamp": event.created_at.isoformat().replace("+00:00", "Z"),
        "sequence": event.stream_sequence or 0,
    }


class EventsRestApp:
    def __init__(self, ingest: Ingest, *, max_payload_bytes: int) -> None:
        self._ingest = ingest
        self._max_body = max_payload_bytes + _BODY_OVERHEAD

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            status, body = await self._route(request)
        except Exception as exc:  # noqa: BLE001 - every failure becomes the REST error shape
            await send_error(send, exc)
            return
        await send_json(send, status, body)

    async def _route(self, request: Request) -> tuple[int, Any]:
        rest = request.path.removeprefix(PREFIX).strip("/")
        if not rest:
            if request.method == "POST":
                return await self._emit(request)
            if request.method == "GET":
                return 200, await self._list(request)
        elif "/" not in rest and request.method == "GET":
            return 200, event_to_json(await self._ingest.get(rest))
        raise ServiceError(ErrorCode.NOT_FOUND, f"no route for {request.method} {request.path}")

    async def _emit(self, request: Request) -> tuple[int, Any]:
        body = await request.json_object(max_bytes=self._max_body)
        reject_unknown_fields(body, _EMIT_FIELDS)
        if "name" not in body:
            raise invalid_argument("name", "is required")
        accepted, run_ids = await self._ingest.emit(
            body["name"],
            body.get("data", {}),
            idempotency_key=body.get("idempotency_key"),
            metadata=body.get("metadata"),
        )
        return 200, {
            "event_id": accepted.event.id,
            "run_ids": run_ids,
            "sequence": accepted.sequence,
            "duplicate": accepted.duplicate,
        }

    async def _list(self, request: Request) -> dict[str, Any]:
        query = request.query()
        unknown = sorted(set(query) - {"name", "limit", "cursor", "namespace"})
        if unknown:
            raise invalid_argument(unknown[0], "unknown query parameter")
        limit_text = query.get("limit", "")
        if limit_text and not limit_text.isdigit():
            raise invalid_argument("limit", "must be a positive integer")
        page, next_cursor = await self._ingest.list_events(
            namespace=query.get("namespace", ""),
            name=query.get("name", ""),
            limit=int(limit_text or 0),
            cursor=query.get("cursor", ""),
        )
        return {"events": [event_to_json(event) for event in page], "next_cursor": next_cursor}
