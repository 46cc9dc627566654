"""One ASGI app for the whole suite: routes each path to the service app that owns it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from ironflow.services.core.errors import ErrorCode, ServiceError
from ironflow.services.core.http import ASGIApp, Receive, Scope, Send, send_error, send_json

Lifecycle = Callable[[], Awaitable[None]]


class Router:
    """Prefix routing plus the ASGI lifespan, which starts and stops the services.

    Connect apps are mounted at `/<package>.<Service>/`; REST apps at their `/api/v1/...` prefix.
    Longest prefix wins, so `/api/v1/events` and `/api/v1/runs` can belong to different services.
    """

    def __init__(
        self,
        routes: Sequence[tuple[str, ASGIApp]],
        *,
        exact: Sequence[tuple[str, ASGIApp]] = (),
        on_startup: Lifecycle | None = None,
        on_shutdown: Lifecycle | None = None,
    ) -> None:
        self._routes = sorted(routes, key=lambda route: len(route[0]), reverse=True)
        self._exact = dict(exact)
        self._on_startup = on_startup
        self._on_shutdown = on_shutdown

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
                try:
                    if self._on_startup is not None:
                        await self._on_startup()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which exits
                    await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._on_shutdown is not None:
                    await self._on_shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def json_endpoint(handler: Callable[[], Awaitable[tuple[int, object]]]) -> ASGIApp:
    """A GET-only JSON endpoint (health, readiness)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        status, body = await handler()
        await send_json(send, status, body)

    return app
