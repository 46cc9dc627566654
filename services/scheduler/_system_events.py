"""The engine's own lifecycle events, as they go on the firehose.

`system.run.<run_id>.<what>` and `system.run.<run_id>.step.<step_id>.<what>`, plus
`system.function.<id>.skipped` for an event a function's rate limit or idempotency refused. Step ids
may contain characters a subject token cannot (`:` of an occurrence counter is fine; `.` and `/` are
not), so they are escaped into one token: subscribers match `system.run.*.step.*.completed` reliably.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ironflow.services.core.firehose import FirehoseMessage
from ironflow.services.core.ids import IdSource


def step_token(step_id: str) -> str:
    """A step id as one subject token (`.` -> `~`, `/` -> `|`, spaces and wildcards -> `_`)."""
    return "".join(_TOKEN_ESCAPES.get(char, char) for char in step_id)


_TOKEN_ESCAPES = {".": "~", "/": "|", " ": "_", "*": "_", ">": "_", "\t": "_", "\n": "_"}


@dataclass
class SystemEvents:
    """Collects what a transaction did that others must hear about once it commits: lifecycle
    events for the firehose, runs that ended (waiters), runs that became due (dispatchers) and the
    earliest new timer (the timer loop)."""

    ids: IdSource
    now: datetime
    messages: list[FirehoseMessage] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    due: bool = False
    earliest_timer: datetime | None = None

    def timer_at(self, when: datetime) -> None:
        if self.earliest_timer is None or when < self.earliest_timer:
            self.earliest_timer = when

    def run(self, run_id: str, what: str, data: dict[str, Any]) -> None:
        self._add(f"system.run.{run_id}.{what}", {"run_id": run_id, **data})

    def function(self, function_id: str, what: str, data: dict[str, Any]) -> None:
        """`system.function.<id>.<what>`, as the registry announces `registered`."""
        self._add(f"system.function.{function_id}.{what}", {"function_id": function_id, **data})

    def step(self, run_id: str, step_id: str, what: str, data: dict[str, Any]) -> None:
        self._add(
            f"system.run.{run_id}.step.{step_token(step_id)}.{what}",
            {"run_id": run_id, "step_id": step_id, **data},
        )

    def engine_event(self, event: dict[str, Any], *, position: int | None = None) -> None:
        """Announce an engine event a run was started from (stored form, as `event_to_json` gives),
        under its own id; `position` puts it before messages added since (such as the run's
        `created`)."""
        message = FirehoseMessage(
            subject=event["name"], event_id=event["id"], timestamp=self.now, data=event["data"]
        )
        self.messages.insert(len(self.messages) if position is None else position, message)

    def _add(self, subject: str, data: dict[str, Any]) -> None:
        self.messages.append(
            FirehoseMessage(subject=subject, event_id=self.ids("evt"), timestamp=self.now, data=data)
        )
