"""Protobuf well-known types to plain Python values, for results the SDK hands to users.

`google.protobuf.Struct` carries every number as a double; integral ones come back as `int` so that
`{"qty": 3}` round-trips as `3`, not `3.0`. (The server applies the same rule to what it stores.)
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2


def _normalise(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: _normalise(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalise(item) for item in value]
    return value


def to_struct(data: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(data)
    return message


def from_struct(message: struct_pb2.Struct) -> dict[str, Any]:
    result: dict[str, Any] = _normalise(json_format.MessageToDict(message))
    return result


def from_value(message: struct_pb2.Value) -> Any:
    """A `google.protobuf.Value` as plain JSON (None for null or an unset value), integral floats as int."""
    kind = message.WhichOneof("kind")
    if kind == "struct_value":
        return {key: from_value(item) for key, item in message.struct_value.fields.items()}
    if kind == "list_value":
        return [from_value(item) for item in message.list_value.values]
    if kind == "number_value":
        return _normalise(message.number_value)
    if kind == "string_value":
        return message.string_value
    if kind == "bool_value":
        return message.bool_value
    return None


def from_timestamp(message: timestamp_pb2.Timestamp) -> datetime | None:
    if message.seconds == 0 and message.nanos == 0:
        return None
    return message.ToDatetime(tzinfo=UTC)
