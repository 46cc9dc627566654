"""Index keys for wait matches: which expressions give a key, and that a key never excludes a true match."""

from __future__ import annotations

import datetime
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ironflow.services.core.cel import MAX_EXPRESSION_BYTES, CelEvaluationError, compile_expression
from ironflow.services.core.cel_keys import EqualityKey, equality_key, key_text, lookup_path


def key(text: str, **kwargs: Any) -> tuple[tuple[str, ...], str]:
    found = equality_key(text, **kwargs)
    assert found is not None, text
    return found.path, found.reference.text


# --- which expressions give a key ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "reference"),
    [
        ("async.data.orderId == event.data.orderId", ("data", "orderId"), "event.data.orderId"),
        ("event.data.orderId == async.data.orderId", ("data", "orderId"), "event.data.orderId"),
        ('async.data.kind == "x"', ("data", "kind"), '"x"'),
        ('"x" == async.data.kind', ("data", "kind"), '"x"'),
        ("async.data.total == 42", ("data", "total"), "42"),
        (
            'async.data.id == event.data.a + "-" + event.data.b',
            ("data", "id"),
            'event.data.a + "-" + event.data.b',
        ),
        ('async["data"]["orderId"] == event.data.orderId', ("data", "orderId"), "event.data.orderId"),
        ('async.data["order id"] == event.data.id', ("data", "order id"), "event.data.id"),
        ("(async.data.orderId == event.data.orderId)", ("data", "orderId"), "event.data.orderId"),
        ("async.data.orderId == (event.data.orderId)", ("data", "orderId"), "(event.data.orderId)"),
        ("async.data.x == event.data.x // a comment", ("data", "x"), "event.data.x"),
        ("async.data.flag == true", ("data", "flag"), "true"),
        ("false == async.data.flag", ("data", "flag"), "false"),
        ("async.data.x == null", ("data", "x"), "null"),
        ("async.data.x == -1", ("data", "x"), "-1"),
        ("async.data.x == -event.data.x", ("data", "x"), "- event.data.x"),
        (".async.data.x == .event.data.x", ("data", "x"), ".event.data.x"),
        (
            'async.data.x == (event.data.a > 1 ? - -1 : {"k": [2u, 3.5, b"x", r"\\d", true]}.k[0])',
            ("data", "x"),
            '(event.data.a > 1 ? - -1 : {"k": [2u, 3.5, b"x", r"\\d", true]}.k[0])',
        ),
        ("async.data.n == int(event.data.s) * 2 % 7", ("data", "n"), "int(event.data.s) * 2 % 7"),
        ("async.data.ok == !has(event.data.x)", ("data", "ok"), "! has(event.data.x)"),
    ],
)
def test_an_equality_with_a_field_of_async_gives_a_key_in_either_order(
    text: str, path: tuple[str, ...], reference: str
) -> None:
    assert key(text) == (path, reference)


@pytest.mark.parametrize(
    ("text", "path", "reference"),
    [
        (
            "async.data.orderId == event.data.orderId && async.data.total > 10",
            ("data", "orderId"),
            "event.data.orderId",
        ),
        (
            "async.data.total > 10 && async.data.orderId == event.data.orderId",
            ("data", "orderId"),
            "event.data.orderId",
        ),
        ('async.data.a == "1" && async.data.b == "2" && async.data.c == "3"', ("data", "a"), '"1"'),
        ('async.data.a != "1" && async.data.b > 2 && async.data.c == "3"', ("data", "c"), '"3"'),
        ('(async.data.a > 1 && (async.data.b == "2")) && async.data.c == "3"', ("data", "b"), '"2"'),
        ('(async.data.a == 1 || true) && async.data.b == "2"', ("data", "b"), '"2"'),
        ('!(async.data.a == 1) && async.data.b == "2"', ("data", "b"), '"2"'),
        ('async.data.x == async.data.y && async.data.b == "2"', ("data", "b"), '"2"'),
    ],
)
def test_a_conjunction_gives_the_key_of_its_first_qualifying_operand(
    text: str, path: tuple[str, ...], reference: str
) -> None:
    assert key(text) == (path, reference)


