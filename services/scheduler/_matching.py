"""What a stored event does to runs already under way: resume the waits it matches, cancel the runs
whose function declares `cancel_on` for it.

Waits are found by index, never by scanning: open waits are keyed by event name and, when their
`match` implies `async.<path> == <value from the run's own event>`, by that path and value. An
incoming event is looked up once per distinct key path among the open waits for its name; only the
waits it finds (plus unkeyed waits, whose expressions gave no key) have their expression evaluated.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ironflow.services.core.cel_keys import key_text, lookup_path
from ironflow.services.core.storage import runs

from ._catalog import CompiledFunction
from ._matchers import MatchCache, event_variables
from ._store import ACTIVE_STATUSES, ENDED_STATUSES, lock_run
from ._system_events import SystemEvents
from ._waits import any_open_event_wait, event_candidates, event_key_paths, indexed_value, resolve_wait
from ._yields import finish_waited_step

log = logging.getLogger("ironflow.scheduler")


async def has_open_waits(conn: AsyncConnection, event_name: str) -> bool:
    return await any_open_event_wait(conn, event_name)


async def resume_waits(
    conn: AsyncConnection,
    event: dict[str, Any],
    *,
    now: datetime,
    events: SystemEvents,
    matchers: MatchCache,
    dialect: str,
) -> list[str]:
    """Resolve every open wait `event` (stored form) matches; returns the resumed run ids."""
    candidate = event_variables(event)
    waits: list[sa.Row[Any]] = []
    for path in await event_key_paths(conn, event["name"]):
        if path is None:
            waits += await event_candidates(conn, event["name"], None, None)
            continue
        found, value = lookup_path(candidate, path.split("."))
        text = key_text(value) if found else None
        if text is not None:
            waits += await event_candidates(conn, event["name"], path, indexed_value(text))
    # One read of the candidates' runs (their trigger events feed `event` in the expression); only
    # the runs whose wait matches are then locked and resumed.
    by_id = await _runs_by_id(conn, {wait.run_id for wait in waits})
    resumed: list[str] = []
    for wait in sorted(waits, key=lambda row: row.created_at):
        candidate_run = by_id.get(wait.run_id)
        if candidate_run is None or candidate_run.status in ENDED_STATUSES:
            continue
        if wait.match and not _matches(matchers, wait.match, candidate_run, candidate):
            continue
        run = await lock_run(conn, wait.run_id, dialect=dialect)
        if run is None or run.status in ENDED_STATUSES:
            continue
        if not await resolve_wait(conn, wait.id, now=now, event_id=event["id"]):
            continue
        await finish_waited_step(
            conn, run.id, wait.step_id, now=now, events=events, output=event, notice={"event_id": event["id"]}
        )
        resumed.append(run.id)
    return resumed


async def _runs_by_id(conn: AsyncConnection, run_ids: set[str]) -> dict[str, sa.Row[Any]]:
    found: dict[str, sa.Row[Any]] = {}
    ids = sorted(run_ids)
    for start in range(0, len(ids), 500):
        query = sa.select(runs.c.id, runs.c.status, runs.c.input).where(
            runs.c.id.in_(ids[start : start + 500])
        )
        found.update({row.id: row for row in await conn.execute(query)})
    return found


def _matches(matchers: MatchCache, text: str, run: sa.Row[Any], candidate: dict[str, Any]) -> bool:
    try:
        matcher = matchers.get(text)
    except Exception:  # noqa: BLE001 - validated when the wait was registered; never stop the others
        log.warning("run %s: wait expression no longer compiles: %s", run.id, text)
        return False
    return matcher.expression.matches({"event": event_variables(run.input["event"]), "async": candidate})


async def runs_to_cancel(
    conn: AsyncConnection, functions: list[CompiledFunction], event: dict[str, Any]
) -> list[sa.Row[Any]]:
    """Active runs of `functions` that `event` cancels through their `cancel_on` (the run's own
    trigger event is `event` in the condition, the cancelling one is `async`)."""
    candidate = event_variables(event)
    found: list[sa.Row[Any]] = []
    for function in functions:
        conditions = function.cancelled_by(event["name"])
        if not conditions:
            continue
        rows = await conn.execute(
            sa.select(runs).where(
                runs.c.function_id == function.id,
                runs.c.status.in_(ACTIVE_STATUSES),
                runs.c.event_id != event["id"],
            )
        )
        for run in rows:
            variables = {"event": event_variables(run.input["event"]), "async": candidate}
            if any(
                trigger.condition is None or trigger.condition.matches(variables) for trigger in conditions
            ):
                found.append(run)
    return found
