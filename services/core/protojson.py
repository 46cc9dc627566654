"""Converting between protobuf well-known types and plain Python/JSON values.

Event data travels as `google.protobuf.Struct`, whose numbers are all doubles. JSON producers mean
`3` and `3.0` differently far more often than protobuf does, so integral doubles that fit exactly in
a double's integer range come back as `int`; everything else stays `float`.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

_MAX_EXACT_INT = 2**53


def _normalise(value: Any) -> Any:
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) <= _MAX_EXACT_INT:
            return int(value)
        return value
    if isinstance(value, dict):
        return {key: _normalise(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalise(item) for item in value]
    return value


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    result = _normalise(json_format.MessageToDict(message))
    assert isinstance(result, dict)
    return result


def dict_to_struct(data: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(data)
    return message


def to_timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value.astimezone(UTC))
    return message


def json_size(value: Any) -> int:
    """Bytes of the compact JSON encoding: what payload limits are measured in."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def value_to_python(message: struct_pb2.Value) -> Any:
    """A `google.protobuf.Value` as plain JSON-like Python (None when unset)."""
    if message.WhichOneof("kind") is None:
        return None
    return _normalise(json_format.MessageToDict(message))


def python_to_value(value: Any) -> struct_pb2.Value:
    message = struct_pb2.Value()
    json_format.ParseDict(value, message)
    return message


def duration_seconds(message: duration_pb2.Duration) -> float:
    """A `google.protobuf.Duration` in seconds."""
    return message.seconds + message.nanos / 1e9
