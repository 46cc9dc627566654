"""Argument checks both backends share, so bad input fails the same way whichever one is configured.

Redis would reject most of these itself, but with its own wording, and a few it would accept with a
different meaning (COUNT 0 is "no limit" to XREAD but "nothing" to XRANGE).
"""

from __future__ import annotations

from collections.abc import Mapping

from ironflow.services.core.errors import invalid_argument


def check_fields(fields: Mapping[str, str]) -> None:
    if not fields:
        raise invalid_argument("fields", "an entry needs at least one field")


def check_count(count: int) -> None:
    if count < 1:
        raise invalid_argument("count", f"must be at least 1, got {count}")


def check_maxlen(maxlen: int | None) -> None:
    if maxlen is not None and maxlen < 0:
        raise invalid_argument("maxlen", f"must not be negative, got {maxlen}")


def check_min_idle(min_idle_ms: int) -> None:
    if min_idle_ms < 0:
        raise invalid_argument("min_idle_ms", f"must not be negative, got {min_idle_ms}")


# Redis sets an entry's delivery time to `now - IDLE` and treats a time before the Unix epoch as "now",
# so an idle time longer than the epoch's age would silently become 0. About 31.7 years is always safe.
MAX_IDLE_MS = 10**12


def clamp_idle(idle_ms: int) -> int:
    """`idle_ms` for `set_idle`: never negative, and capped at `MAX_IDLE_MS` on both backends alike."""
    if idle_ms < 0:
        raise invalid_argument("idle_ms", f"must not be negative, got {idle_ms}")
    return min(idle_ms, MAX_IDLE_MS)


def check_trim(maxlen: int | None, min_id: str | int | None) -> None:
    if (maxlen is None) == (min_id is None):
        raise invalid_argument("maxlen", "give exactly one of maxlen and min_id")
    check_maxlen(maxlen)


def blocks(block_ms: int | None) -> bool:
    if block_ms is not None and block_ms < 0:
        raise invalid_argument("block_ms", f"must not be negative, got {block_ms}")
    return bool(block_ms)
