"""Which functions an event starts: trigger patterns and CEL conditions, compiled once per version.

The registry owns function definitions; the scheduler keeps a compiled copy. The copy is refreshed
when the registry says something changed (`invalidate`, wired by whoever runs both), when the
registry's revision moved (`revision`: one read of the stream per lookup, so a registration that
finished before an event was emitted is seen by the trigger of that event even in another process),
and otherwise at most `max_age` old. Compiled triggers are
kept per (function id, version): a refresh recompiles only what changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ironflow.services.core.cel import Expression, compile_expression
from ironflow.services.core.cron import CronSchedule, parse_schedule
from ironflow.services.core.errors import ServiceError
from ironflow.services.core.ids import Clock, utc_now
from ironflow.services.core.subjects import NamePattern
from ironflow.v1 import functions_pb2

from ._accumulation import Accumulation, compile_accumulation
from ._admission import Admission, compile_admission
from ._concurrency import ConcurrencyLimit, compile_concurrency
from ._options import RunOptions
from ._priority import Priority, compile_priority
from ._throttle import ThrottleRule, compile_throttle

log = logging.getLogger("ironflow.scheduler")

# Every active function with its current version (the registry's ListFunctions, all pages).
FunctionSource = Callable[[], Awaitable[list[functions_pb2.Function]]]


@dataclass(frozen=True)
class EventTrigger:
    pattern: NamePattern
    condition: Expression | None

    def matches(self, name: str, variables: dict[str, Any]) -> bool:
        if not self.pattern.matches(name):
            return False
        return self.condition is None or self.condition.matches(variables)


@dataclass(frozen=True)
class CronTrigger:
    schedule: CronSchedule
    # Fire the latest tick missed while no scheduler was running (only that one).
    catch_up: bool

    @property
    def key(self) -> tuple[str, str]:
        """What tells two cron triggers of one function apart: (schedule, zone)."""
        return self.schedule.schedule, self.schedule.timezone


@dataclass(frozen=True)
class CompiledFunction:
    id: str
    version: int
    mode: str
    triggers: tuple[EventTrigger, ...]
    options: RunOptions
    # Events that cancel active runs; conditions see `event` (the run's trigger) and `async` (this one).
    cancel_on: tuple[EventTrigger, ...] = ()
    # Push mode: where the dispatcher POSTs its runs.
    endpoint_url: str = ""
    # Cron schedules that start runs (fired by `_cron.py`), one per (schedule, zone).
    crons: tuple[CronTrigger, ...] = ()
    # Rate limit and idempotency: whether a matching event may start a run (`_admission.py`).
    admission: Admission | None = None
    # Debounce or batching: matching events gather into one run not started yet (`_pending_runs.py`).
    accumulation: Accumulation | None = None
    # Throttle: when a run an event starts may begin (`_throttle.py`).
    throttle: ThrottleRule | None = None
    # How many of its runs may execute at once, per key (`_concurrency.py`).
    concurrency: tuple[ConcurrencyLimit, ...] = ()
    # The head start its runs get in the dispatch order (`_priority.py`).
    priority: Priority | None = None

    @property
    def ordered(self) -> bool:
        """Whether dispatching its runs needs more than "oldest due first" (limits or priority)."""
        return bool(self.concurrency) or self.priority is not None

    def matches(self, name: str, variables: dict[str, Any]) -> bool:
        return any(trigger.matches(name, variables) for trigger in self.triggers)

    def cancelled_by(self, name: str) -> list[EventTrigger]:
        return [trigger for trigger in self.cancel_on if trigger.pattern.matches(name)]


def compile_function(function: functions_pb2.Function) -> CompiledFunction:
    definition = function.definition
    triggers = [
        _event_trigger(trigger.event, f"functions[{definition.id}].triggers[{index}]")
        for index, trigger in enumerate(definition.triggers)
        if trigger.WhichOneof("kind") == "event"
    ]
    cancel_on = [
        _event_trigger(trigger, f"functions[{definition.id}].cancel_on[{index}]")
        for index, trigger in enumerate(definition.cancel_on)
    ]
    crons: dict[tuple[str, str], CronTrigger] = {}
    for index, trigger in enumerate(definition.triggers):
        if trigger.WhichOneof("kind") == "cron":
            cron = _cron_trigger(trigger.cron, f"functions[{definition.id}].triggers[{index}].cron")
            if cron is not None:
                # The same schedule twice is one schedule; it catches up if either says so.
                known = crons.get(cron.key)
                crons[cron.key] = cron if known is None or cron.catch_up else known
    return CompiledFunction(
        id=definition.id,
        version=function.version,
        mode="push" if definition.mode == functions_pb2.FUNCTION_MODE_PUSH else "pull",
        triggers=tuple(triggers),
        options=RunOptions.from_definition(definition),
        cancel_on=tuple(cancel_on),
        endpoint_url=definition.endpoint_url,
        crons=tuple(crons.values()),
        admission=compile_admission(definition, field=f"functions[{definition.id}]"),
        concurrency=compile_concurrency(definition, field=f"functions[{definition.id}]"),
        priority=compile_priority(definition.priority, field=f"functions[{definition.id}].priority"),
        throttle=compile_throttle(definition, field=f"functions[{definition.id}]"),
        accumulation=compile_accumulation(definition, field=f"functions[{definition.id}]"),
    )


def _cron_trigger(trigger: functions_pb2.CronTrigger, field: str) -> CronTrigger | None:
    try:
        schedule = parse_schedule(trigger.schedule, trigger.timezone, field=field, now=utc_now())
    except ServiceError as exc:
        # Registered before schedules were checked (or the zone left this machine's tz database):
        # that trigger cannot fire, but the function's event triggers still work.
        log.warning("cron trigger %s cannot fire: %s", field, exc.message)
        return None
    return CronTrigger(schedule=schedule, catch_up=trigger.catch_up)


def _event_trigger(trigger: functions_pb2.EventTrigger, field: str) -> EventTrigger:
    condition = getattr(trigger, "if")
    return EventTrigger(
        pattern=NamePattern.parse(trigger.event, field=f"{field}.event"),
        condition=compile_expression(condition, field=f"{field}.if") if condition else None,
    )


class FunctionCatalog:
    def __init__(
        self,
        source: FunctionSource,
        *,
        max_age: timedelta = timedelta(seconds=5),
        clock: Clock = utc_now,
        revision: Callable[[], Awaitable[str | None]] | None = None,
    ) -> None:
        self._source = source
        self._revision_source = revision
        self._revision: str | None = None
        self._max_age = max_age
        self._clock = clock
        self._functions: dict[str, CompiledFunction] = {}
        self._loaded_at: datetime | None = None
        self._generation = 0
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        self._generation += 1
        self._loaded_at = None

    async def functions(self) -> list[CompiledFunction]:
        if self._revision_source is not None:
            await self._follow_revision()
        if self._loaded_at is None or self._clock() - self._loaded_at > self._max_age:
            async with self._lock:
                if self._loaded_at is None or self._clock() - self._loaded_at > self._max_age:
                    await self._refresh()
        return list(self._functions.values())

    async def known(self) -> dict[str, CompiledFunction]:
        """The functions as last loaded, refreshed only once `max_age` old (no revision read): for
        decisions a few seconds' staleness cannot make wrong, only slower (dispatch order)."""
        if self._loaded_at is None or self._clock() - self._loaded_at > self._max_age:
            await self.functions()
        return dict(self._functions)

    async def get(self, function_id: str) -> CompiledFunction | None:
        for function in await self.functions():
            if function.id == function_id:
                return function
        return None

    async def _follow_revision(self) -> None:
        assert self._revision_source is not None
        try:
            current = await self._revision_source()
        except Exception:
            log.debug("functions revision unavailable", exc_info=True)
            return
        if current == self._revision and self._loaded_at is not None:
            return
        async with self._lock:
            if current != self._revision or self._loaded_at is None:
                await self._refresh()
                self._revision = current

    async def _refresh(self) -> None:
        started, generation = self._clock(), self._generation
        fresh: dict[str, CompiledFunction] = {}
        for function in await self._source():
            known = self._functions.get(function.definition.id)
            if known is not None and known.version == function.version:
                fresh[known.id] = known
                continue
            try:
                fresh[function.definition.id] = compile_function(function)
            except Exception:
                # The registry validated it; a definition that no longer compiles must not stop others.
                log.exception("cannot compile triggers of function %s", function.definition.id)
        self._functions = fresh
        # A change announced while we were reading may be missing from `fresh`: stay stale.
        self._loaded_at = started if generation == self._generation else None
