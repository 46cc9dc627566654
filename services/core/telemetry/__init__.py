"""OpenTelemetry tracing: setup from the standard `OTEL_*` variables, the RPC interceptors, and the
carriers that take a run's trace context across every hop.

A run's trace follows it everywhere: the RPC edges carry W3C `traceparent`/`tracestate` in gRPC
metadata (grpcio client interceptors inject, the connect-python server interceptor extracts); the
event's firehose entry carries the same fields; the run row keeps the context it was created under
(`input["trace"]`), and every job of the run hands it on (`Job.trace_context`), so dispatches made
minutes later by other requests, and the worker's spans, join the trace that began at the emit.

Off by default (`OTEL_TRACES_EXPORTER` unset or `none`): no provider, no interceptors, and `tracer()`
is the API's no-op tracer, so the hooks in the services cost a function call.

Span names and attributes are all in `_names.py` (the worker's in `sdk/ironflow/_tracing.py`).
"""

from ._carriers import extract_trace, inject_trace, record_dispatch, span
from ._client import client_interceptors
from ._names import (
    ATTR_EVENT_DUPLICATE,
    ATTR_EVENT_ID,
    ATTR_EVENT_NAME,
    ATTR_FUNCTION_ID,
    ATTR_RUN_ATTEMPT,
    ATTR_RUN_CREATED,
    ATTR_RUN_ID,
    ATTR_WORKER_ID,
    ATTR_WORKER_TRANSPORT,
    QUIET_PROCEDURES,
    SPAN_CREATE_RUN,
    SPAN_DISPATCH,
    SPAN_EMIT,
    TRACER_NAME,
)
from ._server import ServerTracingInterceptor, server_interceptors
from ._setup import setup_tracing, shutdown_tracing, tracer, tracing_enabled

__all__ = [
    "ATTR_EVENT_DUPLICATE",
    "ATTR_EVENT_ID",
    "ATTR_EVENT_NAME",
    "ATTR_FUNCTION_ID",
    "ATTR_RUN_ATTEMPT",
    "ATTR_RUN_CREATED",
    "ATTR_RUN_ID",
    "ATTR_WORKER_ID",
    "ATTR_WORKER_TRANSPORT",
    "QUIET_PROCEDURES",
    "SPAN_CREATE_RUN",
    "SPAN_DISPATCH",
    "SPAN_EMIT",
    "TRACER_NAME",
    "ServerTracingInterceptor",
    "client_interceptors",
    "extract_trace",
    "inject_trace",
    "record_dispatch",
    "server_interceptors",
    "setup_tracing",
    "shutdown_tracing",
    "span",
    "tracer",
    "tracing_enabled",
]
