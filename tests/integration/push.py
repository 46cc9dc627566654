"""Push endpoints for tests: `ironflow.serve` apps run by uvicorn on real ports, in this event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

import ironflow
from tests.support import eventually, free_port

SIGNING_KEY = "test-signing-key-3f9a"


class CountingApp:
    """Wraps an ASGI app and counts the POSTs it answered (one per execution segment)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.posts = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            self.posts += 1
        await self.app(scope, receive, send)


@asynccontextmanager
async def serving(app: Any, *, port: int | None = None) -> AsyncIterator[str]:
    """Run `app` with uvicorn on 127.0.0.1:`port` (a free one by default); yields its URL."""
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    # The test runner owns the signals; uvicorn must not take them over.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        if task.done():
            task.result()  # raise why it could not start
        return server.started

    await eventually(started, what=f"uvicorn to listen on port {port}")
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def push_functions(
    server_url: str, functions: Sequence[ironflow.Function], *, signing_key: str = SIGNING_KEY
) -> AsyncIterator[CountingApp]:
    """Serve `functions` over HTTP and register them in push mode at that URL."""
    app = CountingApp(ironflow.serve(functions, signing_key=signing_key, server_url=server_url))
    async with serving(app) as url:
        async with ironflow.Client(server_url) as client:
            await client.register(functions, endpoint_url=url)
        yield app
