"""Declaring functions: `@ironflow.function`, its triggers, retry policy and flow control (concurrency,
priority, throttle, rate limit, idempotency, debounce, batching).

The decorator only describes; nothing is sent until a worker connects (pull mode) or the app calls
`client.register` (push mode). The description becomes a `FunctionDefinition`, which the server
validates again, so a bad definition is refused however it reaches the server.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ironflow.v1 import functions_pb2

from ._durations import Duration, to_duration_proto, to_seconds

if TYPE_CHECKING:
    from ._context import Context

Handler = Callable[["Context"], Awaitable[Any]]

_FUNCTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_MODES = {"pull": functions_pb2.FUNCTION_MODE_PULL, "push": functions_pb2.FUNCTION_MODE_PUSH}
_MAX_THROTTLE_PERIOD = 7 * 24 * 3600.0
# The server's bounds for debounce and batching (it checks them again at registration).
MAX_BATCH_SIZE = 1000
_MAX_ACCUMULATION_SECONDS = 7 * 86_400.0


@dataclass(frozen=True)
class Retry:
    """How failed steps (and handler errors) are retried: `max_attempts` counts the first attempt."""

    max_attempts: int = 3
    initial_delay: Duration = 1.0
    factor: float = 2.0
    max_delay: Duration = 300.0
    on_exhausted: str = "fail"  # or "pause"

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ValueError(f"retry.max_attempts: must be an integer, got {self.max_attempts!r}")
        if not 1 <= self.max_attempts <= 100:
            raise ValueError(f"retry.max_attempts: must be between 1 and 100, got {self.max_attempts}")
        if self.factor < 1:
            raise ValueError(f"retry.factor: must be at least 1, got {self.factor}")
        to_seconds(self.initial_delay, field="retry.initial_delay")
        to_seconds(self.max_delay, field="retry.max_delay")
        if self.on_exhausted not in ("fail", "pause"):
            raise ValueError(f"retry.on_exhausted: must be 'fail' or 'pause', got {self.on_exhausted!r}")

    def to_proto(self) -> functions_pb2.RetryPolicy:
        return functions_pb2.RetryPolicy(
            max_attempts=self.max_attempts,
            initial_delay=to_duration_proto(self.initial_delay, field="retry.initial_delay"),
            factor=self.factor,
            max_delay=to_duration_proto(self.max_delay, field="retry.max_delay"),
            on_exhausted=self.on_exhausted,
        )


@dataclass(frozen=True)
class Throttle:
    """Start runs no faster than `limit` per `period` (at most 7 days) per value of the CEL `key` over
    `event` (one shared schedule without a key). Runs beyond that are delayed, not dropped: they stay
    queued and start in order, one every `period / limit`. After a quiet spell `burst` extra runs may
    start at once [0]. Exactly: in any window of length `period` at most `limit + burst` runs of a key
    are released to start."""

    limit: int
    period: Duration
    key: str | None = None
    burst: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise ValueError(f"throttle.limit: must be a positive integer, got {self.limit!r}")
        period = to_seconds(self.period, field="throttle.period")
        if not 0 < period <= _MAX_THROTTLE_PERIOD:
            raise ValueError(f"throttle.period: must be positive and at most 7 days, got {self.period!r}")
        if self.key is not None and (not isinstance(self.key, str) or not self.key):
            raise ValueError(
                f"throttle.key: must be a CEL expression such as 'event.data.userId', got {self.key!r}"
            )
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 0:
            raise ValueError(f"throttle.burst: must be an integer of at least 0, got {self.burst!r}")

    def to_proto(self) -> functions_pb2.Throttle:
        return functions_pb2.Throttle(
            limit=self.limit,
            period=to_duration_proto(self.period, field="throttle.period"),
            key=self.key or "",
            burst=self.burst,
        )


@dataclass(frozen=True)
class RateLimit:
    """Start at most `limit` runs per `period` (in any window of that length), per value of the CEL
    `key` over `event` (one shared limit without a key). Events over the limit start no run: they are
    skipped, not queued, and `system.function.<id>.skipped` says so (reason `rate_limited`)."""

    limit: int
    period: Duration
    key: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise ValueError(f"rate_limit.limit: must be a positive integer, got {self.limit!r}")
        if to_seconds(self.period, field="rate_limit.period") <= 0:
            raise ValueError(f"rate_limit.period: must be positive, got {self.period!r}")
        if self.key is not None and (not isinstance(self.key, str) or not self.key):
            raise ValueError(
                f"rate_limit.key: must be a CEL expression such as 'event.data.userId', got {self.key!r}"
            )

    def to_proto(self) -> functions_pb2.RateLimit:
        return functions_pb2.RateLimit(
            limit=self.limit,
            period=to_duration_proto(self.period, field="rate_limit.period"),
            key=self.key or "",
        )


@dataclass(frozen=True)
class Idempotency:
    """At most one run per value of the CEL `key` over `event` within `window` (24 hours by default):
    a later event with the same key starts no run (`system.function.<id>.skipped`, reason
    `idempotent`)."""

    key: str
    window: Duration = "24h"

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ValueError(
                f"idempotency.key: must be a CEL expression such as 'event.data.orderId', got {self.key!r}"
            )
        if to_seconds(self.window, field="idempotency.window") <= 0:
            raise ValueError(f"idempotency.window: must be positive, got {self.window!r}")

    def to_proto(self) -> functions_pb2.Idempotency:
        return functions_pb2.Idempotency(
            key=self.key, window=to_duration_proto(self.window, field="idempotency.window")
        )


def _check_key(key: str | None, *, field: str) -> None:
    if key is not None and (not isinstance(key, str) or not key):
        raise ValueError(f"{field}: must be a CEL expression such as 'event.data.userId', got {key!r}")


def _check_accumulation_span(value: Duration, *, field: str) -> float:
    seconds = to_seconds(value, field=field)
    if seconds <= 0:
        raise ValueError(f"{field}: must be positive, got {value!r}")
    if seconds > _MAX_ACCUMULATION_SECONDS:
        raise ValueError(f"{field}: must be at most 7 days, got {value!r}")
    return seconds


@dataclass(frozen=True)
class Debounce:
    """Run once per burst of events: the first matching event (per value of the CEL `key` over
    `event`) starts a run that waits until `period` has passed without another such event, then runs
    with the *last* event of the burst. `max_wait` caps the wait, counted from the burst's first
    event, so a steady stream still runs at least that often. Every event of the burst answers the
    emit with the same run id."""

    period: Duration
    key: str | None = None
    max_wait: Duration | None = None

    def __post_init__(self) -> None:
        period = _check_accumulation_span(self.period, field="debounce.period")
        _check_key(self.key, field="debounce.key")
        if self.max_wait is not None:
            max_wait = _check_accumulation_span(self.max_wait, field="debounce.max_wait")
            if max_wait < period:
                raise ValueError(f"debounce.max_wait: must be at least the period, got {self.max_wait!r}")

    def to_proto(self) -> functions_pb2.Debounce:
        debounce = functions_pb2.Debounce(
            period=to_duration_proto(self.period, field="debounce.period"), key=self.key or ""
        )
        if self.max_wait is not None:
            debounce.max_wait.CopyFrom(to_duration_proto(self.max_wait, field="debounce.max_wait"))
        return debounce


@dataclass(frozen=True)
class Batching:
    """Run once per batch of events: matching events (per value of the CEL `key` over `event`)
    gather into one run, which starts when `max_size` events have joined or `timeout` after the
    first one, whichever comes first. The handler gets them all as `ctx.events`, in arrival order
    (`ctx.event` is the first)."""

    max_size: int
    timeout: Duration
    key: str | None = None

    def __post_init__(self) -> None:
        size = self.max_size
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_BATCH_SIZE:
            raise ValueError(
                f"batching.max_size: must be an integer from 1 to {MAX_BATCH_SIZE}, got {size!r}"
            )
        _check_accumulation_span(self.timeout, field="batching.timeout")
        _check_key(self.key, field="batching.key")

    def to_proto(self) -> functions_pb2.Batching:
        return functions_pb2.Batching(
            max_size=self.max_size,
            timeout=to_duration_proto(self.timeout, field="batching.timeout"),
            key=self.key or "",
        )


@dataclass(frozen=True)
class Concurrency:
    """At most `limit` runs of the function execute at once, per value of the CEL `key` over `event`
    (in all without a key). Runs over the limit wait, in order, and start as slots free: when a run
    completes, fails, is cancelled, suspends on a sleep or wait, or its worker goes away."""

    limit: int
    key: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise ValueError(f"concurrency.limit: must be a positive integer, got {self.limit!r}")
        if self.key is not None and (not isinstance(self.key, str) or not self.key):
            raise ValueError(
                f"concurrency.key: must be a CEL expression such as 'event.data.customerId', got {self.key!r}"
            )

    def to_proto(self) -> functions_pb2.ConcurrencyLimit:
        return functions_pb2.ConcurrencyLimit(limit=self.limit, key=self.key or "")


# What `concurrency=` takes: one limit over all runs, a limit, or several.
ConcurrencySpec = int | Concurrency | Sequence[Concurrency]

# Priority is seconds of head start in the dispatch order (see `function`).
MAX_PRIORITY = 600


@dataclass(frozen=True)
class EventTrigger:
    event: str
    if_: str | None = None

    def to_proto(self) -> functions_pb2.Trigger:
        trigger = functions_pb2.EventTrigger(event=self.event)
        if self.if_:
            setattr(trigger, "if", self.if_)
        return functions_pb2.Trigger(event=trigger)


@dataclass(frozen=True)
class CronTrigger:
    schedule: str
    timezone: str | None = None
    catch_up: bool = False

    def to_proto(self) -> functions_pb2.Trigger:
        return functions_pb2.Trigger(
            cron=functions_pb2.CronTrigger(
                schedule=self.schedule, timezone=self.timezone or "", catch_up=self.catch_up
            )
        )


def on_event(event: str, if_: str | None = None) -> EventTrigger:
    """Start the function for events named `event` (wildcards `*` and `>` allowed) where `if_` holds."""
    if not isinstance(event, str) or not event:
        raise ValueError("on_event: event must be a non-empty event name or pattern")
    return EventTrigger(event=event, if_=if_)


def on_cron(schedule: str, timezone: str | None = None, *, catch_up: bool = False) -> CronTrigger:
    """Start the function on a five-field cron schedule (`minute hour day-of-month month
    day-of-week`), read in `timezone` (an IANA name such as "Europe/Berlin"; default UTC).

    Each tick starts one run, whatever the number of scheduler replicas. Its event is
    `system.cron.<function id>`, and `ctx.event.data["scheduled_at"]` is the tick's time (ISO 8601,
    UTC). Ticks missed while no scheduler was running are skipped; with `catch_up=True` the latest
    missed one still fires when a scheduler is back (`data["catch_up"]` is then true). The server
    checks the expression and the zone when the function is registered.
    """
    if not isinstance(schedule, str) or len(schedule.split()) != 5:
        raise ValueError(
            "on_cron: schedule must be a five-field cron expression (minute hour day-of-month month "
            f"day-of-week) such as '0 9 * * *'; got {schedule!r}"
        )
    if timezone is not None and (not isinstance(timezone, str) or not timezone):
        raise ValueError(
            f"on_cron: timezone must be an IANA zone name such as 'Europe/Berlin'; got {timezone!r}"
        )
    if not isinstance(catch_up, bool):
        raise ValueError(f"on_cron: catch_up must be True or False; got {catch_up!r}")
    return CronTrigger(schedule=schedule, timezone=timezone, catch_up=catch_up)


@dataclass(frozen=True)
class Function:
    """A durable function: its handler plus what the server needs to know to run it."""

    id: str
    handler: Handler
    triggers: tuple[EventTrigger | CronTrigger, ...] = ()
    retry: Retry = field(default_factory=Retry)
    timeout: float | None = None
    mode: str = "pull"
    name: str | None = None
    # Events that cancel a running instance (`if_` sees `event`, the run's trigger, and `async`).
    cancel_on: tuple[EventTrigger, ...] = ()
    rate_limit: RateLimit | None = None
    idempotency: Idempotency | None = None
    concurrency: tuple[Concurrency, ...] = ()
    # An integer (as text) or a CEL expression over `event`; "" for none.
    priority: str = ""
    throttle: Throttle | None = None
    debounce: Debounce | None = None
    batching: Batching | None = None

    def definition(self, *, endpoint_url: str | None = None) -> functions_pb2.FunctionDefinition:
        definition = functions_pb2.FunctionDefinition(
            id=self.id,
            name=self.name or self.id,
            triggers=[trigger.to_proto() for trigger in self.triggers],
            retry=self.retry.to_proto(),
            mode=_MODES[self.mode],
            endpoint_url=endpoint_url or "",
            cancel_on=[trigger.to_proto().event for trigger in self.cancel_on],
            concurrency=[limit.to_proto() for limit in self.concurrency],
            priority=self.priority,
        )
        if self.timeout is not None:
            definition.timeout.FromTimedelta(timedelta(seconds=self.timeout))
        if self.throttle is not None:
            definition.throttle.CopyFrom(self.throttle.to_proto())
        if self.rate_limit is not None:
            definition.rate_limit.CopyFrom(self.rate_limit.to_proto())
        if self.idempotency is not None:
            definition.idempotency.CopyFrom(self.idempotency.to_proto())
        if self.debounce is not None:
            definition.debounce.CopyFrom(self.debounce.to_proto())
        if self.batching is not None:
            definition.batching.CopyFrom(self.batching.to_proto())
        return definition


def function(
    *,
    id: str,
    triggers: Sequence[EventTrigger | CronTrigger] = (),
    retry: Retry | None = None,
    timeout: Duration | None = None,
    mode: str = "pull",
    name: str | None = None,
    cancel_on: Sequence[EventTrigger] = (),
    rate_limit: RateLimit | None = None,
    idempotency: str | Idempotency | None = None,
    concurrency: ConcurrencySpec | None = None,
    priority: int | str | None = None,
    throttle: Throttle | None = None,
    debounce: Debounce | None = None,
    batching: Batching | None = None,
) -> Callable[[Handler], Function]:
    """Declare a durable function; decorates an `async def handler(ctx)`.

    `cancel_on=[ironflow.on_event("order.cancelled", if_="async.data.id == event.data.id")]` cancels a
    running instance when a matching event arrives (`event` is the run's trigger, `async` the new one).

    `throttle=ironflow.Throttle(limit=10, period="1m", key="event.data.userId")` delays runs beyond
    10 a minute per user (they start later, one every 6 s); `rate_limit=ironflow.RateLimit(...)` with
    the same numbers skips those events instead; `idempotency="event.data.orderId"` (or
    `ironflow.Idempotency(key=..., window="24h")`) starts one run per order id within the window. Keys
    are CEL over `event`; a key that cannot be evaluated (a missing field) or is null counts as one
    shared empty key.

    `concurrency=[ironflow.Concurrency(limit=2, key="event.data.customerId")]` lets at most two runs
    per customer execute at once (several limits may be given; `concurrency=5` is one limit over all
    runs). `priority="event.data.tier == 'gold' ? 100 : 0"` (or an integer) gives a run that many
    seconds of head start in the queue, between -600 and 600: higher-priority runs go first, and no
    run is overtaken by one that became due more than 20 minutes after it.

    `debounce=ironflow.Debounce(period="30s", key="event.data.userId", max_wait="5m")` runs once per
    burst of events, with the last one; `batching=ironflow.Batching(max_size=100, timeout="10s")`
    runs once per batch, the events in `ctx.events`. A function has at most one of the two. Both
    apply to events only: cron ticks and invocations start their own runs at once.
    """
    if not isinstance(id, str) or not _FUNCTION_ID.fullmatch(id):
        raise ValueError(
            f"id: must be 1-128 letters, digits, '_', '-' or '.', starting with a letter or digit; got {id!r}"
        )
    if mode not in _MODES:
        raise ValueError(f"mode: must be 'pull' or 'push', got {mode!r}")
    for index, trigger in enumerate(triggers):
        if not isinstance(trigger, EventTrigger | CronTrigger):
            raise ValueError(f"triggers[{index}]: use ironflow.on_event(...) or ironflow.on_cron(...)")
    for index, trigger in enumerate(cancel_on):
        if not isinstance(trigger, EventTrigger):
            raise ValueError(f"cancel_on[{index}]: use ironflow.on_event(...)")
    if throttle is not None and not isinstance(throttle, Throttle):
        raise ValueError("throttle: use ironflow.Throttle(limit=..., period=..., key=None, burst=0)")
    if rate_limit is not None and not isinstance(rate_limit, RateLimit):
        raise ValueError("rate_limit: use ironflow.RateLimit(limit=..., period=..., key=None)")
    idempotency_rule = Idempotency(key=idempotency) if isinstance(idempotency, str) else idempotency
    if idempotency_rule is not None and not isinstance(idempotency_rule, Idempotency):
        raise ValueError(
            "idempotency: use a CEL key such as 'event.data.orderId' or ironflow.Idempotency(...)"
        )
    limits = _concurrency_limits(concurrency)
    priority_text = _priority_text(priority)
    _check_accumulation(debounce, batching)
    timeout_seconds = to_seconds(timeout, field="timeout") if timeout is not None else None
    if timeout_seconds == 0:
        raise ValueError("timeout: must be positive")

    def decorate(handler: Handler) -> Function:
        if not inspect.iscoroutinefunction(handler):
            raise TypeError(f"@ironflow.function({id!r}) needs an `async def` handler taking ctx")
        return Function(
            id=id,
            handler=handler,
            triggers=tuple(triggers),
            retry=retry or Retry(),
            timeout=timeout_seconds,
            mode=mode,
            name=name,
            cancel_on=tuple(cancel_on),
            rate_limit=rate_limit,
            idempotency=idempotency_rule,
            concurrency=limits,
            priority=priority_text,
            throttle=throttle,
            debounce=debounce,
            batching=batching,
        )

    return decorate


def _check_accumulation(debounce: Debounce | None, batching: Batching | None) -> None:
    if debounce is not None and not isinstance(debounce, Debounce):
        raise ValueError("debounce: use ironflow.Debounce(period=..., key=None, max_wait=None)")
    if batching is not None and not isinstance(batching, Batching):
        raise ValueError("batching: use ironflow.Batching(max_size=..., timeout=..., key=None)")
    if debounce is not None and batching is not None:
        raise ValueError("batching: cannot be combined with debounce; use one or the other")


def _concurrency_limits(
    concurrency: int | Concurrency | Sequence[Concurrency] | None,
) -> tuple[Concurrency, ...]:
    if concurrency is None:
        return ()
    if isinstance(concurrency, int) and not isinstance(concurrency, bool):
        return (Concurrency(limit=concurrency),)
    if isinstance(concurrency, Concurrency):
        return (concurrency,)
    if isinstance(concurrency, str) or not isinstance(concurrency, Sequence):
        raise ValueError(
            "concurrency: use an integer, ironflow.Concurrency(limit=..., key=None) or a list of them"
        )
    for index, limit in enumerate(concurrency):
        if not isinstance(limit, Concurrency):
            raise ValueError(f"concurrency[{index}]: use ironflow.Concurrency(limit=..., key=None)")
    return tuple(concurrency)


def _priority_text(priority: int | str | None) -> str:
    if priority is None:
        return ""
    if isinstance(priority, int) and not isinstance(priority, bool):
        if abs(priority) > MAX_PRIORITY:
            raise ValueError(
                f"priority: must be between -{MAX_PRIORITY} and {MAX_PRIORITY} seconds, got {priority}"
            )
        return str(priority)
    if isinstance(priority, str) and priority.strip():
        return priority.strip()
    raise ValueError(f"priority: use an integer or a CEL expression over event, got {priority!r}")
