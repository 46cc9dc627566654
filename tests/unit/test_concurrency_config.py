"""The SDK's concurrency and priority options: what reaches the definition, and clear errors."""

from __future__ import annotations

import re
from typing import Any

import pytest

import ironflow
from ironflow.v1 import functions_pb2


async def _handler(ctx: ironflow.Context) -> None:
    return None


def _definition(**options: Any) -> functions_pb2.FunctionDefinition:
    return ironflow.function(id="f", triggers=[ironflow.on_event("a")], **options)(_handler).definition()


def test_limits_reach_the_definition_in_every_form() -> None:
    assert [(c.limit, c.key) for c in _definition(concurrency=3).concurrency] == [(3, "")]
    one = _definition(concurrency=ironflow.Concurrency(limit=2, key="event.data.customerId"))
    assert [(c.limit, c.key) for c in one.concurrency] == [(2, "event.data.customerId")]
    several = _definition(
        concurrency=[ironflow.Concurrency(10), ironflow.Concurrency(1, key="event.data.id")]
    )
    assert [(c.limit, c.key) for c in several.concurrency] == [(10, ""), (1, "event.data.id")]
    assert list(_definition().concurrency) == []


def test_priority_reaches_the_definition_as_text() -> None:
    assert _definition(priority=100).priority == "100"
    assert _definition(priority=-20).priority == "-20"
    assert _definition(priority=" event.data.tier == 'gold' ? 100 : 0 ").priority == (
        "event.data.tier == 'gold' ? 100 : 0"
    )
    assert _definition().priority == ""


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency": 0}, "concurrency.limit"),
        ({"concurrency": True}, "concurrency"),
        ({"concurrency": "5"}, "concurrency"),
        ({"concurrency": [3]}, "concurrency[0]"),
        ({"priority": 601}, "priority"),
        ({"priority": ""}, "priority"),
        ({"priority": 1.5}, "priority"),
    ],
)
def test_bad_options_are_refused_naming_them(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _definition(**options)


def test_a_limit_needs_a_positive_integer_and_a_real_key() -> None:
    with pytest.raises(ValueError, match=r"concurrency\.limit"):
        ironflow.Concurrency(limit=-1)
    with pytest.raises(ValueError, match=r"concurrency\.key"):
        ironflow.Concurrency(limit=1, key="")
