"""REST route of the scheduler: `GET /api/v1/runs/{id}` (and its steps at `/api/v1/runs/{id}/steps`)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from ironflow.services.core.errors import ErrorCode, ServiceError
from ironflow.services.core.http import Receive, Request, Scope, Send, send_error, send_json

from ._scheduler import Scheduler

PREFIX = "/api/v1/runs"


def _to_json(message: Any) -> dict[str, Any]:
    document: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    if "status" in document:
        document["status"] = document["status"].rsplit("_STATUS_", 1)[-1].lower()
    return document


class RunsRestApp:
    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            body = await self._route(request)
        except Exception as exc:  # noqa: BLE001 - every failure becomes the REST error shape
            await send_error(send, exc)
            return
        await send_json(send, 200, body)

    async def _route(self, request: Request) -> Any:
        parts = request.path.removeprefix(PREFIX).strip("/").split("/")
        if request.method == "GET" and len(parts) == 1 and parts[0]:
            return _to_json(await self._scheduler.get_run(parts[0]))
        if request.method == "GET" and len(parts) == 2 and parts[0] and parts[1] == "steps":
            return {"steps": [_to_json(step) for step in await self._scheduler.get_run_steps(parts[0])]}
        raise ServiceError(ErrorCode.NOT_FOUND, f"no route for {request.method} {request.path}")
