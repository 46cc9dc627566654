"""Entry ids and the integer sequence derived from them.

Redis ids are `<ms>-<n>` pairs; callers elsewhere (cursors in URLs, database columns, resume tokens)
want one ordered integer instead. Packing `ms << 20 | n` keeps the order of ids, and 2**20 entries per
millisecond is more than one Redis node can append, so auto ids always fit.
"""

from __future__ import annotations

from ironflow.services.core.errors import invalid_argument

SEQ_BITS = 20
MAX_SEQ_PART = (1 << SEQ_BITS) - 1
# Redis stores both parts of an id as unsigned 64-bit integers and rejects anything larger.
_MAX_U64 = (1 << 64) - 1


def entry_id_to_sequence(entry_id: str) -> int:
    """The sequence of a full `<ms>-<n>` id; ValueError if `n` does not fit in 20 bits."""
    ms, n = _split(entry_id)
    if n > MAX_SEQ_PART:
        raise ValueError(f"entry id {entry_id!r} has a sequence part wider than {SEQ_BITS} bits")
    return ms << SEQ_BITS | n


def sequence_to_entry_id(sequence: int) -> str:
    if sequence < 0:
        raise ValueError(f"sequence {sequence} is negative")
    return f"{sequence >> SEQ_BITS}-{sequence & MAX_SEQ_PART}"


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
        return value >> SEQ_BITS, value & MAX_SEQ_PART
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
