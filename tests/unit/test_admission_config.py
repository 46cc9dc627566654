"""Rate limit and idempotency as declared (SDK), validated (registry) and keyed (scheduler)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import ironflow
from ironflow.services.core.cel import compile_expression
from ironflow.services.core.errors import ErrorCode, ServiceError
from ironflow.services.registry._validation import normalise_definition
from ironflow.services.scheduler._admission import compile_admission, event_key
from ironflow.v1 import functions_pb2


async def _noop(ctx: ironflow.Context) -> None:
    return None


def test_the_decorator_puts_the_controls_in_the_definition() -> None:
    declared = ironflow.function(
        id="f",
        triggers=[ironflow.on_event("order.placed")],
        rate_limit=ironflow.RateLimit(limit=3, period="1m", key="event.data.userId"),
        idempotency="event.data.orderId",
    )(_noop)
    definition = declared.definition()
    assert definition.rate_limit.limit == 3
    assert definition.rate_limit.period.ToTimedelta() == timedelta(minutes=1)
    assert definition.rate_limit.key == "event.data.userId"
    assert definition.idempotency.key == "event.data.orderId"
    assert definition.idempotency.window.ToTimedelta() == timedelta(hours=24)

    plain = ironflow.function(id="g", triggers=[ironflow.on_event("x")])(_noop).definition()
    assert not plain.HasField("rate_limit")
    assert not plain.HasField("idempotency")


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: ironflow.RateLimit(limit=0, period="1m"), "rate_limit.limit"),
        (lambda: ironflow.RateLimit(limit=True, period="1m"), "rate_limit.limit"),
        (lambda: ironflow.RateLimit(limit=1, period=0), "rate_limit.period"),
        (lambda: ironflow.RateLimit(limit=1, period="soon"), "rate_limit.period"),
        (lambda: ironflow.RateLimit(limit=1, period="1m", key=""), "rate_limit.key"),
        (lambda: ironflow.Idempotency(key=""), "idempotency.key"),
        (lambda: ironflow.Idempotency(key="event.data.id", window="0s"), "idempotency.window"),
        (lambda: ironflow.function(id="f", idempotency=42)(_noop), "idempotency"),
        (lambda: ironflow.function(id="f", rate_limit="3/m")(_noop), "rate_limit"),
    ],
)
def test_the_sdk_refuses_bad_controls_naming_the_field(make: object, field: str) -> None:
    assert callable(make)
    with pytest.raises(ValueError, match=rf"^{field}:"):
        make()


def _normalised(**controls: object) -> functions_pb2.FunctionDefinition:
    definition = functions_pb2.FunctionDefinition(id="f", **controls)
    return normalise_definition(
        definition, field="functions[0]", default_endpoint_url="", now=datetime.now(UTC)
    )


def test_registration_makes_the_default_window_explicit() -> None:
    normalised = _normalised(idempotency=functions_pb2.Idempotency(key="event.data.orderId"))
    assert normalised.idempotency.window.ToTimedelta() == timedelta(hours=24)


def test_registration_names_the_field_of_a_bad_control() -> None:
    with pytest.raises(ServiceError) as info:
        _normalised(rate_limit=functions_pb2.RateLimit(limit=5))
    assert info.value.code == ErrorCode.INVALID_ARGUMENT
    assert info.value.message.startswith("functions[0].rate_limit.period:")


def _keys(expression: str | None, data: dict[str, object]) -> str:
    compiled = compile_expression(expression, field="key") if expression is not None else None
    return event_key(compiled, {"event": {"name": "e", "data": data, "id": "evt", "metadata": {}}})


def test_keys_compare_as_cel_values() -> None:
    key = "event.data.id"
    assert _keys(key, {"id": 1}) == _keys(key, {"id": 1.0})
    assert _keys(key, {"id": 1}) != _keys(key, {"id": "1"})
    assert _keys(key, {"id": {"a": 1, "b": [True]}}) == _keys(key, {"id": {"b": [True], "a": 1.0}})
    # Missing, null and "" are the one empty key, which is also the key of a control without one.
    empty = _keys(None, {})
    assert _keys(key, {}) == _keys(key, {"id": None}) == _keys(key, {"id": ""}) == empty
    assert _keys(key, {"id": "x"}) != empty
    assert _keys("event.data.id + 1", {"id": "text"}) == empty  # a type error


def test_an_invalid_stored_rate_limit_is_left_out() -> None:
    """Stored before validation (limit 0): the scheduler applies what is valid and ignores the rest."""
    definition = functions_pb2.FunctionDefinition(
        id="f",
        rate_limit=functions_pb2.RateLimit(limit=0),
        idempotency=functions_pb2.Idempotency(key="event.data.id"),
    )
    admission = compile_admission(definition, field="f")
    assert admission is not None
    assert admission.rate_limit is None
    assert admission.idempotency is not None
    assert admission.idempotency.window == timedelta(hours=24)
    assert compile_admission(functions_pb2.FunctionDefinition(id="g"), field="g") is None
