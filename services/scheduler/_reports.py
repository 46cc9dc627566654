"""Applying what a worker reports for a job: step checkpoints, and the outcome that ends the job.

The scheduler owns every retry decision. A worker only says what happened (this step failed with
this error at attempt n; the handler raised; it returned); the run's stored retry policy decides
whether that step runs again after a backoff, whether its error goes back to the handler (which may
catch it), or whether the run fails or pauses. Workers of any SDK version therefore retry alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ironflow.services.core.errors import invalid_argument
from ironflow.services.core.protojson import value_to_python
from ironflow.v1 import common_pb2, runs_pb2

from ._concurrency import drop_keys, keys_of
from ._convert import error_to_json, retry_after
from ._options import RunOptions
from ._store import fenced_off, get_step, insert_step, lock_run, save_step, update_run
from ._system_events import SystemEvents
from ._waits import close_waits, open_child_wait, resolve_wait
from ._yields import YieldContext, apply_yields, finish_waited_step

# Steps that undo a completed step when the run fails for good (`step.compensate`).
COMPENSATION_KIND = "compensate"


async def apply_report(
    conn: AsyncConnection, run: sa.Row[Any], report: runs_pb2.JobReport, ctx: YieldContext
) -> None:
    """Record `report` for the locked, lease-checked `run`."""
    now, events = ctx.now, ctx.events
    options = RunOptions.from_json(run.options)
    failed = await _record_checkpoints(conn, run.id, report.checkpoints, now=now, events=events)

    retry_at: datetime | None = None
    next_attempt = run.attempt
    pause = False
    for checkpoint, at in failed:
        decision = await _record_step_failure(
            conn, run.id, checkpoint, options, now=now, at=at, events=events
        )
        if decision == "pause":
            pause = True
        elif isinstance(decision, datetime):
            retry_at = decision if retry_at is None else max(retry_at, decision)
            next_attempt = max(next_attempt, checkpoint.attempt + 1)

    outcome = report.WhichOneof("outcome")
    if outcome is None and not failed:
        return
    if outcome == "completed":
        await end_run(
            conn, run, "completed", now=now, events=events, output=value_to_python(report.completed)
        )
    elif outcome == "failed":
        await _handler_failed(conn, run, report.failed, options, now=now, events=events)
    elif outcome == "yielded":
        await apply_yields(conn, run, list(report.yielded.yields), ctx)
    elif pause:
        await _pause(conn, run, now=now, events=events)
    else:
        # A step failed (outcome step_failed, or a bare FAILED checkpoint): run again when it is due;
        # with no retry left the error is handed back to the handler at once.
        await _requeue(conn, run, at=retry_at or now, attempt=next_attempt, now=now)
        events.due = True


async def _record_checkpoints(
    conn: AsyncConnection,
    run_id: str,
    checkpoints: Sequence[runs_pb2.StepCheckpoint],
    *,
    now: datetime,
    events: SystemEvents,
) -> list[tuple[runs_pb2.StepCheckpoint, datetime]]:
    """Store progress and outcomes; returns the step failures the retry policy must decide on, each
    with the time it happened."""
    failed: list[tuple[runs_pb2.StepCheckpoint, datetime]] = []
    for checkpoint, at in zip(checkpoints, checkpoint_times(checkpoints, now), strict=True):
        if checkpoint.status != runs_pb2.STEP_STATUS_FAILED:
            await _record_checkpoint(conn, run_id, checkpoint, now=at, events=events)
        elif checkpoint.kind == COMPENSATION_KIND:
            await _record_compensation_failure(conn, run_id, checkpoint, now=at, events=events)
        else:
            failed.append((checkpoint, at))
    return failed


def checkpoint_times(checkpoints: Sequence[runs_pb2.StepCheckpoint], now: datetime) -> list[datetime]:
    """When each checkpoint happened, on the scheduler's clock. A report with several checkpoints (a
    push answer) spreads them back from `now` by the gaps the worker measured between them, so steps
    keep their order and durations; the worker's clock is never compared with ours."""
    if len(checkpoints) < 2 or not all(c.HasField("recorded_at") for c in checkpoints):
        return [now] * len(checkpoints)
    stamps = [c.recorded_at.ToDatetime(tzinfo=UTC) for c in checkpoints]
    latest = max(stamps)
    return [now - (latest - stamp) for stamp in stamps]


