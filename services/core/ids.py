"""Id and clock sources, injected into services so tests control time and identity."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

IdSource = Callable[[str], str]
Clock = Callable[[], datetime]


def random_id(prefix: str) -> str:
    """`<prefix>_<32 hex>`: unique without coordination between replicas."""
    return f"{prefix}_{uuid.uuid4().hex}"


def utc_now() -> datetime:
    return datetime.now(UTC)
