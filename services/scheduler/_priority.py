"""Priority: the order in which a function's due runs are handed to workers.

A priority is a number of seconds, an integer or a CEL expression over `event` evaluated when the run
is created, clamped to [-MAX_PRIORITY, MAX_PRIORITY]. Due runs are dispatched in order of
`available_at - priority`: a run of priority 100 goes ahead of every run of priority 0 that became
due less than 100 seconds before it, and behind the ones that have waited longer.

That is the starvation bound: a run is never overtaken by a run that became due more than
`2 * MAX_PRIORITY` seconds (20 minutes) after it, so low priority delays a run, never parks it. A
strict order (all of tier A before any of tier B) would let a steady stream of gold runs hold a
bronze one back forever. Inngest orders its queue the same way (a priority expression shifts a run by
up to 600 seconds); the rule and the figure are theirs, the code is ours.

The value is kept on the run row (`runs.priority`), so a later registration never reorders runs
already queued, as with every other option a run keeps of its function version.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ironflow.services.core.cel import CelEvaluationError, Expression, compile_expression
from ironflow.services.core.storage import runs

MAX_PRIORITY = 600
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class Priority:
    constant: int = 0
    expression: Expression | None = None

    def of(self, variables: Mapping[str, Any]) -> int:
        """The priority of a run whose trigger event CEL sees as `variables["event"]`. An expression
        that fails (a missing field) or gives something other than a number means 0."""
        if self.expression is None:
            return self.constant
        try:
            value = self.expression.evaluate(variables)
        except CelEvaluationError:
            return 0
        if isinstance(value, bool) or not isinstance(value, int | float):
            return 0
        if not math.isfinite(value):
            return 0
        return clamp(int(value))


def is_integer(text: str) -> bool:
    return bool(_INTEGER.fullmatch(text.strip()))


def clamp(value: int) -> int:
    return max(-MAX_PRIORITY, min(MAX_PRIORITY, value))


def compile_priority(text: str, *, field: str) -> Priority | None:
    """The function's priority, or None when it has none (or the constant 0, which changes nothing)."""
    text = text.strip()
    if not text:
        return None
    if is_integer(text):
        value = clamp(int(text))
        return Priority(constant=value) if value else None
    return Priority(expression=compile_expression(text, field=field))


def queue_order(dialect: str) -> sa.ColumnElement[Any]:
    """`available_at - priority seconds`, what due runs of prioritised functions are ordered by."""
    priority = sa.func.coalesce(runs.c.priority, 0)
    if dialect == "postgresql":
        return runs.c.available_at - sa.func.make_interval(0, 0, 0, 0, 0, 0, priority)
    # SQLite keeps datetimes as ISO text, which julianday() reads (in days).
    return sa.func.julianday(runs.c.available_at) - priority / 86400.0
