"""`ironflow.serve`: push mode, where Ironflow POSTs each execution segment of a run to your app.

The scheduler sends a signed `PushRequest` (the job: run, event, memoized steps, lease) as proto JSON.
This app checks the signature, replays the memoized steps, runs the handler until it returns, fails,
yields (sleep, wait_for_event, invoke) or the request's time budget is nearly spent, and answers with
the `JobReport` a pull worker would send: every checkpoint in order plus the outcome. Nothing is
stored here; the scheduler records the answer and calls again for the next segment.

Answers: 200 with the report (a handler failure is an outcome, not an HTTP error); 401 when a
signing key is configured and the signature is missing or wrong; 404 for a function this app does
not serve; 400 for a body that is not a PushRequest; 405 for methods other than POST and GET. Errors
are `{"code": ..., "message": ...}` like the server's REST API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from google.protobuf import json_format

from ironflow.v1 import runs_pb2

from ._client import Client, push_functions, resolve_server_url
from ._execution import execute
from ._function import Function
from ._models import PublishResult
from ._signing import DEFAULT_TOLERANCE, SIGNATURE_HEADER, SignatureError, verify

log = logging.getLogger("ironflow.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY_BYTES = 32 * 1024 * 1024
# Stop starting new steps once less than this share of the budget is left...
_RESERVE_SHARE = 0.25
# ...or less than this many times the longest step seen in this request.
_RESERVE_STEPS = 2.0


class _RequestBudget:
    """Time left in one push request. The next step starts only if a reserve is left: a quarter of
    the budget, or twice the longest step so far, whichever is more (a step usually takes about as
    long as its neighbours, and an answer that arrives after the scheduler gave up is wasted)."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._deadline = time.monotonic() + seconds
        self._longest = 0.0

    def allows_new_step(self) -> bool:
        remaining = self._deadline - time.monotonic()
        return remaining >= max(self._seconds * _RESERVE_SHARE, self._longest * _RESERVE_STEPS)

    def step_took(self, seconds: float) -> None:
        self._longest = max(self._longest, seconds)


class _CollectingChannel:
    """Where the execution's reports go in push mode: kept in order, sent back as one answer."""

    def __init__(self, job: runs_pb2.Job) -> None:
        self.answer = runs_pb2.JobReport(
            run_id=job.run_id, lease_token=job.lease_token, execution_sequence=job.execution_sequence
        )

    async def report(self, report: runs_pb2.JobReport, *, wait: bool) -> bool:
        # Checkpoints append in order; an outcome (there is at most one per execution) is set.
        self.answer.MergeFrom(report)
        return True  # fencing happens when the scheduler records the answer


