"""Running one job: replay memoized steps, run the rest, and report how the execution ended."""

from __future__ import annotations

import logging
from typing import Any

from ironflow.v1 import runs_pb2

from ._client import event_from_proto
from ._context import (
    Context,
    JobChannel,
    LeaseLostSignal,
    StepFailedSignal,
    Steps,
    error_info,
    to_value,
)
from ._errors import NonRetryableError
from ._function import Function

log = logging.getLogger("ironflow.worker")


async def execute(job: runs_pb2.Job, function: Function, channel: JobChannel) -> None:
    """Run `job` to its next outcome. Cancellation (asyncio.CancelledError) propagates unreported:
    the server cancelled the run or handed it to someone else."""
    steps = Steps(job, channel)
    logger = logging.LoggerAdapter(
        logging.getLogger(f"ironflow.function.{function.id}"), {"run_id": job.run_id, "attempt": job.attempt}
    )
    ctx = Context(job=job, event=event_from_proto(job.event), steps=steps, logger=logger)
    report = runs_pb2.JobReport(
        run_id=job.run_id, lease_token=job.lease_token, execution_sequence=job.execution_sequence
    )
    try:
        result: Any = await function.handler(ctx)
        report.completed.CopyFrom(to_value(result, what=f"the return value of function {function.id!r}"))
    except StepFailedSignal as failed:
        report.checkpoints.append(failed.checkpoint)
        report.step_failed = True
    except LeaseLostSignal:
        log.warning("run %s: lease lost; another worker has it now", job.run_id)
        return
    except NonRetryableError as exc:
        report.failed.CopyFrom(error_info(exc, non_retryable=True))
    except Exception as exc:  # noqa: BLE001 - a handler error is reported; the scheduler decides retries
        report.failed.CopyFrom(error_info(exc))
    if not await channel.report(report, wait=True):
        log.warning("run %s: the server refused the outcome as stale", job.run_id)