@pytest.mark.parametrize(
    "text",
    [
        "async.data.a == event.data.a || async.data.b == event.data.b",
        "async.data.a == event.data.a || false",
        "!(async.data.a == event.data.a)",
        "!(async.data.a != event.data.a)",
        "async.data.a == event.data.a ? true : false",
        "true ? async.data.a == event.data.a : true",
        "[1].all(x, async.data.a == event.data.a)",
        "[1].exists(x, async.data.a == event.data.a)",
        "async.data.items.exists(i, i == event.data.a)",
        "has(async.data.a) || async.data.a == 1",
        "(async.data.a == 1 && true) || true",
        # the `&&` is inside a string literal, not a conjunction
        '"async.data.a == 1 && x" == event.data.a',
        'async.data.a + " && " == event.data.a',
        # no field chain of async on either side
        "event.data.a == 1",
        "event.data.a == event.data.b && true",
        "size(async.data.a) == 1",
        "async.data.a + 1 == 2",
        "-async.data.a == 1",
        "[async.data.a] == [1]",
        "async.data.a.size() == 1",
        "async == event",
        "async.data.a < 1",
        "async.data.a != 1",
        "async.data.a in [1, 2]",
        "async.data.a == 1 == true",
        "async.data[0] == 1",
        "async.data[event.data.key] == 1",
        # the other side depends on async, or on something besides event
        "async.data.a == async.data.b",
        "async.data.a == event.data.a + async.data.b",
        "async.data.a == other.data.a",
        "async.data.a == event.data.items.map(i, i.id)",
        # not CEL at all
        "async.data.a ==",
        "",
    ],
)
def test_no_key_where_an_equality_need_not_hold(text: str) -> None:
    assert equality_key(text) is None


def test_deep_or_long_expressions_give_an_answer_not_an_error() -> None:
    deep = "(" * 1500 + "async.data.a == 1" + ")" * 1500
    assert key(deep) == (("data", "a"), "1")
    assert equality_key("async.data.a == " + "(" * 1000 + "event.data.a" + ")" * 1000) is None
    assert equality_key(f'async.data.a == "{"x" * MAX_EXPRESSION_BYTES}"') is None


def test_the_candidate_variable_can_be_named() -> None:
    assert equality_key("async.data.a == event.data.a", candidate="incoming") is None
    assert key("incoming.data.a == event.data.a", candidate="incoming") == (("data", "a"), "event.data.a")


def test_a_key_is_a_frozen_value() -> None:
    found = equality_key("async.data.a == 1")
    assert isinstance(found, EqualityKey)
    with pytest.raises(AttributeError):
        found.path = ("b",)  # type: ignore[misc]


def test_the_reference_evaluates_with_only_the_waiting_runs_event() -> None:
    found = equality_key('async.data.id == event.data.a + "-" + string(event.data.n)')
    assert found is not None
    assert found.reference.evaluate({"event": {"data": {"a": "x", "n": 7}}}) == "x-7"


# --- key_text and lookup_path -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (1, 1.0),
        (0, -0.0),
        (-3, -3.0),
        (2**70, float(2**70)),
        (2**70 + 1, float(2**70)),  # an int beyond int64 is a double in CEL, so these are equal
        ({"a": 1, "b": [1, 2.0]}, {"b": [1.0, 2], "a": 1.0}),
        ([{"x": None}], [{"x": None}]),
        (
            datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC),
            datetime.datetime(2024, 5, 1, 14, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
        ),
        (math.inf, math.inf),
    ],
)
def test_values_cel_calls_equal_have_the_same_key_text(a: Any, b: Any) -> None:
    assert compile_expression("event.a == event.b", field="f").matches({"event": {"a": a, "b": b}})
    assert key_text(a) is not None
    assert key_text(a) == key_text(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (True, 1),
        (False, 0),
        (1, "1"),
        (None, "null"),
        (None, 0),
        ([1], 1),
        (1.5, 1),
        (2**62 + 1, float(2**62)),
    ],
)
def test_values_cel_calls_unequal_here_have_different_key_texts(a: Any, b: Any) -> None:
    assert not compile_expression("event.a == event.b", field="f").matches({"event": {"a": a, "b": b}})
    assert key_text(a) != key_text(b)


def test_key_text_is_compact_json_with_sorted_keys() -> None:
    assert key_text({"b": [1.0, True, None], "a": "x"}) == '{"a":"x","b":[1,true,null]}'
    assert key_text(None) == "null"
    assert key_text(1.0) == key_text(1) == "1"
    assert key_text(0.5) == "0.5"


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        [1, math.nan],
        {"a": math.nan},
        10**400,
        {1: "a"},
        b"x",
        datetime.datetime(2024, 1, 1),
        object(),
    ],
)
def test_values_that_cannot_be_keyed_have_no_key_text(value: Any) -> None:
    assert key_text(value) is None


