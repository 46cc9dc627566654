"""Entry ids and the integer sequence they carry.

Ironflow appends with the id `0-*` (Redis 7: explicit zero milliseconds, automatic counter), so every
entry id is `0-<n>` and `n` is a dense sequence: 1, 2, 3, ... per stream. A dense sequence is what
callers want as a resume token: it is small (JSON numbers stay exact in JavaScript, unlike packed
`ms << k | n` values near 2**60), it counts messages, and both backends produce identical ids.
Wall-clock ids buy nothing here: nothing trims by age, and idle times come from the pending list.
"""

from __future__ import annotations

from ironflow.services.core.errors import invalid_argument

# Every id Ironflow appends has this millisecond part.
ID_MS = 0
# Redis stores both parts of an id as unsigned 64-bit integers and rejects anything larger.
_MAX_U64 = (1 << 64) - 1


def entry_id_to_sequence(entry_id: str) -> int:
    """The sequence of a `0-<n>` id; ValueError for ids not written by Ironflow (`<ms>-<n>`, ms > 0)."""
    ms, n = _split(entry_id)
    if ms != ID_MS:
        raise ValueError(f"entry id {entry_id!r} was not appended by Ironflow (expected 0-<sequence>)")
    return n


def sequence_to_entry_id(sequence: int) -> str:
    if sequence < 0:
        raise ValueError(f"sequence {sequence} is negative")
    return f"{ID_MS}-{sequence}"


def parse_id(value: str | int, field: str) -> tuple[int, int]:
    """An id or sequence from a caller as `(ms, n)`, raising INVALID_ARGUMENT naming `field`.

    Accepts what Redis accepts for a position (`"0"`, `"<ms>"` meaning `<ms>-0`, `"<ms>-<n>"`) plus
    an int sequence, so both backends see the same canonical id and cannot disagree about shorthand.
    """
    if isinstance(value, bool):
        raise invalid_argument(field, f"expected an entry id or sequence, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise invalid_argument(field, f"sequence {value} is negative")
        return ID_MS, value
    try:
        return _split(value)
    except ValueError as exc:
        raise invalid_argument(field, str(exc)) from None


def format_id(ms: int, n: int) -> str:
    return f"{ms}-{n}"


def _split(entry_id: str) -> tuple[int, int]:
    ms_text, sep, n_text = entry_id.partition("-")
    if not sep:
        n_text = "0"
    if not (ms_text.isdigit() and n_text.isdigit() and ms_text.isascii() and n_text.isascii()):
        raise ValueError(f"{entry_id!r} is not an entry id of the form <ms>-<n>")
    ms, n = int(ms_text), int(n_text)
    if ms > _MAX_U64 or n > _MAX_U64:
        raise ValueError(f"{entry_id!r} is out of range for an entry id")
    return ms, n
