"""The grpcio side of service-to-service calls: a CLIENT span per call made inside a trace, its
context sent in the call's metadata for the callee's server interceptor to continue.

A call made outside any trace (a background loop's) opens no span and sends nothing; see
`QUIET_PROCEDURES` for the other half of that rule.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from ._carriers import inject_trace
from ._names import RPC_GRPC_STATUS_CODE, RPC_METHOD, RPC_SERVICE, RPC_SYSTEM
from ._setup import tracer, tracing_enabled


def client_interceptors(tracer_: trace.Tracer | None = None) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors every internal grpcio channel gets (none while tracing is off); one per call
    shape, since a grpcio channel files each interceptor under the first shape it implements."""
    if tracer_ is None:
        if not tracing_enabled():
            return []
        tracer_ = tracer()
    return [cls(tracer_) for cls in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]


class _ClientTracing:
    def __init__(self, tracer_: trace.Tracer) -> None:
        self._tracer = tracer_
        self._finishing: set[asyncio.Task[None]] = set()

    async def _call(self, continuation: Callable[..., Awaitable[Any]], details: Any, request: Any) -> Any:
        if not trace.get_current_span().get_span_context().is_valid:
            return await continuation(details, request)
        method = details.method.decode() if isinstance(details.method, bytes) else str(details.method)
        procedure = method.lstrip("/")
        service, _, name = procedure.partition("/")
        client_span = self._tracer.start_span(
            procedure,
            kind=SpanKind.CLIENT,
            attributes={RPC_SYSTEM: "grpc", RPC_SERVICE: service, RPC_METHOD: name},
        )
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        for key, value in inject_trace({}, trace.set_span_in_context(client_span)).items():
            metadata[key] = value
        details = grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )
        try:
            call = await continuation(details, request)
        except BaseException as exc:
            client_span.record_exception(exc)
            client_span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            client_span.end()
            raise
        # The span ends with the call (for a stream, long after this returns), and awaiting the
        # status here would raise nothing the caller does not already see.
        task = asyncio.ensure_future(_finish(call, client_span))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        return call


async def _finish(call: Any, client_span: Span) -> None:
    try:
        code: grpc.StatusCode = await call.code()
        client_span.set_attribute(RPC_GRPC_STATUS_CODE, code.value[0])
        if code != grpc.StatusCode.OK:
            client_span.set_status(Status(StatusCode.ERROR, f"{code.name}: {await call.details()}"))
    finally:
        client_span.end()


# grpc ships no type information (mypy sees Any), hence the ignores.
class _UnaryUnary(_ClientTracing, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._call(continuation, client_call_details, request)


class _UnaryStream(_ClientTracing, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._call(continuation, client_call_details, request)


class _StreamUnary(_ClientTracing, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._call(continuation, client_call_details, request_iterator)


class _StreamStream(_ClientTracing, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._call(continuation, client_call_details, request_iterator)
