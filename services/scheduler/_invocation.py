"""Creating runs: for a stored event (triggers) or for a direct invocation (`Invoke`, `step.invoke`).

An invoked run has no stored event; it gets a synthetic one, `ironflow.function.invoked` with the
invoker's data, kept with the run like any trigger event. Its id is derived from what makes the
invocation unique (the parent's run and step, or the caller's idempotency key), and runs are unique
per (event, function), so a replayed invocation finds the run it already started.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from ironflow.services.core import telemetry
from ironflow.services.core.ids import IdSource

from ._catalog import CompiledFunction
from ._concurrency import hold_keys, run_keys
from ._matchers import event_variables
from ._store import insert_run
from ._system_events import SystemEvents

INVOKED_EVENT_NAME = "ironflow.function.invoked"


def invoked_event(
    fallback_id: str,
    *,
    function_id: str,
    data: dict[str, Any],
    now: datetime,
    parent: tuple[str, str] | None = None,
    idempotency_key: str = "",
) -> dict[str, Any]:
    """The synthetic trigger event of an invoked run (stored form, as `event_to_json` gives)."""
    if parent is not None:
        event_id = _derived_id(f"parent:{parent[0]}/{parent[1]}")
    elif idempotency_key:
        event_id = _derived_id(f"key:{function_id}:{idempotency_key}")
    else:
        event_id = fallback_id
    metadata = {"function_id": function_id}
    if parent is not None:
        metadata |= {"parent_run_id": parent[0], "parent_step_id": parent[1]}
    return {
        "id": event_id,
        "name": INVOKED_EVENT_NAME,
        "data": data,
        "metadata": metadata,
        "timestamp": now.isoformat(),
        "sequence": 0,
    }


def _derived_id(key: str) -> str:
    return "evt_inv_" + hashlib.sha256(key.encode()).hexdigest()[:40]


async def start_run(
    conn: AsyncConnection,
    function: CompiledFunction,
    event: dict[str, Any],
    *,
    now: datetime,
    ids: IdSource,
    dialect: str,
    events: SystemEvents,
    parent_run_id: str | None = None,
    parent_step_id: str | None = None,
    available_at: datetime | None = None,
) -> str:
    """Create the run of `function` for `event` unless it exists; returns its id. The run is due at
    `available_at` (default `now`)."""
    run_id, _ = await create_run(
        conn,
        function,
        event,
        now=now,
        ids=ids,
        dialect=dialect,
        events=events,
        parent_run_id=parent_run_id,
        parent_step_id=parent_step_id,
        available_at=available_at,
    )
    return run_id


async def create_run(
    conn: AsyncConnection,
    function: CompiledFunction,
    event: dict[str, Any],
    *,
    now: datetime,
    ids: IdSource,
    dialect: str,
    events: SystemEvents,
    parent_run_id: str | None = None,
    parent_step_id: str | None = None,
    available_at: datetime | None = None,
    extra_input: Mapping[str, Any] | None = None,
) -> tuple[str, bool]:
    """`start_run`, also saying whether the run is new (False: the event had started it already).
    `available_at` makes it due later than now (a throttle delayed it; its `created` event says
    when); `extra_input` is kept in its input beside the event."""
    due = now if available_at is None else available_at
    with telemetry.span(
        f"{telemetry.SPAN_CREATE_RUN} {function.id}",
        attributes={telemetry.ATTR_FUNCTION_ID: function.id, telemetry.ATTR_EVENT_ID: event["id"]},
    ) as span:
        run_input: dict[str, Any] = {**(extra_input or {}), "event": event}
        # Kept with the run (no column of its own: the run's input is JSON), so every later job of
        # the run continues this trace however much later, and from whichever request, it is leased.
        if trace := telemetry.inject_trace({}):
            run_input["trace"] = trace
        priority = 0
        keys = []
        if function.ordered:
            variables = {"event": event_variables(event)}
            if function.priority is not None:
                priority = function.priority.of(variables)
            if function.concurrency:
                keys = run_keys(function.id, function.concurrency, variables)
                run_input["concurrency"] = [key.to_json() for key in keys]
        run_id, created = await insert_run(
            conn,
            {
                "id": ids("run"),
                "function_id": function.id,
                "function_version": function.version,
                "event_id": event["id"],
                "status": "queued",
                "attempt": 1,
                "input": run_input,
                "options": function.options.to_json(),
                "parent_run_id": parent_run_id,
                "parent_step_id": parent_step_id,
                "available_at": due,
                "execution_sequence": 0,
                "priority": priority,
                "created_at": now,
                "updated_at": now,
            },
            dialect=dialect,
        )
        span.set_attributes({telemetry.ATTR_RUN_ID: run_id, telemetry.ATTR_RUN_CREATED: created})
    if created:
        await hold_keys(conn, run_id, function.id, keys, dialect=dialect, new_run=True)
        notice: dict[str, Any] = {"function_id": function.id, "event_id": event["id"], "status": "queued"}
        if parent_run_id:
            notice["parent_run_id"] = parent_run_id
        if due > now:
            notice["available_at"] = due.isoformat()
        events.run(run_id, "created", notice)
        events.due = True
    return run_id, created
