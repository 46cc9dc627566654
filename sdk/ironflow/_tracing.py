"""The worker's spans: `run <function id>` per execution and `step <step id>` per step it executes.

The run span continues the trace the server started at the emit (the job's `trace_context`, set by
the worker-gateway's dispatch span); a job without one starts a trace. Only the OpenTelemetry API is
used: with no provider configured (the default) every span is a no-op, and the worker exports spans
only when the application set up a provider, globally or passed to `Worker(tracer_provider=...)`.

Replayed (memoized) steps get no span: nothing runs. Control signals (a yield, a lost lease, a failed
step re-raised by a parent) are not errors of the span they pass through; the attribute keys are the
ones the services use (`services/core/telemetry/_names.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from ironflow.v1 import runs_pb2

TRACER_NAME = "ironflow.worker"

SPAN_RUN = "run"
SPAN_STEP = "step"

ATTR_RUN_ID = "ironflow.run.id"
ATTR_RUN_ATTEMPT = "ironflow.run.attempt"
ATTR_RUN_OUTCOME = "ironflow.run.outcome"  # completed, failed, step_failed, yielded, or none
ATTR_FUNCTION_ID = "ironflow.function.id"
ATTR_STEP_ID = "ironflow.step.id"
ATTR_STEP_NAME = "ironflow.step.name"
ATTR_STEP_KIND = "ironflow.step.kind"
ATTR_STEP_ATTEMPT = "ironflow.step.attempt"


def get_tracer(provider: trace.TracerProvider | None = None) -> trace.Tracer:
    """The worker's tracer: from `provider`, else from the global provider (looked up lazily, so a
    provider the application sets up after creating the worker still counts)."""
    return trace.get_tracer(TRACER_NAME, tracer_provider=provider)


@contextmanager
def run_span(tracer: trace.Tracer, job: runs_pb2.Job) -> Iterator[Span]:
    # On an empty context, not the current one: a job belongs to its run's trace, not to whatever
    # the worker's connection task happens to be inside.
    parent = propagate.extract(dict(job.trace_context), context=Context())
    with tracer.start_as_current_span(
        f"{SPAN_RUN} {job.function_id}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={
            ATTR_RUN_ID: job.run_id,
            ATTR_FUNCTION_ID: job.function_id,
            ATTR_RUN_ATTEMPT: job.attempt,
        },
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def record_outcome(span: Span, report: runs_pb2.JobReport) -> None:
    outcome = report.WhichOneof("outcome")
    span.set_attribute(ATTR_RUN_OUTCOME, outcome or "none")
    if outcome == "failed":
        span.set_status(Status(StatusCode.ERROR, report.failed.message))


@contextmanager
def step_span(tracer: trace.Tracer, run_id: str, checkpoint: runs_pb2.StepCheckpoint) -> Iterator[Span]:
    with tracer.start_as_current_span(
        f"{SPAN_STEP} {checkpoint.step_id}",
        attributes={
            ATTR_RUN_ID: run_id,
            ATTR_STEP_ID: checkpoint.step_id,
            ATTR_STEP_NAME: checkpoint.name,
            ATTR_STEP_KIND: checkpoint.kind,
            ATTR_STEP_ATTEMPT: checkpoint.attempt,
        },
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
