"""Rows of the runs and steps tables as protobuf messages, and errors as stored JSON."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ironflow.services.core.protojson import (
    dict_to_struct,
    duration_seconds,
    python_to_value,
    struct_to_dict,
    to_timestamp,
)
from ironflow.v1 import common_pb2, runs_pb2

from ._options import RunOptions

RUN_STATUS: dict[str, runs_pb2.RunStatus.ValueType] = {
    "queued": runs_pb2.RUN_STATUS_QUEUED,
    "running": runs_pb2.RUN_STATUS_RUNNING,
    "sleeping": runs_pb2.RUN_STATUS_SLEEPING,
    "waiting": runs_pb2.RUN_STATUS_WAITING,
    "completed": runs_pb2.RUN_STATUS_COMPLETED,
    "failed": runs_pb2.RUN_STATUS_FAILED,
    "cancelled": runs_pb2.RUN_STATUS_CANCELLED,
    "paused": runs_pb2.RUN_STATUS_PAUSED,
}
RUN_STATUS_NAMES = {value: name for name, value in RUN_STATUS.items()}

STEP_STATUS: dict[str, runs_pb2.StepStatus.ValueType] = {
    "running": runs_pb2.STEP_STATUS_RUNNING,
    "completed": runs_pb2.STEP_STATUS_COMPLETED,
    "failed": runs_pb2.STEP_STATUS_FAILED,
    "retrying": runs_pb2.STEP_STATUS_RETRYING,
    "sleeping": runs_pb2.STEP_STATUS_SLEEPING,
    "waiting": runs_pb2.STEP_STATUS_WAITING,
    "cancelled": runs_pb2.STEP_STATUS_CANCELLED,
}


def error_to_json(error: common_pb2.ErrorInfo) -> dict[str, Any]:
    document: dict[str, Any] = {"code": error.code or "ERROR", "message": error.message}
    if error.details:
        document["details"] = error.details
    if error.non_retryable:
        document["non_retryable"] = True
    return document


def error_from_json(document: dict[str, Any] | None) -> common_pb2.ErrorInfo | None:
    if not document:
        return None
    return common_pb2.ErrorInfo(
        code=document.get("code", ""),
        message=document.get("message", ""),
        details=document.get("details", ""),
        non_retryable=bool(document.get("non_retryable", False)),
    )


def retry_after(error: common_pb2.ErrorInfo) -> timedelta | None:
    if not error.HasField("retry_after"):
        return None
    return timedelta(seconds=max(duration_seconds(error.retry_after), 0.0))


def _set_time(message: Any, name: str, value: datetime | None) -> None:
    if value is not None:
        getattr(message, name).CopyFrom(to_timestamp(value))


def run_to_proto(row: sa.Row[Any]) -> runs_pb2.Run:
    run = runs_pb2.Run(
        id=row.id,
        function_id=row.function_id,
        function_version=row.function_version,
        event_id=row.event_id or "",
        status=RUN_STATUS[row.status],
        attempt=row.attempt,
        parent_run_id=row.parent_run_id or "",
        parent_step_id=row.parent_step_id or "",
    )
    if row.output is not None or row.status == "completed":
        run.output.CopyFrom(python_to_value(row.output))
    error = error_from_json(row.error)
    if error is not None:
        run.error.CopyFrom(error)
    _set_time(run, "created_at", row.created_at)
    _set_time(run, "started_at", row.started_at)
    _set_time(run, "ended_at", row.ended_at)
    return run


def step_to_proto(row: sa.Row[Any]) -> runs_pb2.Step:
    step = runs_pb2.Step(
        id=row.step_id, name=row.name, status=STEP_STATUS[row.status], attempt=row.attempt, kind=row.kind
    )
    if row.status == "completed":
        step.output.CopyFrom(python_to_value(row.output))
    error = error_from_json(row.error)
    if error is not None:
        step.error.CopyFrom(error)
    _set_time(step, "started_at", row.started_at)
    _set_time(step, "ended_at", row.ended_at)
    return step


def memoized_step(row: sa.Row[Any]) -> runs_pb2.MemoizedStep | None:
    """What a worker needs to replay a step; None for a step that has to run (again) from scratch."""
    if row.status not in ("completed", "failed", "retrying"):
        return None
    memo = runs_pb2.MemoizedStep(step_id=row.step_id, status=STEP_STATUS[row.status], attempt=row.attempt)
    # A failed invoke keeps its child's handle as output, so the handler's InvokeError can name it.
    if row.status == "completed" or row.output is not None:
        memo.output.CopyFrom(python_to_value(row.output))
    error = error_from_json(row.error)
    if error is not None:
        memo.error.CopyFrom(error)
    return memo


def event_to_json(event: common_pb2.Event) -> dict[str, Any]:
    """The triggering event as kept with the run (the scheduler never reads the events table)."""
    return {
        "id": event.id,
        "name": event.name,
        "data": struct_to_dict(event.data),
        "metadata": dict(event.metadata),
        "timestamp": event.timestamp.ToDatetime().isoformat() + "Z" if event.HasField("timestamp") else None,
        "sequence": event.sequence,
    }


def event_from_json(document: dict[str, Any]) -> common_pb2.Event:
    # Engine events that start runs (cron ticks) are kept with their namespace, `system`, whose
    # subjects have no prefix; everything else that starts a run is in `events`.
    namespace = document.get("namespace") or "events"
    event = common_pb2.Event(
        id=document["id"],
        name=document["name"],
        namespace=namespace,
        subject=document["name"] if namespace == "system" else f"{namespace}:{document['name']}",
        data=dict_to_struct(document.get("data") or {}),
        metadata=document.get("metadata") or {},
        sequence=document.get("sequence") or 0,
    )
    if document.get("timestamp"):
        event.timestamp.FromJsonString(document["timestamp"])
    return event


def job_of(
    row: Any,
    memo_rows: list[Any],
    *,
    token: str,
    expires_at: datetime,
    batch: list[dict[str, Any]] | None = None,
) -> runs_pb2.Job:
    """The job of a claimed run; `batch` is a batch run's events (`Job.events`)."""
    event = event_from_json(row.input["event"])
    memo = [step for step in (memoized_step(r) for r in memo_rows) if step is not None]
    job = runs_pb2.Job(
        run_id=row.id,
        function_id=row.function_id,
        function_version=row.function_version,
        event=event,
        steps=memo,
        attempt=max(row.attempt, 1),
        lease_token=token,
        execution_sequence=row.execution_sequence + 1,
        parent_run_id=row.parent_run_id or "",
        last_attempt=last_attempt(row),
        trace_context=row.input.get("trace") or {},  # the trace the run was created in
        events=[event_from_json(document) for document in batch or ()],
    )
    job.lease_expires_at.CopyFrom(to_timestamp(expires_at))
    return job


def last_attempt(row: Any) -> bool:
    """Whether a handler error in this execution ends the run for good (the retry policy is spent)."""
    options = RunOptions.from_json(row.options)
    return options.exhausted(max(row.attempt, 1)) and options.on_exhausted != "pause"
