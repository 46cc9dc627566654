"""ResumeRun: give a failed or paused run another go, keeping what its steps already produced.

The steps that did not complete are forgotten (with `from_step`, that step and every step started after it as
well), so the next job runs them again; every earlier step stays memoized and is not re-executed.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ironflow.services.core.errors import ErrorCode, ServiceError, invalid_argument
from ironflow.services.core.storage import steps

from ._concurrency import hold_keys, keys_of
from ._options import RunOptions
from ._store import fenced_off, update_run
from ._system_events import SystemEvents
from ._waits import delete_waits

RESUMABLE_STATUSES = ("failed", "paused")


async def resume(
    conn: AsyncConnection,
    run: sa.Row[Any],
    from_step: str,
    *,
    now: datetime,
    events: SystemEvents,
    dialect: str,
) -> list[str]:
    """Requeue the locked `run`; returns the ids of the steps that will run again."""
    if run.status not in RESUMABLE_STATUSES:
        raise ServiceError(
            ErrorCode.FAILED_PRECONDITION,
            f"run {run.id!r} is {run.status}; only failed or paused runs can be resumed",
        )
    rows = list(await conn.execute(sa.select(steps).where(steps.c.run_id == run.id)))
    # Anything unfinished, and the undos of a failed saga: the resumed run does that work afresh.
    forget = {row.step_id for row in rows if row.status != "completed" or row.kind == "compensate"}
    if from_step:
        start = next((row for row in rows if row.step_id == from_step), None)
        if start is None:
            raise invalid_argument("from_step", f"run {run.id!r} has no step {from_step!r}")
        forget |= {
            row.step_id
            for row in rows
            if row.started_at is not None
            and start.started_at is not None
            and row.started_at >= start.started_at
        }
    forgotten = sorted(forget)
    if forgotten:
        await conn.execute(steps.delete().where(steps.c.run_id == run.id, steps.c.step_id.in_(forgotten)))
        await delete_waits(conn, run.id, forgotten)
    timeout = RunOptions.from_json(run.options).timeout
    await update_run(
        conn,
        run.id,
        status="running" if run.started_at is not None else "queued",
        attempt=1,
        output=None,
        error=None,
        ended_at=None,
        worker_id=None,
        available_at=now,
        timeout_at=now + timedelta(seconds=timeout) if timeout else None,
        **fenced_off(now),
    )
    # An ended run left its concurrency keys; active again, it takes its place in them once more.
    await hold_keys(conn, run.id, run.function_id, keys_of(run.input), dialect=dialect)
    events.run(
        run.id, "resumed", {"function_id": run.function_id, "from_step": from_step, "forgotten": forgotten}
    )
    events.due = True
    return forgotten
