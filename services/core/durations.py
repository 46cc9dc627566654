"""Durations as callers write them: seconds as a number, or short strings such as ``"30s"`` or ``"1h30m"``.

Grammar of the string form::

    duration = number                      ; bare number: seconds, "1.5"
             | 1*( number unit )           ; "500ms", "1h30m", "1m0.5s"
    number   = 1*DIGIT [ "." 1*DIGIT ]      ; ASCII digits
    unit     = "d" | "h" | "m" | "s" | "ms"  ; lower case

Decisions, and why:

* Units must appear largest first and at most once (``"1h30m"``, not ``"30m1h"`` or ``"1m1m"``): there
  is then exactly one way to read a string, and an out-of-order unit is more likely a typo than intent.
* Any component may be fractional (``"1.5h"``). Arithmetic is done in `decimal.Decimal` and rounded once
  to whole microseconds (timedelta's resolution), so ``"0.1s"`` is exactly 100 ms, not a float artefact.
* No sign, exponent, ``nan`` or ``inf`` in strings; for numbers, NaN, infinities and negatives are
  rejected. Booleans are rejected even though ``bool`` is an ``int``: ``True`` seconds is a bug.
* Surrounding whitespace is tolerated (config files and form fields add it); inner whitespace is not.
* `format_duration` writes one canonical form: days, hours and minutes as whole units, then what is
  left below a minute as seconds with a decimal fraction (``"1.5s"``), or as milliseconds when it is
  under a second (``"500ms"``, ``"1m250ms"``, ``"0.25ms"``), and ``"0s"`` for zero. It round-trips:
  ``parse_duration(format_duration(td)) == td`` for every non-negative timedelta.
"""

from __future__ import annotations

import datetime
import decimal
import math
import re

from .errors import invalid_argument

_US_PER_UNIT: dict[str, int] = {
    "d": 86_400_000_000,
    "h": 3_600_000_000,
    "m": 60_000_000,
    "s": 1_000_000,
    "ms": 1_000,
}
_UNIT_ORDER = tuple(_US_PER_UNIT)  # largest first, the order compound strings must follow

_NUMBER = r"[0-9]+(?:\.[0-9]+)?"  # ASCII only: \d would admit other scripts' digits
_BARE_NUMBER = re.compile(_NUMBER)
# "ms" is tried before "m" so "500ms" is not read as 500 minutes followed by junk.
_COMPONENT = re.compile(rf"({_NUMBER})(ms|d|h|m|s)")
_MAX_TEXT = 64  # no legitimate duration is longer; bounds the Decimal work on hostile input
_MAX_US = (datetime.timedelta.max.days * 86_400 + 86_399) * 1_000_000 + 999_999
_HINT = "use seconds, or a string such as '500ms', '30s', '10m', '1h', '7d' or '1h30m'"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def _from_microseconds(
    total: decimal.Decimal, value: object, field: str, allow_zero: bool
) -> datetime.timedelta:
    """Round to timedelta's resolution and apply the range checks every input form shares."""
    micros = int(total.to_integral_value(rounding=decimal.ROUND_HALF_EVEN))
    if micros < 0:
        raise invalid_argument(field, f"duration must not be negative: {_show(value)}")
    if micros == 0 and not allow_zero:
        raise invalid_argument(field, f"duration must be greater than zero: {_show(value)}")
    if micros > _MAX_US:
        raise invalid_argument(field, f"duration is too large: {_show(value)}")
    return datetime.timedelta(microseconds=micros)


def _parse_text(text: str, field: str) -> decimal.Decimal:
    """Total microseconds of a duration string, exactly."""
    if _BARE_NUMBER.fullmatch(text):
        return decimal.Decimal(text) * _US_PER_UNIT["s"]
    total = decimal.Decimal(0)
    position = 0
    next_unit = 0  # index into _UNIT_ORDER of the smallest unit still allowed
    while position < len(text):
        match = _COMPONENT.match(text, position)
        if match is None:
            raise invalid_argument(field, f"invalid duration {_show(text)}; {_HINT}")
        number, unit = match.groups()
        rank = _UNIT_ORDER.index(unit)
        if rank < next_unit:
            raise invalid_argument(
                field, f"invalid duration {_show(text)}: units must go from largest to smallest, each once"
            )
        next_unit = rank + 1
        total += decimal.Decimal(number) * _US_PER_UNIT[unit]
        position = match.end()
    return total


def parse_duration(
    value: str | int | float | datetime.timedelta, *, field: str = "duration", allow_zero: bool = True
) -> datetime.timedelta:
    """Parse seconds or a duration string into a timedelta; raise INVALID_ARGUMENT naming `field`."""
    if isinstance(value, datetime.timedelta):
        micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
        return _from_microseconds(decimal.Decimal(micros), value, field, allow_zero)
    if isinstance(value, bool):
        raise invalid_argument(field, f"duration must be a number of seconds or a string, not {value!r}")
    if isinstance(value, int):
        return _from_microseconds(decimal.Decimal(value) * _US_PER_UNIT["s"], value, field, allow_zero)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise invalid_argument(field, f"duration must be finite: {value!r}")
        # Decimal(float) is the float's exact value; going through str would re-round it.
        return _from_microseconds(decimal.Decimal(value) * _US_PER_UNIT["s"], value, field, allow_zero)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise invalid_argument(field, "duration must not be empty")
        if len(text) > _MAX_TEXT:
            raise invalid_argument(field, f"duration string is too long: {_show(value)}")
        if text.startswith("-"):
            raise invalid_argument(field, f"duration must not be negative: {_show(value)}")
        return _from_microseconds(_parse_text(text, field), value, field, allow_zero)
    raise invalid_argument(
        field, f"duration must be a number of seconds or a string, not {type(value).__name__}"
    )


def format_duration(value: datetime.timedelta) -> str:
    """The canonical string `parse_duration` reads back as `value`: ``"1h30m"``, ``"1.5s"``, ``"500ms"``."""
    if value < datetime.timedelta(0):
        # The grammar has no sign; a negative duration here is a caller bug, not user input.
        raise ValueError(f"cannot format a negative duration: {value!r}")
    if not value:
        return "0s"
    days = value.days
    hours, rest = divmod(value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    micros = value.microseconds
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    if seconds:
        parts.append(f"{seconds}{_fraction(micros, 6)}s")
    elif micros:
        # A sub-second remainder reads better in milliseconds ("500ms" rather than "0.5s").
        whole_ms, sub_ms = divmod(micros, 1000)
        parts.append(f"{whole_ms}{_fraction(sub_ms, 3)}ms")
    return "".join(parts)


def _fraction(numerator: int, digits: int) -> str:
    """``".5"``-style decimal fraction of numerator / 10**digits without trailing zeros, or ``""``."""
    if not numerator:
        return ""
    return "." + f"{numerator:0{digits}d}".rstrip("0")
