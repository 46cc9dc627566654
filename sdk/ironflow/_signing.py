"""Request signatures for push mode: `X-Ironflow-Signature: t=<unix>,v1=<hex>`.

`v1` is HMAC-SHA256 over `"<t>." + body` with the shared signing key. The timestamp is inside the
signed text, so an old request cannot be replayed with a fresh `t`; requests older (or newer) than
the tolerance are refused, which bounds how long a captured request stays usable. Several `v1`
values may be sent while a key is rotated: any one matching is enough.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Ironflow-Signature"
DEFAULT_TOLERANCE = 300.0


class SignatureError(Exception):
    """Why a request's signature was refused (said to the caller, who may be misconfigured)."""


def signature(key: str, body: bytes, timestamp: int) -> str:
    return hmac.new(key.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify(
    key: str,
    header: str | None,
    body: bytes,
    *,
    now: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> None:
    """Raise SignatureError unless `header` signs `body` with `key` within `tolerance` seconds."""
    if not header:
        raise SignatureError(f"the {SIGNATURE_HEADER} header is missing")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError(f"the {SIGNATURE_HEADER} timestamp is not an integer") from None
        elif name == "v1" and value:
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError(f"the {SIGNATURE_HEADER} header must look like t=<unix seconds>,v1=<hex>")
    age = (time.time() if now is None else now) - timestamp
    if abs(age) > tolerance:
        raise SignatureError(
            f"the signature timestamp is {abs(age):.0f}s {'old' if age > 0 else 'in the future'} "
            f"(tolerance {tolerance:g}s): check the clocks of both machines"
        )
    expected = signature(key, body, timestamp)
    # compare_digest takes the same time wherever the strings differ, so timing reveals nothing.
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise SignatureError("the signature does not match: the signing keys of server and app differ")