async def _record_checkpoint(
    conn: AsyncConnection,
    run_id: str,
    checkpoint: runs_pb2.StepCheckpoint,
    *,
    now: datetime,
    events: SystemEvents,
) -> None:
    common = {
        "name": checkpoint.name or checkpoint.step_id,
        "kind": checkpoint.kind or "run",
        "attempt": max(checkpoint.attempt, 1),
    }
    existing = await get_step(conn, run_id, checkpoint.step_id)
    if existing is not None and existing.status == "completed":
        return  # a late start notice or a replayed checkpoint: the first outcome stands
    notice: dict[str, Any] = {"name": common["name"], "attempt": common["attempt"]}
    if checkpoint.status == runs_pb2.STEP_STATUS_RUNNING:
        # A step seen for the first time is inserted straight away (it was just looked up).
        write = save_step if existing is not None else insert_step
        await write(
            conn,
            run_id,
            checkpoint.step_id,
            status="running",
            output=None,
            error=None,
            started_at=now,
            ended_at=None,
            **common,
        )
        events.step(run_id, checkpoint.step_id, "started", notice)
    elif checkpoint.status == runs_pb2.STEP_STATUS_COMPLETED:
        output = value_to_python(checkpoint.output)
        started_at = existing.started_at if existing is not None and existing.started_at else now
        write = save_step if existing is not None else insert_step
        await write(
            conn,
            run_id,
            checkpoint.step_id,
            status="completed",
            output=output,
            error=None,
            started_at=started_at,
            ended_at=now,
            **common,
        )
        events.step(run_id, checkpoint.step_id, "completed", {**notice, "output": output})
    else:
        raise invalid_argument(
            f"checkpoints[{checkpoint.step_id}].status", "a worker reports RUNNING, COMPLETED or FAILED"
        )


async def _record_step_failure(
    conn: AsyncConnection,
    run_id: str,
    checkpoint: runs_pb2.StepCheckpoint,
    options: RunOptions,
    *,
    now: datetime,
    at: datetime,
    events: SystemEvents,
) -> datetime | str:
    """Store a failed attempt (that failed `at`); returns when to retry, "final" (the handler sees the
    error) or "pause"."""
    attempt = max(checkpoint.attempt, 1)
    error = error_to_json(checkpoint.error)
    name = checkpoint.name or checkpoint.step_id
    existing = await get_step(conn, run_id, checkpoint.step_id)
    started_at = existing.started_at if existing is not None and existing.started_at else at
    common = {
        "name": name,
        "kind": checkpoint.kind or "run",
        "attempt": attempt,
        "output": None,
        "error": error,
        "started_at": started_at,
        "ended_at": at,
    }
    exhausted = options.exhausted(attempt)
    if checkpoint.error.non_retryable or exhausted:
        await save_step(conn, run_id, checkpoint.step_id, status="failed", **common)
        events.step(run_id, checkpoint.step_id, "failed", {"name": name, "attempt": attempt, "error": error})
        if exhausted and not checkpoint.error.non_retryable and options.on_exhausted == "pause":
            return "pause"
        return "final"
    delay = retry_after(checkpoint.error) or options.backoff(attempt)
    await save_step(conn, run_id, checkpoint.step_id, status="retrying", **common)
    events.step(
        run_id,
        checkpoint.step_id,
        "retrying",
        {"name": name, "attempt": attempt, "error": error, "retry_at": (now + delay).isoformat()},
    )
    return now + delay


async def _record_compensation_failure(
    conn: AsyncConnection,
    run_id: str,
    checkpoint: runs_pb2.StepCheckpoint,
    *,
    now: datetime,
    events: SystemEvents,
) -> None:
    """An undo failed: recorded as it is, never retried (the run is failing already, and the other
    undos still run)."""
    existing = await get_step(conn, run_id, checkpoint.step_id)
    error = error_to_json(checkpoint.error)
    name = checkpoint.name or checkpoint.step_id
    await save_step(
        conn,
        run_id,
        checkpoint.step_id,
        name=name,
        kind=COMPENSATION_KIND,
        status="failed",
        attempt=max(checkpoint.attempt, 1),
        output=None,
        error=error,
        started_at=existing.started_at if existing is not None and existing.started_at else now,
        ended_at=now,
    )
    events.step(run_id, checkpoint.step_id, "failed", {"name": name, "attempt": 1, "error": error})


