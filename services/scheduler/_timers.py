"""Firing timers: sleeps that are over, event waits and invokes past their deadline.

Each due wait is fired in the transaction that locks its run with `FOR UPDATE SKIP LOCKED`, and the
wait itself is resolved by a conditional update, so scheduler replicas firing side by side never
fire one timer twice and never wait on each other. A run that is busy (a report is being applied) is
skipped and fired on the next round.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ._store import ENDED_STATUSES, get_step, lock_run
from ._system_events import SystemEvents
from ._waits import due_waits, resolve_wait
from ._yields import finish_waited_step


@dataclass(frozen=True)
class FiredTimers:
    fired: int
    # Due waits left for the next round because their run was locked by someone else.
    skipped: int


async def fire_due_waits(
    conn: AsyncConnection,
    *,
    now: datetime,
    events_seen_until: datetime,
    events: SystemEvents,
    dialect: str,
    limit: int,
) -> FiredTimers:
    fired = skipped = 0
    for wait in await due_waits(conn, now=now, events_seen_until=events_seen_until, limit=limit):
        run = await lock_run(conn, wait.run_id, dialect=dialect, skip_locked=True)
        if run is None:
            skipped += 1
            continue
        if not await resolve_wait(conn, wait.id, now=now):
            continue
        if run.status in ENDED_STATUSES:
            continue  # closed along with its run: nothing to resume
        await _fire(conn, wait, now=now, events=events)
        fired += 1
    return FiredTimers(fired=fired, skipped=skipped)


async def _fire(conn: AsyncConnection, wait: sa.Row[Any], *, now: datetime, events: SystemEvents) -> None:
    if wait.kind == "sleep":
        await finish_waited_step(conn, wait.run_id, wait.step_id, now=now, events=events)
    elif wait.kind == "event":
        # A timed-out wait is not a failure: the handler gets None and decides.
        await finish_waited_step(
            conn, wait.run_id, wait.step_id, now=now, events=events, notice={"timed_out": True}
        )
    else:
        step = await get_step(conn, wait.run_id, wait.step_id)
        handle = step.output if step is not None else None
        waited = (wait.timeout_at - wait.created_at).total_seconds()
        error = {
            "code": "TIMEOUT",
            "message": f"child run {wait.child_run_id} did not end within {waited:g}s (it keeps running)",
            "non_retryable": True,
        }
        await finish_waited_step(
            conn, wait.run_id, wait.step_id, now=now, events=events, output=handle, error=error
        )