class _RefusedError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class PushApp:
    """The ASGI application `ironflow.serve` returns. `functions` are the functions it serves."""

    def __init__(
        self,
        functions: Sequence[Function],
        *,
        signing_key: str | None,
        server_url: str | None,
        api_key: str | None,
        tolerance: float,
    ) -> None:
        self.functions = tuple(functions)
        self._by_id = {function.id: function for function in self.functions}
        self._signing_key = signing_key or None
        self._server_url = server_url
        self._api_key = api_key
        self._tolerance = tolerance
        # For `step.publish`: opened with the first publish, closed at lifespan shutdown.
        self._client: Client | None = None
        if self._signing_key is None:
            log.warning(
                "ironflow.serve: no signing_key, so requests are not authenticated (fine for local dev)"
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets are not part of push mode
        method = scope["method"]
        if method == "GET":
            await _respond(send, 200, {"status": "ok", "functions": sorted(self._by_id)})
        elif method == "POST":
            await self._push(scope, receive, send)
        else:
            await _respond(send, 405, _error("method_not_allowed", "use POST (runs) or GET (status)"))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _push(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            request, function = self._accept(scope, await _read_body(receive))
        except _RefusedError as refusal:
            await _respond(send, refusal.status, _error(refusal.code, refusal.message))
            return
        job = request.job
        budget = (
            _RequestBudget(request.budget.ToTimedelta().total_seconds())
            if request.HasField("budget")
            else None
        )
        channel = _CollectingChannel(job)
        execution = asyncio.ensure_future(execute(job, function, channel, self._publish, budget))
        # The scheduler gave up on this request (it timed out): stop, the run will be sent again.
        watcher = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({execution, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if not execution.done():
            execution.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await execution
            log.warning("run %s: the scheduler hung up before the answer; stopped", job.run_id)
            await _respond(send, 503, _error("unavailable", "the caller disconnected"))
            return
        try:
            execution.result()
        except Exception as exc:
            # The SDK itself broke (not the handler, whose errors are outcomes): a 500 makes the
            # scheduler send the segment again.
            log.exception("run %s: could not execute", job.run_id)
            await _respond(send, 500, _error("internal", f"{type(exc).__name__}: {exc}"))
            return
        answer = json_format.MessageToDict(channel.answer, preserving_proto_field_name=True)
        await _respond(send, 200, answer)

    def _accept(self, scope: Scope, body: bytes | None) -> tuple[runs_pb2.PushRequest, Function]:
        """The request and the function it runs, or a _RefusedError saying why not."""
        if body is None:
            raise _RefusedError(413, "invalid_argument", f"body larger than {MAX_BODY_BYTES} bytes")
        if self._signing_key is not None:
            try:
                verify(self._signing_key, _header(scope, SIGNATURE_HEADER), body, tolerance=self._tolerance)
            except SignatureError as exc:
                log.warning("ironflow.serve: refused a request: %s", exc)
                raise _RefusedError(401, "unauthenticated", str(exc)) from None
        request = runs_pb2.PushRequest()
        try:
            json_format.Parse(body, request, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise _RefusedError(400, "invalid_argument", f"body: not a PushRequest ({exc})") from None
        if not request.job.run_id:
            raise _RefusedError(400, "invalid_argument", "job.run_id: is required")
        function = self._by_id.get(request.job.function_id)
        if function is None:
            served = ", ".join(sorted(self._by_id)) or "none"
            message = f"function {request.job.function_id!r} is not served here (serving: {served})"
            raise _RefusedError(404, "not_found", message)
        return request, function

    async def _publish(self, topic: str, data: dict[str, Any], idempotency_key: str) -> PublishResult:
        if self._client is None:
            self._client = Client(resolve_server_url(self._server_url), api_key=self._api_key)
        return await self._client.publish(topic, data, idempotency_key=idempotency_key)


def serve(
    functions: Sequence[Function],
    *,
    signing_key: str | None = None,
    server_url: str | None = None,
    api_key: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> PushApp:
    """An ASGI app that runs these push-mode functions when Ironflow POSTs to it.

    Mount it (`Mount("/api/ironflow", app=ironflow.serve(...))` in Starlette or FastAPI) or run it
    with uvicorn or hypercorn, then register its URL: `client.register(functions, endpoint_url=...)`
    or `ironflow functions register`. `signing_key` must equal the server's IRONFLOW_SIGNING_KEY;
    without it requests are not authenticated. `server_url` is only needed for `step.publish`
    [IRONFLOW_SERVER_URL]."""
    checked = push_functions(functions)
    if signing_key is not None and not isinstance(signing_key, str):
        raise ValueError("signing_key: must be a string (the server's IRONFLOW_SIGNING_KEY)")
    if tolerance <= 0:
        raise ValueError(f"tolerance: must be positive, got {tolerance!r}")
    return PushApp(
        checked, signing_key=signing_key, server_url=server_url, api_key=api_key, tolerance=tolerance
    )


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _header(scope: Scope, name: str) -> str | None:
    wanted = name.lower().encode()
    for key, value in scope.get("headers", []):
        if key.lower() == wanted:
            text: str = value.decode("latin-1")
            return text
    return None


def _error(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


async def _respond(send: Send, status: int, document: object) -> None:
    body = json.dumps(document, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
