"""CEL expressions (trigger `if`, wait `match`, subscription filters): compiled once, checked early.

Only compilation lives here for now; evaluation, with numeric int/double comparison and the
missing-field rule, arrives with triggering.
"""

from __future__ import annotations

import celpy
from celpy.celparser import CELParseError

from .errors import invalid_argument

MAX_EXPRESSION_BYTES = 4096


def check_expression(text: str, *, field: str) -> str:
    """Raise INVALID_ARGUMENT naming `field` and the expression when it does not compile."""
    if len(text.encode()) > MAX_EXPRESSION_BYTES:
        raise invalid_argument(field, f"expression is longer than {MAX_EXPRESSION_BYTES} bytes")
    try:
        celpy.Environment().compile(text)
    except CELParseError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise invalid_argument(field, f"invalid CEL expression {text!r}: {first_line}") from exc
    return text
