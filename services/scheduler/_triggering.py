"""What one event does to one matching function, inside the trigger's transaction.

The flow controls apply in a fixed order. Admission (the rate limit, then idempotency) may skip the
event; a throttle gives the run a later start; debounce and batching gather the event into a pending
run; otherwise a new run is created, due at once. Concurrency limits and priority come later, when
the run is handed to a worker (`_concurrency.py`, `_priority.py`). Every key is evaluated before the
transaction opens (`EventKeys.of`): the transaction holds locks, CEL needs none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from ironflow.services.core.ids import IdSource

from ._accumulation import accumulation_key
from ._admission import AdmissionKeys, admit
from ._catalog import CompiledFunction
from ._pending_runs import start_event_run
from ._system_events import SystemEvents
from ._throttle import throttle_start


@dataclass(frozen=True)
class EventKeys:
    """One event's hashed keys for one function's controls (None: the function has no such control)."""

    admission: AdmissionKeys | None
    throttle: str | None
    pending: str | None

    @classmethod
    def of(cls, function: CompiledFunction, variables: Mapping[str, Any]) -> EventKeys:
        return cls(
            admission=function.admission.keys(variables) if function.admission is not None else None,
            throttle=function.throttle.key_of(variables) if function.throttle is not None else None,
            pending=(
                accumulation_key(function.accumulation, variables)
                if function.accumulation is not None
                else None
            ),
        )


async def run_for_event(
    conn: AsyncConnection,
    function: CompiledFunction,
    event: dict[str, Any],
    keys: EventKeys,
    *,
    now: datetime,
    ids: IdSource,
    dialect: str,
    events: SystemEvents,
) -> str | None:
    """The id of the run the event (stored form) starts or joins, or None when admission skipped it
    (announced as `system.function.<id>.skipped` with the reason)."""
    if function.admission is not None and keys.admission is not None:
        refused = await admit(
            conn,
            function.admission,
            keys.admission,
            function_id=function.id,
            event_id=event["id"],
            now=now,
            dialect=dialect,
            accumulating=function.accumulation is not None,
        )
        if refused is not None:
            skipped = {"event_id": event["id"], "event_name": event["name"], "reason": refused}
            events.function(function.id, "skipped", skipped)
            return None
    available_at = now
    if function.throttle is not None and keys.throttle is not None:
        available_at = await throttle_start(
            conn,
            function.throttle,
            keys.throttle,
            function_id=function.id,
            event_id=event["id"],
            now=now,
            dialect=dialect,
        )
    return await start_event_run(
        conn,
        function,
        event,
        keys.pending,
        now=now,
        ids=ids,
        dialect=dialect,
        events=events,
        available_at=available_at,
    )
