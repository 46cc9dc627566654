"""Compiled `wait_for_event` match expressions, shared by every wait with the same text.

Thousands of runs usually wait with one expression (`async.data.orderId == event.data.orderId`) and
different trigger events, so compiling once per text, not per wait, is what keeps matching cheap.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ironflow.services.core.cel import Expression, compile_expression
from ironflow.services.core.cel_keys import EqualityKey, equality_key

MAX_CACHED = 1024


@dataclass(frozen=True)
class Matcher:
    expression: Expression
    # Present when the expression implies `async.<path> == <value from event>`: waits are indexed by it.
    key: EqualityKey | None


class MatchCache:
    def __init__(self, max_size: int = MAX_CACHED) -> None:
        self._max_size = max_size
        self._entries: OrderedDict[str, Matcher] = OrderedDict()

    def get(self, text: str, *, field: str = "match") -> Matcher:
        """The compiled matcher; ServiceError INVALID_ARGUMENT naming `field` when `text` is invalid."""
        cached = self._entries.get(text)
        if cached is not None:
            self._entries.move_to_end(text)
            return cached
        matcher = Matcher(expression=compile_expression(text, field=field), key=equality_key(text))
        self._entries[text] = matcher
        if len(self._entries) > self._max_size:
            self._entries.popitem(last=False)
        return matcher


def event_variables(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored event (as kept with a run or a wait) as CEL sees it: name, data, id, timestamp, metadata."""
    timestamp = stored.get("timestamp")
    when: datetime | None = None
    if isinstance(timestamp, str):
        when = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    return {
        "name": stored.get("name", ""),
        "data": stored.get("data") or {},
        "id": stored.get("id", ""),
        "timestamp": when,
        "metadata": stored.get("metadata") or {},
    }
