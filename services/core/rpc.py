"""The RPC edge: turn service errors into Connect/gRPC statuses, in exactly one place.

A `ServiceError` keeps its code and message. Anything else is a bug: it is logged with its traceback
under a fresh trace id, and the client sees INTERNAL with only that id, never `str(exc)`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext

from .errors import ServiceError, connect_code

log = logging.getLogger("ironflow.rpc")


def to_connect_error(exc: Exception, procedure: str) -> ConnectError:
    if isinstance(exc, ConnectError):
        return exc
    if isinstance(exc, ServiceError):
        return ConnectError(connect_code(exc.code), exc.message)
    trace_id = uuid.uuid4().hex
    log.error("unexpected error in %s (trace id %s)", procedure, trace_id, exc_info=exc)
    return ConnectError(Code.INTERNAL, f"internal error (trace id {trace_id})")


def _procedure(ctx: RequestContext[Any, Any]) -> str:
    method = ctx.method()
    return f"{method.service_name}/{method.name}"


class ErrorInterceptor:
    """Connect interceptor for all four RPC shapes."""

    async def intercept_unary(
        self,
        call_next: Callable[[Any, RequestContext[Any, Any]], Awaitable[Any]],
        request: Any,
        ctx: RequestContext[Any, Any],
    ) -> Any:
        try:
            return await call_next(request, ctx)
        except Exception as exc:
            raise to_connect_error(exc, _procedure(ctx)) from exc

    async def intercept_client_stream(
        self,
        call_next: Callable[[AsyncIterator[Any], RequestContext[Any, Any]], Awaitable[Any]],
        request: AsyncIterator[Any],
        ctx: RequestContext[Any, Any],
    ) -> Any:
        try:
            return await call_next(request, ctx)
        except Exception as exc:
            raise to_connect_error(exc, _procedure(ctx)) from exc

    async def intercept_server_stream(
        self,
        call_next: Callable[[Any, RequestContext[Any, Any]], AsyncIterator[Any]],
        request: Any,
        ctx: RequestContext[Any, Any],
    ) -> AsyncIterator[Any]:
        try:
            async for item in call_next(request, ctx):
                yield item
        except Exception as exc:
            raise to_connect_error(exc, _procedure(ctx)) from exc

    async def intercept_bidi_stream(
        self,
        call_next: Callable[[AsyncIterator[Any], RequestContext[Any, Any]], AsyncIterator[Any]],
        request: AsyncIterator[Any],
        ctx: RequestContext[Any, Any],
    ) -> AsyncIterator[Any]:
        try:
            async for item in call_next(request, ctx):
                yield item
        except Exception as exc:
            raise to_connect_error(exc, _procedure(ctx)) from exc
