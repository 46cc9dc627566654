"""Push request signatures: what the scheduler signs, the SDK verifies (HMAC-SHA256 over "<t>." + body)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from ironflow._signing import SignatureError, signature, verify
from ironflow.services.core.signing import sign

BODY = b'{"job":{"run_id":"r1"}}'
NOW = 1_700_000_000


def test_the_header_is_the_documented_hmac_and_both_sides_agree() -> None:
    expected = hmac.new(b"key", f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign("key", BODY, timestamp=NOW) == f"t={NOW},v1={expected}"
    assert signature("key", BODY, NOW) == expected  # what the SDK checks against
    verify("key", sign("key", BODY, timestamp=NOW), BODY, now=NOW + 10)


@pytest.mark.parametrize(
    ("header", "body", "now", "reason"),
    [
        (None, BODY, NOW, "missing"),
        ("", BODY, NOW, "missing"),
        ("v1=abc", BODY, NOW, "must look like"),
        (f"t={NOW}", BODY, NOW, "must look like"),
        ("t=soon,v1=abc", BODY, NOW, "not an integer"),
        (sign("other-key", BODY, timestamp=NOW), BODY, NOW, "does not match"),
        (sign("key", BODY, timestamp=NOW), BODY + b" ", NOW, "does not match"),
        (sign("key", BODY, timestamp=NOW), BODY, NOW + 301, "old"),
        (sign("key", BODY, timestamp=NOW + 301), BODY, NOW, "in the future"),
    ],
)
def test_bad_signatures_are_refused_with_the_reason(
    header: str | None, body: bytes, now: int, reason: str
) -> None:
    with pytest.raises(SignatureError, match=reason):
        verify("key", header, body, now=now)


def test_any_of_several_signatures_may_match_while_keys_rotate() -> None:
    old = sign("old-key", BODY, timestamp=NOW).split("v1=")[1]
    new = sign("new-key", BODY, timestamp=NOW).split("v1=")[1]
    verify("new-key", f"t={NOW},v1={old},v1={new}", BODY, now=NOW)
    verify("key", sign("key", BODY, timestamp=NOW - 300), BODY, now=NOW)  # the edge of the tolerance
