"""Running one job: replay memoized steps, run the rest, and report how the execution ended."""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry.trace import Tracer, get_current_span

from ironflow.v1 import runs_pb2

from ._client import event_from_proto
from ._context import Context
from ._errors import NonRetryableError, StepError
from ._function import Function
from ._signals import LeaseLostSignal, SegmentEndSignal, StepFailedSignal, YieldSignal
from ._steps import JobChannel, Publisher, StepBudget, Steps
from ._tracing import get_tracer, record_outcome, run_span
from ._values import error_info, to_value

log = logging.getLogger("ironflow.worker")


async def execute(
    job: runs_pb2.Job,
    function: Function,
    channel: JobChannel,
    publisher: Publisher | None = None,
    budget: StepBudget | None = None,
    *,
    tracer: Tracer | None = None,
) -> None:
    """Run `job` to its next outcome. Cancellation (asyncio.CancelledError) propagates unreported:
    the server cancelled the run or handed it to someone else. With a `budget` (push mode) the
    execution may also end between two steps, reporting progress without an outcome. Traced as
    `run <function id>` in the run's trace (a no-op unless a tracer provider is set up)."""
    tracer = tracer or get_tracer()
    with run_span(tracer, job):
        await _execute(job, function, channel, Steps(job, channel, publisher, budget, tracer=tracer))


async def _execute(job: runs_pb2.Job, function: Function, channel: JobChannel, steps: Steps) -> None:
    logger = logging.LoggerAdapter(
        logging.getLogger(f"ironflow.function.{function.id}"), {"run_id": job.run_id, "attempt": job.attempt}
    )
    ctx = Context(
        job=job,
        event=event_from_proto(job.event),
        events=[event_from_proto(event) for event in job.events],
        steps=steps,
        logger=logger,
    )
    report = runs_pb2.JobReport(
        run_id=job.run_id, lease_token=job.lease_token, execution_sequence=job.execution_sequence
    )
    try:
        result: Any = await function.handler(ctx)
        report.completed.CopyFrom(to_value(result, what=f"the return value of function {function.id!r}"))
    except StepFailedSignal as failed:
        report.checkpoints.extend(failed.checkpoints)
        report.step_failed = True
    except YieldSignal as suspended:
        report.yielded.yields.extend(suspended.yields)
    except SegmentEndSignal:
        pass  # no outcome: the checkpoints already reported are this segment's progress
    except LeaseLostSignal:
        log.warning("run %s: lease lost; another worker has it now", job.run_id)
        return
    except Exception as exc:  # noqa: BLE001 - a handler error is reported; the scheduler decides retries
        final = isinstance(exc, NonRetryableError | StepError) or job.last_attempt
        if final and steps.has_compensations:
            try:
                await steps.run_compensations()
            except LeaseLostSignal:
                log.warning("run %s: lease lost while compensating", job.run_id)
                return
        report.failed.CopyFrom(error_info(exc, non_retryable=isinstance(exc, NonRetryableError)))
    record_outcome(get_current_span(), report)
    if not await channel.report(report, wait=True):
        log.warning("run %s: the server refused the outcome as stale", job.run_id)
