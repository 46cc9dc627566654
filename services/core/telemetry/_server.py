"""The connect-python side: a SERVER span per RPC, continuing the caller's trace from the request
headers (`traceparent` arrives as gRPC metadata or as an HTTP header: both are headers here).

It sits outside the error interceptor, so the span covers the error mapping and records the status
the client sees. Caller mistakes (INVALID_ARGUMENT, NOT_FOUND, ...) keep the span's status unset, as
the RPC conventions say for servers; server faults are errors, with the bug behind an INTERNAL
recorded as the exception.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import grpc
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from ._carriers import extract_trace
from ._names import (
    QUIET_PROCEDURES,
    RPC_CONNECT_ERROR_CODE,
    RPC_GRPC_STATUS_CODE,
    RPC_METHOD,
    RPC_SERVICE,
    RPC_SYSTEM,
)
from ._setup import tracer, tracing_enabled

_SERVER_FAULTS = frozenset(
    {"unknown", "deadline_exceeded", "unimplemented", "internal", "unavailable", "data_loss"}
)


def server_interceptors() -> list[Any]:
    """The interceptors tracing adds to a service app: none while tracing is off."""
    return [ServerTracingInterceptor(tracer())] if tracing_enabled() else []


class ServerTracingInterceptor:
    """Connect interceptor for all four RPC shapes."""

    def __init__(self, tracer_: trace.Tracer) -> None:
        self._tracer = tracer_

    async def intercept_unary(
        self,
        call_next: Callable[[Any, RequestContext[Any, Any]], Awaitable[Any]],
        request: Any,
        ctx: RequestContext[Any, Any],
    ) -> Any:
        with self._serving(ctx):
            return await call_next(request, ctx)

    async def intercept_client_stream(
        self,
        call_next: Callable[[AsyncIterator[Any], RequestContext[Any, Any]], Awaitable[Any]],
        request: AsyncIterator[Any],
        ctx: RequestContext[Any, Any],
    ) -> Any:
        with self._serving(ctx):
            return await call_next(request, ctx)

    def intercept_server_stream(
        self,
        call_next: Callable[[Any, RequestContext[Any, Any]], AsyncIterator[Any]],
        request: Any,
        ctx: RequestContext[Any, Any],
    ) -> AsyncIterator[Any]:
        return self._streaming(call_next(request, ctx), ctx)

    def intercept_bidi_stream(
        self,
        call_next: Callable[[AsyncIterator[Any], RequestContext[Any, Any]], AsyncIterator[Any]],
        request: AsyncIterator[Any],
        ctx: RequestContext[Any, Any],
    ) -> AsyncIterator[Any]:
        return self._streaming(call_next(request, ctx), ctx)

    def _serving(self, ctx: RequestContext[Any, Any]) -> AbstractContextManager[object]:
        opened = self._open(ctx)
        return contextlib.nullcontext() if opened is None else _current(*opened)

    def _streaming(self, responses: AsyncIterator[Any], ctx: RequestContext[Any, Any]) -> AsyncIterator[Any]:
        # The stream itself is handed back (not wrapped in another generator), so closing it early
        # closes the handler and ends the span at once rather than whenever it is garbage collected.
        opened = self._open(ctx)
        return responses if opened is None else _traced_stream(responses, *opened)

    def _open(self, ctx: RequestContext[Any, Any]) -> tuple[Span, Context] | None:
        method = ctx.method()
        headers = ctx.request_headers()
        parent = extract_trace(headers)
        procedure = f"{method.service_name}/{method.name}"
        if procedure in QUIET_PROCEDURES and not trace.get_current_span(parent).get_span_context().is_valid:
            return None
        grpc_wire = headers.get("content-type", "").startswith("application/grpc")
        server_span = self._tracer.start_span(
            procedure,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                RPC_SYSTEM: "grpc" if grpc_wire else "connect_rpc",
                RPC_SERVICE: method.service_name,
                RPC_METHOD: method.name,
            },
        )
        return server_span, trace.set_span_in_context(server_span, parent)


@contextlib.contextmanager
def _current(server_span: Span, context: Context) -> Iterator[Span]:
    token = otel_context.attach(context)
    try:
        yield server_span
    except BaseException as exc:
        _record_error(server_span, exc)
        raise
    finally:
        otel_context.detach(token)
        server_span.end()


async def _traced_stream(
    responses: AsyncIterator[Any], server_span: Span, context: Context
) -> AsyncIterator[Any]:
    # The span is current around each step of the handler, never across a `yield`: a context
    # attached in an async generator could otherwise be detached in the consumer's context (or at
    # finalization), which OpenTelemetry refuses.
    try:
        while True:
            token = otel_context.attach(context)
            try:
                item = await anext(responses)
            except StopAsyncIteration:
                break
            finally:
                otel_context.detach(token)
            yield item
    except BaseException as exc:
        _record_error(server_span, exc)
        raise
    finally:
        aclose = getattr(responses, "aclose", None)
        if aclose is not None:
            await aclose()
        server_span.end()


def _record_error(server_span: Span, exc: BaseException) -> None:
    if isinstance(exc, ConnectError):
        code = exc.code.value
        server_span.set_attribute(RPC_CONNECT_ERROR_CODE, code)
        status = getattr(grpc.StatusCode, exc.code.name.replace("CANCELED", "CANCELLED"), None)
        if status is not None:
            server_span.set_attribute(RPC_GRPC_STATUS_CODE, status.value[0])
        if code in _SERVER_FAULTS:
            # An unexpected error reaches the edge as INTERNAL; the bug itself is its cause.
            server_span.record_exception(exc.__cause__ or exc)
            server_span.set_status(Status(StatusCode.ERROR, f"{code}: {exc.message}"))
    elif isinstance(exc, Exception):
        server_span.record_exception(exc)
        server_span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
