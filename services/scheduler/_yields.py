"""Suspending and resuming runs: the steps that yield (`sleep`, `wait_for_event`, `invoke`).

A worker that reaches such a step reports a yield and stops. The run is suspended here: each yielded
step gets a wait row (a timer, an event wait or a child run) and the run goes to `sleeping` (timers
only) or `waiting`. Whatever resolves a wait (the timer loop, a matching event, the child's end)
completes or fails that step and makes the run due again; the next job replays the handler with the
step's outcome memoized.

A run yields several steps at once from parallel branches; it is resumed when any one of them
resolves, and the branches still pending simply yield again, which finds their waits in place (the
first registration stands: a sleep keeps its original wake time).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from google.protobuf import duration_pb2, timestamp_pb2
from sqlalchemy.ext.asyncio import AsyncConnection

from ironflow.services.core.cel_keys import key_text
from ironflow.services.core.errors import ServiceError, invalid_argument, not_found
from ironflow.services.core.ids import IdSource
from ironflow.services.core.protojson import struct_to_dict
from ironflow.services.core.storage import runs
from ironflow.services.core.subjects import validate_name
from ironflow.v1 import runs_pb2

from ._catalog import CompiledFunction
from ._invocation import invoked_event, start_run
from ._matchers import MatchCache, event_variables
from ._store import fenced_off, get_step, save_step, update_run
from ._system_events import SystemEvents
from ._waits import get_wait, indexed_value, insert_wait

SUSPENDED_STATUSES = ("sleeping", "waiting")
# How long `invoke` waits for the child when the worker names no timeout (the child keeps running).
DEFAULT_INVOKE_TIMEOUT = timedelta(seconds=30)


@dataclass(frozen=True, kw_only=True)
class YieldContext:
    now: datetime
    events: SystemEvents
    dialect: str
    ids: IdSource
    matchers: MatchCache
    # Invoke targets, looked up before the transaction (None: no such active function).
    functions: Mapping[str, CompiledFunction | None]


async def apply_yields(
    conn: AsyncConnection, run: sa.Row[Any], yields: list[runs_pb2.StepYield], ctx: YieldContext
) -> None:
    """Register what each yielded step waits for, then suspend the run (or requeue it when every
    yielded step has already been resolved)."""
    pending: set[str] = set()
    # A yielded step that resolved after this job was leased: the handler can go further right now.
    resolved_meanwhile = False
    for index, step_yield in enumerate(yields):
        field = f"yielded.yields[{index}]"
        if not step_yield.step_id:
            raise invalid_argument(f"{field}.step_id", "is required")
        step = await get_step(conn, run.id, step_yield.step_id)
        if step is not None and step.status in ("completed", "failed"):
            resolved_meanwhile = True
            continue
        wait = await get_wait(conn, run.id, step_yield.step_id)
        if wait is not None:
            if wait.resolved_at is None:
                pending.add(wait.kind)
            continue
        kind = await _register(conn, run, step_yield, field, ctx)
        if kind is None:
            resolved_meanwhile = True
        else:
            pending.add(kind)
    if pending and not resolved_meanwhile:
        status = "sleeping" if pending == {"sleep"} else "waiting"
        await update_run(
            conn, run.id, status=status, worker_id=None, available_at=None, **fenced_off(ctx.now)
        )
        ctx.events.run(run.id, status, {"function_id": run.function_id})
        if run.input and run.input.get("concurrency"):
            ctx.events.due = True  # suspended, it holds no concurrency slot: queued runs can go
    else:
        # Nothing left to wait for before the next execution (the pending waits stay registered and
        # are yielded again, finding their rows).
        await update_run(conn, run.id, worker_id=None, available_at=ctx.now, **fenced_off(ctx.now))
        ctx.events.due = True


async def _register(
    conn: AsyncConnection, run: sa.Row[Any], step_yield: runs_pb2.StepYield, field: str, ctx: YieldContext
) -> str | None:
    """Store one new yield; returns the kind of wait it opened (None: the step resolved at once)."""
    name = step_yield.name or step_yield.step_id
    kind = step_yield.WhichOneof("kind")
    now = ctx.now
    common = {"name": name, "attempt": 1, "error": None, "started_at": now, "ended_at": None}
    wait = {"id": ctx.ids("wait"), "run_id": run.id, "step_id": step_yield.step_id, "created_at": now}
    if kind == "sleep":
        wake_at = _when(step_yield.sleep, "wake_at", "duration", now)
        if wake_at is None:
            raise invalid_argument(f"{field}.sleep", "wake_at or duration is required")
        await insert_wait(conn, {**wait, "kind": "sleep", "timeout_at": wake_at})
        await save_step(
            conn, run.id, step_yield.step_id, kind="sleep", status="sleeping", output=None, **common
        )
        ctx.events.step(
            run.id, step_yield.step_id, "sleeping", {"name": name, "wake_at": wake_at.isoformat()}
        )
        ctx.events.timer_at(wake_at)
        return "sleep"
    if kind == "wait_for_event":
        request = step_yield.wait_for_event
        try:
            event_name = validate_name(request.event, field=f"{field}.wait_for_event.event")
            matcher = (
                ctx.matchers.get(request.match, field=f"{field}.wait_for_event.match")
                if request.match
                else None
            )
        except ServiceError as exc:
            # A bad name or expression is the handler's bug: the step fails for good and the handler
            # sees it as a StepError it may catch, rather than the run retrying forever.
            await _fail_at_once(conn, run, step_yield, kind="wait_for_event", exc=exc, ctx=ctx)
            return None
        path: str | None = None
        value: str | None = None
        if matcher is not None and matcher.key is not None:
            try:
                reference = matcher.key.reference.evaluate({"event": event_variables(run.input["event"])})
                text = key_text(reference)
            except Exception:  # noqa: BLE001 - a key that cannot be computed only means no index
                text = None
            if text is not None:
                path, value = ".".join(matcher.key.path), indexed_value(text)
        timeout_at = _when(request, "timeout_at", "timeout", now)
        await insert_wait(
            conn,
            {
                **wait,
                "kind": "event",
                "event_name": event_name,
                "match": request.match or None,
                "match_path": path,
                "match_value": value,
                "timeout_at": timeout_at,
            },
        )
        await save_step(
            conn, run.id, step_yield.step_id, kind="wait_for_event", status="waiting", output=None, **common
        )
        notice: dict[str, Any] = {"name": name, "event": event_name, "match": request.match}
        if timeout_at is not None:
            notice["timeout_at"] = timeout_at.isoformat()
            ctx.events.timer_at(timeout_at)
        ctx.events.step(run.id, step_yield.step_id, "waiting", notice)
        return "event"
    if kind == "invoke":
        return await _invoke(conn, run, step_yield, field, ctx)
    raise invalid_argument(f"{field}.kind", "one of sleep, wait_for_event or invoke is required")


async def _invoke(
    conn: AsyncConnection, run: sa.Row[Any], step_yield: runs_pb2.StepYield, field: str, ctx: YieldContext
) -> str | None:
    request = step_yield.invoke
    name = step_yield.name or step_yield.step_id
    function = ctx.functions.get(request.function_id)
    if function is None:
        error = not_found("function", request.function_id)
        await _fail_at_once(
            conn,
            run,
            step_yield,
            kind="invoke",
            exc=error,
            ctx=ctx,
            output={"function_id": request.function_id, "run_id": ""},
        )
        return None
    event = invoked_event(
        "",
        function_id=function.id,
        data=struct_to_dict(request.data),
        now=ctx.now,
        parent=(run.id, step_yield.step_id),
    )
    child_id = await start_run(
        conn,
        function,
        event,
        now=ctx.now,
        ids=ctx.ids,
        dialect=ctx.dialect,
        events=ctx.events,
        parent_run_id=run.id,
        parent_step_id=step_yield.step_id,
    )
    handle = {"function_id": function.id, "run_id": child_id}
    common = {"name": name, "kind": "invoke", "attempt": 1, "error": None, "started_at": ctx.now}
    if request.detached:
        await save_step(
            conn, run.id, step_yield.step_id, status="completed", output=handle, ended_at=ctx.now, **common
        )
        ctx.events.step(run.id, step_yield.step_id, "completed", {"name": name, "output": handle})
        return None
    timeout_at = _when(request, "timeout_at", "timeout", ctx.now) or ctx.now + DEFAULT_INVOKE_TIMEOUT
    await insert_wait(
        conn,
        {
            "id": ctx.ids("wait"),
            "run_id": run.id,
            "step_id": step_yield.step_id,
            "kind": "invoke",
            "child_run_id": child_id,
            "timeout_at": timeout_at,
            "created_at": ctx.now,
        },
    )
    await save_step(
        conn, run.id, step_yield.step_id, status="waiting", output=handle, ended_at=None, **common
    )
    ctx.events.timer_at(timeout_at)
    notice = {"name": name, **handle, "timeout_at": timeout_at.isoformat()}
    ctx.events.step(run.id, step_yield.step_id, "waiting", notice)
    return "invoke"


def _when(message: Any, absolute: str, relative: str, now: datetime) -> datetime | None:
    """A yield's time: `relative` (a Duration) on the scheduler's clock, else `absolute` as given."""
    if message.HasField(relative):
        duration: duration_pb2.Duration = getattr(message, relative)
        return now + max(duration.ToTimedelta(), timedelta(0))
    if message.HasField(absolute):
        stamp: timestamp_pb2.Timestamp = getattr(message, absolute)
        return stamp.ToDatetime(tzinfo=UTC)
    return None


async def _fail_at_once(
    conn: AsyncConnection,
    run: sa.Row[Any],
    step_yield: runs_pb2.StepYield,
    *,
    kind: str,
    exc: ServiceError,
    ctx: YieldContext,
    output: Any = None,
) -> None:
    name = step_yield.name or step_yield.step_id
    error = {"code": exc.code.value, "message": exc.message, "non_retryable": True}
    await save_step(
        conn,
        run.id,
        step_yield.step_id,
        name=name,
        kind=kind,
        status="failed",
        attempt=1,
        output=output,
        error=error,
        started_at=ctx.now,
        ended_at=ctx.now,
    )
    ctx.events.step(run.id, step_yield.step_id, "failed", {"name": name, "attempt": 1, "error": error})


async def finish_waited_step(
    conn: AsyncConnection,
    run_id: str,
    step_id: str,
    *,
    now: datetime,
    events: SystemEvents,
    output: Any = None,
    error: dict[str, Any] | None = None,
    notice: dict[str, Any] | None = None,
) -> None:
    """A wait resolved: its step completes (or fails, with `error`) and the run becomes due."""
    step = await get_step(conn, run_id, step_id)
    name = step.name if step is not None else step_id
    status = "failed" if error is not None else "completed"
    await save_step(
        conn,
        run_id,
        step_id,
        name=name,
        kind=step.kind if step is not None else "run",
        status=status,
        attempt=1,
        output=output,
        error=error,
        started_at=step.started_at if step is not None and step.started_at else now,
        ended_at=now,
    )
    data: dict[str, Any] = {"name": name, "attempt": 1, **(notice or {})}
    if error is not None:
        data["error"] = error
    else:
        data["output"] = output
    events.step(run_id, step_id, status, data)
    await wake(conn, run_id, now=now, events=events)


async def wake(conn: AsyncConnection, run_id: str, *, now: datetime, events: SystemEvents) -> None:
    """Make a suspended run due now (a run that is not suspended resumes by itself when its worker
    re-yields and finds the step resolved)."""
    result = await conn.execute(
        runs.update()
        .where(runs.c.id == run_id, runs.c.status.in_(SUSPENDED_STATUSES))
        .values(status="running", available_at=now, updated_at=now)
    )
    if result.rowcount:
        events.due = True
