"""One ASGI app for the whole suite: routes each path to the service app that owns it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from ironflow.services.core.errors import ErrorCode, ServiceError
from ironflow.services.core.http import ASGIApp, Receive, Scope, Send, send_error, send_json


class Router:
    """Prefix routing. Services are started before serving and stopped after, by the server
    itself (so a bad database URL fails before the port is bound); lifespan only says "ready".

    Connect apps are mounted at `/<package>.<Service>/`; REST apps at their `/api/v1/...` prefix.
    Longest prefix wins, so `/api/v1/events` and `/api/v1/runs` can belong to different services.
    """

    def __init__(
        self,
        routes: Sequence[tuple[str, ASGIApp]],
        *,
        exact: Sequence[tuple[str, ASGIApp]] = (),
    ) -> None:
        self._routes = sorted(routes, key=lambda route: len(route[0]), reverse=True)
        self._exact = dict(exact)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        path = scope.get("path", "")
        app = self._exact.get(path) or next(
            (app for prefix, app in self._routes if path == prefix or path.startswith(prefix + "/")), None
        )
        if app is not None:
            await app(scope, receive, send)
        elif scope["type"] == "http":
            await send_error(send, ServiceError(ErrorCode.NOT_FOUND, f"no route for {path}"))
        else:
            await send({"type": "websocket.close", "code": 1008})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def json_endpoint(handler: Callable[[], Awaitable[tuple[int, object]]]) -> ASGIApp:
    """A GET-only JSON endpoint (health, readiness)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        status, body = await handler()
        await send_json(send, status, body)

    return app