def test_lookup_path_walks_mappings() -> None:
    event = {"data": {"orderId": "o1", "none": None, "list": [1]}}
    assert lookup_path(event, ("data", "orderId")) == (True, "o1")
    assert lookup_path(event, ("data", "none")) == (True, None)
    assert lookup_path(event, ()) == (True, event)
    assert lookup_path(event, ("data", "missing")) == (False, None)
    assert lookup_path(event, ("data", "orderId", "x")) == (False, None)
    assert lookup_path(event, ("data", "list", "0")) == (False, None)
    assert lookup_path(None, ("data",)) == (False, None)


# --- soundness, by property -----------------------------------------------------------------------------

_NAMES = ("a", "b", "c")
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([2**62, 2**63, 2**70, 2**70 + 1, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.5, 1.0, -0.0, 2.0**63, 2.0**70]),
    st.sampled_from(["", "x", "1", "a && b"]),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_NAMES), inner, max_size=3),
    max_leaves=8,
)


def _as_struct(value: Any) -> Any:
    """The value as protobuf's JSON Struct would give it back: every number a double."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        return [_as_struct(item) for item in value]
    return {name: _as_struct(item) for name, item in value.items()}


_data = st.dictionaries(st.sampled_from(_NAMES), _json, max_size=3)
# A trigger's fields are present, so that references such as `event.data.a + 1` often evaluate.
_trigger_data = st.fixed_dictionaries(
    {
        "a": _scalars | _json,
        "b": _scalars | _json,
        "c": st.dictionaries(st.sampled_from(_NAMES), _json, min_size=1, max_size=3),
    }
)
_TEMPLATES = [
    "async.data.a == event.data.a",
    "event.data.b == async.data.a",
    'async["data"]["a"] == event.data.a',
    "async.data.c.b == event.data.c.b && async.data.a != null",
    "async.data.c != null && async.data.a == event.data.b",
    "(async.data.a == event.data.a) && (async.data.b == event.data.b || true)",
    "async.data.a == event.data.a + 1",
    'async.data.a == event.data.a + "x"',
    "async.data.a == [event.data.a, event.data.b]",
    "async.data.a == {'a': event.data.a}",
    "async.data.a == 1",
    "async.data.a == true",
    "async.data.a == null",
    "async.data.a == event.data",
]


def _planted(value: Any, path: tuple[str, ...], item: Any) -> Any:
    """`value` with `item` at `path`, creating maps on the way."""
    if not path:
        return item
    base = value if isinstance(value, dict) else {}
    return {**base, path[0]: _planted(base.get(path[0]), path[1:], item)}


@st.composite
def _waits(draw: st.DrawFn) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A template, a trigger event and a candidate event, which often carries the reference's value.

    Planting the value (as is, or re-encoded as a Struct would) makes true matches common; random data
    alone rarely satisfies an equality.
    """
    text = draw(st.sampled_from(_TEMPLATES))
    event = {"data": draw(_trigger_data)}
    incoming = {"data": draw(st.one_of(_data, st.just(event["data"]), st.just(_as_struct(event["data"]))))}
    found = equality_key(text)
    if found is not None and draw(st.booleans()):
        try:
            value = found.reference.evaluate({"event": event})
        except CelEvaluationError:
            return text, event, incoming
        incoming = _planted(incoming, found.path, draw(st.sampled_from([value, _as_struct(value)])))
    return text, event, incoming


@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow])
@given(_waits())
def test_a_key_never_excludes_a_true_match(wait: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    text, event, incoming = wait
    found = equality_key(text)
    assert found is not None, text
    if not compile_expression(text, field="match").matches({"event": event, "async": incoming}):
        return
    exists, value = lookup_path(incoming, found.path)
    assert exists
    reference = found.reference.evaluate({"event": event})
    assert key_text(value) is not None
    assert key_text(value) == key_text(reference)


@given(_json, _json)
def test_cel_equal_values_have_equal_key_texts(a: Any, b: Any) -> None:
    if compile_expression("event.a == event.b", field="f").matches({"event": {"a": a, "b": b}}):
        assert key_text(a) == key_text(b)
        assert key_text(a) is not None


@given(_json)
def test_the_struct_form_of_a_value_has_its_key_text_when_cel_finds_them_equal(value: Any) -> None:
    # Not always equal: ints above 2**53 change value as doubles.
    variables = {"event": {"a": value, "b": _as_struct(value)}}
    if compile_expression("event.a == event.b", field="f").matches(variables):
        assert key_text(_as_struct(value)) == key_text(value)
