"""Trace context where no RPC carries it: firehose entries, the run row's JSON, `Job.trace_context`.

The W3C fields are written by the configured propagator (`OTEL_PROPAGATORS`, default tracecontext and
baggage), so each carrier is a plain `dict[str, str]` of `traceparent`, `tracestate` (when set), ...
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind

from ironflow.v1 import runs_pb2

from ._names import (
    ATTR_FUNCTION_ID,
    ATTR_RUN_ATTEMPT,
    ATTR_RUN_ID,
    ATTR_WORKER_ID,
    ATTR_WORKER_TRANSPORT,
    SPAN_DISPATCH,
)
from ._setup import tracer, tracing_enabled


def inject_trace(carrier: dict[str, str], context: Context | None = None) -> dict[str, str]:
    """Add the trace fields of `context` (default: the current one) to `carrier` and return it;
    outside a trace nothing is added."""
    propagate.inject(carrier, context=context)
    return carrier


def extract_trace(carrier: Mapping[str, str]) -> Context:
    """The context `carrier` holds, on an empty context (not on top of the current one)."""
    return propagate.extract(carrier, context=Context())


def span(
    name: str, *, attributes: Mapping[str, str | int | bool] | None = None
) -> AbstractContextManager[Span]:
    """An INTERNAL span of the services' tracer, current inside the `with` (a no-op when off)."""
    return tracer().start_as_current_span(name, attributes=attributes)


def record_dispatch(job: runs_pb2.Job, *, worker_id: str, transport: str) -> None:
    """Record handing `job` to a worker as a span in the run's trace, and make the job carry this
    span's context instead, so the worker's run span is its child. A job without a context (its run
    began while tracing was off) starts a trace here."""
    if not tracing_enabled():
        return
    parent = extract_trace(job.trace_context)
    asked = trace.get_current_span().get_span_context()  # e.g. the Poll that asked for work
    dispatched = tracer().start_span(
        f"{SPAN_DISPATCH} {job.function_id}",
        context=parent,
        kind=SpanKind.PRODUCER,
        links=[Link(asked)] if asked.is_valid else None,
        attributes={
            ATTR_RUN_ID: job.run_id,
            ATTR_FUNCTION_ID: job.function_id,
            ATTR_RUN_ATTEMPT: job.attempt,
            ATTR_WORKER_ID: worker_id,
            ATTR_WORKER_TRANSPORT: transport,
        },
    )
    carrier = inject_trace({}, trace.set_span_in_context(dispatched, parent))
    dispatched.end()
    job.trace_context.clear()
    job.trace_context.update(carrier)
