"""Values crossing the wire from a handler: step outputs as protobuf Values, errors as ErrorInfo,
and stored events back as `ironflow.Event`."""

from __future__ import annotations

import contextlib
import json
import traceback
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import json_format, struct_pb2

from ironflow.v1 import common_pb2

from ._durations import to_seconds
from ._errors import NonRetryableError, RetryAfterError, StepError
from ._models import Event

_MAX_DETAILS = 8 * 1024


def to_value(value: Any, *, what: str) -> struct_pb2.Value:
    """`value` as a protobuf Value; NonRetryableError when it is not plain JSON."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise NonRetryableError(f"{what} is not JSON-serialisable: {exc}") from None
    message = struct_pb2.Value()
    json_format.Parse(text, message)
    return message


def from_value(message: struct_pb2.Value) -> Any:
    if message.WhichOneof("kind") is None:
        return None
    return _integral(json_format.MessageToDict(message))


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def error_info(exc: BaseException, *, non_retryable: bool = False) -> common_pb2.ErrorInfo:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    details = "".join(traceback.format_exception(exc))[-_MAX_DETAILS:]
    info = common_pb2.ErrorInfo(
        code=exc.code if isinstance(exc, StepError) else type(exc).__name__,
        message=str(message),
        details=details,
        # A StepError (or InvokeError) replays the same way every time: retrying cannot help.
        non_retryable=non_retryable or isinstance(exc, NonRetryableError | StepError),
    )
    if isinstance(exc, RetryAfterError):
        # An unreadable delay falls back to the policy's backoff.
        with contextlib.suppress(ValueError):
            delay = to_seconds(exc.retry_after, field="retry_after")
            info.retry_after.FromTimedelta(timedelta(seconds=delay))
    return info


def stored_event(document: Any) -> Event | None:
    """An event as the scheduler keeps it (the output of a `wait_for_event` step) as `ironflow.Event`."""
    if not isinstance(document, dict):
        return None
    timestamp: datetime | None = None
    if isinstance(document.get("timestamp"), str):
        timestamp = datetime.fromisoformat(document["timestamp"].replace("Z", "+00:00"))
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=UTC)
    name = str(document.get("name", ""))
    return Event(
        id=str(document.get("id", "")),
        name=name,
        namespace="events",
        subject=f"events:{name}",
        data=document.get("data") or {},
        metadata=document.get("metadata") or {},
        idempotency_key=None,
        timestamp=timestamp,
        sequence=int(document.get("sequence") or 0),
    )