async def _handler_failed(
    conn: AsyncConnection,
    run: sa.Row[Any],
    error: common_pb2.ErrorInfo,
    options: RunOptions,
    *,
    now: datetime,
    events: SystemEvents,
) -> None:
    """The handler raised outside any step: the same policy as a step, counted by run attempt."""
    attempt = max(run.attempt, 1)
    if error.non_retryable or options.exhausted(attempt):
        if options.on_exhausted == "pause" and not error.non_retryable:
            await _pause(conn, run, now=now, events=events)
            return
        await end_run(conn, run, "failed", now=now, events=events, error=error_to_json(error))
        return
    delay = retry_after(error) or options.backoff(attempt)
    await _requeue(conn, run, at=now + delay, attempt=attempt + 1, now=now)
    events.due = True


async def _requeue(
    conn: AsyncConnection, run: sa.Row[Any], *, at: datetime, attempt: int, now: datetime
) -> None:
    await update_run(conn, run.id, worker_id=None, available_at=at, attempt=attempt, **fenced_off(now))


async def _pause(conn: AsyncConnection, run: sa.Row[Any], *, now: datetime, events: SystemEvents) -> None:
    await update_run(conn, run.id, status="paused", worker_id=None, available_at=None, **fenced_off(now))
    events.run(run.id, "paused", {"function_id": run.function_id, "attempt": run.attempt})


async def end_run(
    conn: AsyncConnection,
    run: sa.Row[Any],
    status: str,
    *,
    now: datetime,
    events: SystemEvents,
    output: Any = None,
    error: dict[str, Any] | None = None,
) -> None:
    """Move a run to a final status and announce it; a parent invoking it is resumed."""
    await update_run(
        conn,
        run.id,
        status=status,
        output=output,
        error=error,
        ended_at=now,
        available_at=None,
        **fenced_off(now),
    )
    data: dict[str, Any] = {
        "function_id": run.function_id,
        "event_id": run.event_id,
        "status": status,
        "attempt": run.attempt,
    }
    if status == "completed":
        data["output"] = output
    if error is not None:
        data["error"] = error
    duration = now - run.started_at if run.started_at is not None else timedelta(0)
    data["duration_ms"] = round(duration.total_seconds() * 1000, 3)
    events.run(run.id, status, data)
    events.ended.append(run.id)
    if keys_of(run.input):
        await drop_keys(conn, run.id)
        events.due = True  # its slots are free: queued runs of the same keys can go
    await close_waits(conn, run.id, now=now)
    if run.parent_run_id:
        await _resume_parent(conn, run, status, now=now, events=events, output=output, error=error)


async def _resume_parent(
    conn: AsyncConnection,
    child: sa.Row[Any],
    status: str,
    *,
    now: datetime,
    events: SystemEvents,
    output: Any,
    error: dict[str, Any] | None,
) -> None:
    """The child of an `invoke` ended: the parent's invoke step gets its output, or fails with why."""
    wait = await open_child_wait(conn, child.id)
    if wait is None:
        return  # invoke_async, or the parent stopped waiting (timed out, ended)
    # Lock order is run before wait: take the parent, then check the wait is still ours to resolve.
    await lock_run(conn, wait.run_id, dialect=conn.dialect.name)
    if not await resolve_wait(conn, wait.id, now=now):
        return
    handle = {"function_id": child.function_id, "run_id": child.id}
    if status == "completed":
        await finish_waited_step(conn, wait.run_id, wait.step_id, now=now, events=events, output=output)
        return
    cause = error or {"code": status.upper(), "message": f"child run {status}"}
    failure = {
        "code": cause.get("code") or status.upper(),
        "message": f"{child.function_id} run {child.id} {status}: {cause.get('message', '')}",
        "non_retryable": True,
    }
    await finish_waited_step(
        conn, wait.run_id, wait.step_id, now=now, events=events, output=handle, error=failure
    )
