"""Checks on function definitions at registration: bad ones are refused whole, naming the field."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from urllib.parse import urlparse

from google.protobuf import duration_pb2

from ironflow.services.core.cel import check_expression
from ironflow.services.core.cron import parse_schedule
from ironflow.services.core.errors import invalid_argument
from ironflow.services.core.subjects import NamePattern
from ironflow.v1 import functions_pb2

_FUNCTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MAX_FUNCTIONS_PER_REQUEST = 500
MAX_RETRY_ATTEMPTS = 100
DEFAULT_IDEMPOTENCY_WINDOW = timedelta(hours=24)
# Rate limit periods and idempotency windows: a year is more than anyone means, and keeps the
# deadlines computed from them far from datetime's range.
MAX_ADMISSION_SPAN = timedelta(days=366)
# Priority is seconds of head start in the dispatch order (the scheduler's `_priority.py`).
MAX_PRIORITY = 600
MAX_CONCURRENCY_LIMITS = 10
_INTEGER = re.compile(r"[+-]?\d+")
# Throttle periods: runs are delayed (kept queued) by up to a period per run ahead of them, so a
# week is the longest that stays meaningful (Inngest's bound too). Bursts beyond this are no throttle.
MAX_THROTTLE_PERIOD = timedelta(days=7)
MAX_THROTTLE_BURST = 100_000
# Debounce periods and waits, batch timeouts: a pending run holds its events this long at most.
MAX_ACCUMULATION_SPAN = timedelta(days=7)
# Events in one batch (the scheduler's `_accumulation.MAX_BATCH_SIZE`).
MAX_BATCH_SIZE = 1000


def check_endpoint_url(url: str, *, field: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise invalid_argument(field, f"must be an http:// or https:// URL, got {url!r}")
    return url


def normalise_definition(
    definition: functions_pb2.FunctionDefinition, *, field: str, default_endpoint_url: str, now: datetime
) -> functions_pb2.FunctionDefinition:
    """A validated copy with defaults made explicit (so equal meanings give equal digests): a cron
    trigger's zone defaults to `UTC` and its schedule's whitespace is normalised; an idempotency window
    defaults to 24 hours. `now` is the
    registration time (a cron schedule must still fire after it)."""
    result = functions_pb2.FunctionDefinition()
    result.CopyFrom(definition)
    if not _FUNCTION_ID.fullmatch(result.id):
        raise invalid_argument(
            f"{field}.id",
            f"must be 1-128 characters of letters, digits, '_', '-', '.', starting with a letter or digit; "
            f"got {result.id!r}",
        )
    if not result.name:
        result.name = result.id
    for index, trigger in enumerate(result.triggers):
        _check_trigger(trigger, field=f"{field}.triggers[{index}]", now=now)
    for index, cancel in enumerate(result.cancel_on):
        NamePattern.parse(cancel.event, field=f"{field}.cancel_on[{index}].event")
        if getattr(cancel, "if"):
            check_expression(getattr(cancel, "if"), field=f"{field}.cancel_on[{index}].if")
    _check_retry(result.retry, field=f"{field}.retry")
    if result.HasField("timeout") and result.timeout.ToTimedelta().total_seconds() <= 0:
        raise invalid_argument(f"{field}.timeout", "must be positive when set")
    _resolve_mode(result, field=field, default_endpoint_url=default_endpoint_url)
    _check_flow_control(result, field=field)
    return result


def _check_concurrency(definition: functions_pb2.FunctionDefinition, *, field: str) -> None:
    if len(definition.concurrency) > MAX_CONCURRENCY_LIMITS:
        raise invalid_argument(f"{field}.concurrency", f"allows at most {MAX_CONCURRENCY_LIMITS} limits")
    for index, limit in enumerate(definition.concurrency):
        if limit.limit < 1:
            raise invalid_argument(f"{field}.concurrency[{index}].limit", "must be at least 1")
        if limit.key:
            check_expression(limit.key, field=f"{field}.concurrency[{index}].key")


def _check_priority(definition: functions_pb2.FunctionDefinition, *, field: str) -> None:
    definition.priority = definition.priority.strip()
    if _is_integer(definition.priority):
        if abs(int(definition.priority)) > MAX_PRIORITY:
            raise invalid_argument(
                f"{field}.priority",
                f"must be between -{MAX_PRIORITY} and {MAX_PRIORITY} (seconds of head start); "
                f"got {definition.priority}",
            )
    elif definition.priority:
        check_expression(definition.priority, field=f"{field}.priority")


def _check_flow_control(definition: functions_pb2.FunctionDefinition, *, field: str) -> None:
    _check_concurrency(definition, field=field)
    _check_priority(definition, field=field)
    if definition.HasField("throttle"):
        _check_throttle(definition.throttle, field=f"{field}.throttle")
    if definition.HasField("rate_limit"):
        _check_rate_limit(definition.rate_limit, field=f"{field}.rate_limit")
    if definition.HasField("idempotency"):
        _check_idempotency(definition.idempotency, field=f"{field}.idempotency")
    _check_accumulation(definition, field=field)


def _resolve_mode(
    definition: functions_pb2.FunctionDefinition, *, field: str, default_endpoint_url: str
) -> None:
    if definition.mode == functions_pb2.FUNCTION_MODE_UNSPECIFIED:
        definition.mode = functions_pb2.FUNCTION_MODE_PULL
    if definition.mode == functions_pb2.FUNCTION_MODE_PUSH:
        definition.endpoint_url = definition.endpoint_url or default_endpoint_url
        if not definition.endpoint_url:
            raise invalid_argument(f"{field}.endpoint_url", "is required for push mode functions")
        check_endpoint_url(definition.endpoint_url, field=f"{field}.endpoint_url")
    elif definition.endpoint_url:
        raise invalid_argument(f"{field}.endpoint_url", "is only for push mode functions")


def _check_trigger(trigger: functions_pb2.Trigger, *, field: str, now: datetime) -> None:
    kind = trigger.WhichOneof("kind")
    if kind == "event":
        NamePattern.parse(trigger.event.event, field=f"{field}.event")
        condition = getattr(trigger.event, "if")
        if condition:
            check_expression(condition, field=f"{field}.if")
    elif kind == "cron":
        parsed = parse_schedule(trigger.cron.schedule, trigger.cron.timezone, field=f"{field}.cron", now=now)
        trigger.cron.schedule = parsed.schedule
        trigger.cron.timezone = parsed.timezone
    else:
        raise invalid_argument(field, "must be an event or a cron trigger")


def _check_retry(retry: functions_pb2.RetryPolicy, *, field: str) -> None:
    if not 0 <= retry.max_attempts <= MAX_RETRY_ATTEMPTS:
        raise invalid_argument(f"{field}.max_attempts", f"must be between 1 and {MAX_RETRY_ATTEMPTS}")
    if retry.factor and retry.factor < 1:
        raise invalid_argument(f"{field}.factor", "must be at least 1")
    for name in ("initial_delay", "max_delay"):
        if retry.HasField(name) and getattr(retry, name).ToTimedelta().total_seconds() < 0:
            raise invalid_argument(f"{field}.{name}", "must not be negative")
    if retry.on_exhausted not in ("", "fail", "pause"):
        raise invalid_argument(
            f"{field}.on_exhausted", f"must be 'fail' or 'pause', got {retry.on_exhausted!r}"
        )


def _check_throttle(throttle: functions_pb2.Throttle, *, field: str) -> None:
    """`limit` runs per `period` (at most 7 days), `burst` extra at once [0], an optional key."""
    if throttle.limit < 1:
        raise invalid_argument(f"{field}.limit", f"must be at least 1, got {throttle.limit}")
    if not throttle.HasField("period"):
        raise invalid_argument(f"{field}.period", "is required (for example 1s or 1m)")
    period = throttle.period.ToTimedelta()
    if period <= timedelta(0):
        raise invalid_argument(f"{field}.period", "must be positive")
    if period > MAX_THROTTLE_PERIOD:
        raise invalid_argument(f"{field}.period", f"must be at most {MAX_THROTTLE_PERIOD.days} days")
    if not 0 <= throttle.burst <= MAX_THROTTLE_BURST:
        raise invalid_argument(
            f"{field}.burst", f"must be between 0 and {MAX_THROTTLE_BURST}, got {throttle.burst}"
        )
    if throttle.key:
        check_expression(throttle.key, field=f"{field}.key")


def _check_rate_limit(rate_limit: functions_pb2.RateLimit, *, field: str) -> None:
    if rate_limit.limit < 1:
        raise invalid_argument(f"{field}.limit", f"must be at least 1, got {rate_limit.limit}")
    if not rate_limit.HasField("period"):
        raise invalid_argument(f"{field}.period", "is required (for example 60s or 1h)")
    _check_span(rate_limit.period, field=f"{field}.period")
    if rate_limit.key:
        check_expression(rate_limit.key, field=f"{field}.key")


def _check_idempotency(idempotency: functions_pb2.Idempotency, *, field: str) -> None:
    """The key is required; the window defaults to 24 hours, made explicit here."""
    if not idempotency.key:
        raise invalid_argument(
            f"{field}.key", "is required (a CEL expression over event, such as event.data.id)"
        )
    check_expression(idempotency.key, field=f"{field}.key")
    if idempotency.HasField("window"):
        _check_span(idempotency.window, field=f"{field}.window")
    else:
        idempotency.window.FromTimedelta(DEFAULT_IDEMPOTENCY_WINDOW)


def _check_accumulation(definition: functions_pb2.FunctionDefinition, *, field: str) -> None:
    """Debounce and batching: each alone (both gather events into a pending run, in different ways,
    and a throttle would delay runs the pending run already delays)."""
    debounce, batching = definition.HasField("debounce"), definition.HasField("batching")
    if debounce and batching:
        raise invalid_argument(f"{field}.batching", "cannot be combined with debounce; use one or the other")
    if definition.HasField("throttle") and (debounce or batching):
        other = "debounce" if debounce else "batching"
        raise invalid_argument(f"{field}.throttle", f"cannot be combined with {other}; use one or the other")
    if debounce:
        _check_debounce(definition.debounce, field=f"{field}.debounce")
    if batching:
        _check_batching(definition.batching, field=f"{field}.batching")


def _check_debounce(debounce: functions_pb2.Debounce, *, field: str) -> None:
    if not debounce.HasField("period"):
        raise invalid_argument(f"{field}.period", "is required (for example 5s or 1m)")
    _check_span(debounce.period, field=f"{field}.period", limit=MAX_ACCUMULATION_SPAN)
    if debounce.HasField("max_wait"):
        _check_span(debounce.max_wait, field=f"{field}.max_wait", limit=MAX_ACCUMULATION_SPAN)
        if debounce.max_wait.ToTimedelta() < debounce.period.ToTimedelta():
            raise invalid_argument(f"{field}.max_wait", "must be at least the period")
    if debounce.key:
        check_expression(debounce.key, field=f"{field}.key")


def _check_batching(batching: functions_pb2.Batching, *, field: str) -> None:
    if not 1 <= batching.max_size <= MAX_BATCH_SIZE:
        raise invalid_argument(
            f"{field}.max_size", f"must be between 1 and {MAX_BATCH_SIZE}, got {batching.max_size}"
        )
    if not batching.HasField("timeout"):
        raise invalid_argument(f"{field}.timeout", "is required (for example 10s or 1m)")
    _check_span(batching.timeout, field=f"{field}.timeout", limit=MAX_ACCUMULATION_SPAN)
    if batching.key:
        check_expression(batching.key, field=f"{field}.key")


def _check_span(
    duration: duration_pb2.Duration, *, field: str, limit: timedelta = MAX_ADMISSION_SPAN
) -> None:
    span = duration.ToTimedelta()
    if span <= timedelta(0):
        raise invalid_argument(field, "must be positive")
    if span > limit:
        raise invalid_argument(field, f"must be at most {limit.days} days")


def _is_integer(text: str) -> bool:
    return bool(_INTEGER.fullmatch(text))
