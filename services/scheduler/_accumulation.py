"""Debounce and batching as the scheduler applies them: the compiled rules of a function.

Both gather the matching events of one key into a single run that has not started yet (`pending
runs`, in `_pending_runs.py`):

- Debounce (`period`, `key`, `max_wait`): a burst of events starts one run, with the burst's last
  event, once `period` has passed without another event, or `max_wait` after the burst's first one.
- Batching (`max_size`, `timeout`, `key`): one run receives up to `max_size` events (`Job.events`,
  `ctx.events`), due when the batch is full or `timeout` after its first event.

Keys follow the admission controls' rules (`_admission.event_key`): CEL over `event`, compared as
values; a key that fails or gives null or "" is the one shared empty key, as is "no key".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ironflow.services.core.cel import Expression, compile_expression
from ironflow.v1 import functions_pb2

from ._admission import event_key

DEBOUNCE = "debounce"
BATCHING = "batching"
# The registry's bounds (`services/registry/_validation.py` checks the same numbers).
MAX_BATCH_SIZE = 1000


@dataclass(frozen=True)
class DebounceRule:
    period: timedelta
    # None: the run waits for `period` of quiet however long the burst goes on.
    max_wait: timedelta | None
    key: Expression | None

    @property
    def control(self) -> str:
        return DEBOUNCE


@dataclass(frozen=True)
class BatchingRule:
    max_size: int
    timeout: timedelta
    key: Expression | None

    @property
    def control(self) -> str:
        return BATCHING


Accumulation = DebounceRule | BatchingRule


def compile_accumulation(definition: functions_pb2.FunctionDefinition, *, field: str) -> Accumulation | None:
    """The function's debounce or batching, or None when it has neither. The registry validated them
    (and refuses both at once); a definition stored before that is read leniently: debounce wins
    over batching, and a part out of range leaves the control out or is clamped."""
    if definition.HasField("debounce"):
        debounce = definition.debounce
        period = debounce.period.ToTimedelta()
        if period > timedelta(0):
            max_wait = debounce.max_wait.ToTimedelta() if debounce.HasField("max_wait") else None
            return DebounceRule(
                period=period,
                max_wait=None if max_wait is None else max(max_wait, period),
                key=_key(debounce.key, field=f"{field}.debounce.key"),
            )
    if definition.HasField("batching"):
        batching = definition.batching
        timeout = batching.timeout.ToTimedelta()
        if batching.max_size >= 1 and timeout > timedelta(0):
            return BatchingRule(
                max_size=min(batching.max_size, MAX_BATCH_SIZE),
                timeout=timeout,
                key=_key(batching.key, field=f"{field}.batching.key"),
            )
    return None


def accumulation_key(rule: Accumulation, variables: Mapping[str, Any]) -> str:
    """The hashed key of an event (`variables` as trigger conditions see them)."""
    return event_key(rule.key, variables)


def _key(text: str, *, field: str) -> Expression | None:
    return compile_expression(text, field=field) if text else None
