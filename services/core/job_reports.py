"""Shape checks on a job report, wherever it comes from (a pull worker through the gateway, a push
endpoint's answer): a malformed report is refused before it joins a batch, so one bad report never
sinks the others."""

from __future__ import annotations

from ironflow.v1 import runs_pb2

from .errors import invalid_argument

_REPORTABLE = (runs_pb2.STEP_STATUS_RUNNING, runs_pb2.STEP_STATUS_COMPLETED, runs_pb2.STEP_STATUS_FAILED)


def check_report(report: runs_pb2.JobReport, *, field: str) -> None:
    """Raise INVALID_ARGUMENT naming the first malformed field of `report`."""
    if not report.run_id:
        raise invalid_argument(f"{field}.run_id", "is required")
    if not report.lease_token:
        raise invalid_argument(f"{field}.lease_token", "is required")
    for index, checkpoint in enumerate(report.checkpoints):
        if not checkpoint.step_id:
            raise invalid_argument(f"{field}.checkpoints[{index}].step_id", "is required")
        if checkpoint.status not in _REPORTABLE:
            raise invalid_argument(
                f"{field}.checkpoints[{index}].status", "must be RUNNING, COMPLETED or FAILED"
            )
    if report.WhichOneof("outcome") == "yielded":
        if not report.yielded.yields:
            raise invalid_argument(f"{field}.yielded.yields", "needs at least one yielded step")
        for index, step_yield in enumerate(report.yielded.yields):
            _check_yield(step_yield, field=f"{field}.yielded.yields[{index}]")


def _check_yield(step_yield: runs_pb2.StepYield, *, field: str) -> None:
    if not step_yield.step_id:
        raise invalid_argument(f"{field}.step_id", "is required")
    kind = step_yield.WhichOneof("kind")
    if kind is None:
        raise invalid_argument(f"{field}.kind", "one of sleep, wait_for_event or invoke is required")
    if kind == "sleep" and not (
        step_yield.sleep.HasField("wake_at") or step_yield.sleep.HasField("duration")
    ):
        raise invalid_argument(f"{field}.sleep", "wake_at or duration is required")
    if kind == "wait_for_event" and not step_yield.wait_for_event.event:
        raise invalid_argument(f"{field}.wait_for_event.event", "is required")
    if kind == "invoke" and not step_yield.invoke.function_id:
        raise invalid_argument(f"{field}.invoke.function_id", "is required")
