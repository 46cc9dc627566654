"""Checks on what producers send, before anything is stored or streamed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ironflow.services.core.errors import invalid_argument
from ironflow.services.core.protojson import json_size

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_IDEMPOTENCY_KEY_BYTES = 256
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY_BYTES = 128


def check_data(data: Any, *, max_bytes: int, field: str = "data") -> dict[str, Any]:
    if not isinstance(data, dict):
        raise invalid_argument(field, f"must be a JSON object, got {_json_type(data)}")
    size = json_size(data)
    if size > max_bytes:
        raise invalid_argument(field, f"is {size} bytes of JSON, over the {max_bytes}-byte limit")
    return data


def check_metadata(metadata: Any, *, field: str = "metadata") -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise invalid_argument(field, f"must be an object of strings, got {_json_type(metadata)}")
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise invalid_argument(field, f"has {len(metadata)} entries, at most {MAX_METADATA_ENTRIES} allowed")
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or len(key.encode()) > MAX_METADATA_KEY_BYTES:
            raise invalid_argument(field, f"keys must be 1..{MAX_METADATA_KEY_BYTES} bytes of text")
        if not isinstance(value, str):
            raise invalid_argument(f"{field}.{key}", f"must be a string, got {_json_type(value)}")
    return dict(metadata)


def check_idempotency_key(key: Any, *, field: str = "idempotency_key") -> str | None:
    if key is None or key == "":
        return None
    if not isinstance(key, str):
        raise invalid_argument(field, f"must be a string, got {_json_type(key)}")
    if len(key.encode()) > MAX_IDEMPOTENCY_KEY_BYTES:
        raise invalid_argument(field, f"is longer than {MAX_IDEMPOTENCY_KEY_BYTES} bytes")
    if key != key.strip() or any(ord(c) < 32 for c in key):
        raise invalid_argument(field, "must not contain control characters or surrounding spaces")
    return key


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__
