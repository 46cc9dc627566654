"""Signing push requests: `X-Ironflow-Signature: t=<unix>,v1=<hex hmac-sha256(key, "<t>." + body)>`.

The SDK verifies it (`ironflow.serve`); the timestamp is part of the signed text, so a captured
request cannot be replayed with a fresh one once the endpoint's tolerance (300 s) has passed.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Ironflow-Signature"


def sign(key: str, body: bytes, *, timestamp: int | None = None) -> str:
    moment = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(key.encode(), f"{moment}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={moment},v1={digest}"
