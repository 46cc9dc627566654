"""Durations in the SDK: seconds as a number, a `timedelta`, or strings like "500ms", "30s", "1h30m".

The server parses the same grammar (services/core/durations.py) for its settings; the SDK keeps this
small reader of its own because it may depend on nothing but the generated contracts.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

from google.protobuf import duration_pb2

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
_UNIT_SECONDS = {"d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0, "ms": 0.001}

Duration = float | int | str | timedelta


def to_seconds(value: Duration, *, field: str) -> float:
    """Seconds in `value`; ValueError naming `field` when it is not a non-negative duration."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: a duration must be seconds or a string such as '30s', not {value!r}")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse(value.strip(), field)
    else:
        raise ValueError(f"{field}: a duration must be seconds or a string such as '30s', not {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{field}: a duration must be finite and not negative, got {value!r}")
    return seconds


def _parse(text: str, field: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    position, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if not text or position != len(text):
        raise ValueError(
            f"{field}: not a duration: {text!r} (use seconds, or e.g. '500ms', '30s', '10m', '1h')"
        )
    return total


def to_duration_proto(value: Duration, *, field: str) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromTimedelta(timedelta(seconds=to_seconds(value, field=field)))
    return message
