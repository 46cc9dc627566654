"""Telling a streaming handler that its client went away while the handler had nothing to send.

connect-python notices a disconnect of a server-stream call only between two responses, so a
subscription with nothing to deliver would outlive its client indefinitely (still counted as a
subscriber, still holding group messages). This wrapper watches the ASGI `receive` channel the
framework already reads and sets a per-request event, which handlers reach through a context
variable: the framework reads `receive` from a task created inside the request, so it sees the
same event object.
"""

from __future__ import annotations

import asyncio
import contextvars

from .http import ASGIApp, Message, Receive, Scope, Send

_client_gone: contextvars.ContextVar[asyncio.Event | None] = contextvars.ContextVar(
    "ironflow_client_gone", default=None
)


def client_gone() -> asyncio.Event | None:
    """The current request's "client disconnected" event, when served through `watch_disconnects`."""
    return _client_gone.get()


def watch_disconnects(app: ASGIApp) -> ASGIApp:
    async def watched(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        gone = asyncio.Event()

        async def receive_and_watch() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            return message

        token = _client_gone.set(gone)
        try:
            await app(scope, receive_and_watch, send)
        finally:
            _client_gone.reset(token)

    return watched
