"""CEL expressions: compilation errors, the int/double rule, missing fields, CEL basics, plain results."""

from __future__ import annotations

import datetime
import operator
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import celpy
import pytest
from celpy.celparser import CELParser
from hypothesis import given, settings
from hypothesis import strategies as st

from ironflow.services.core import cel
from ironflow.services.core.cel import (
    MAX_EXPRESSION_BYTES,
    CelEvaluationError,
    check_expression,
    compile_expression,
)
from ironflow.services.core.errors import ErrorCode, ServiceError

PLACED_AT = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)


def order_event(**data: Any) -> dict[str, Any]:
    """The variables of a trigger condition for an `order.placed` event carrying `data`."""
    return {"event": {"name": "order.placed", "data": data, "id": "evt_1", "timestamp": PLACED_AT}}


def matches(text: str, **data: Any) -> bool:
    return compile_expression(text, field="trigger.if").matches(order_event(**data))


def evaluate(text: str, **data: Any) -> Any:
    return compile_expression(text, field="trigger.if").evaluate(order_event(**data))


# --- compiling --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "event.data.total >",  # syntax
        "event.data.total > 100 &&",
        "a.b.c(",
        "[1].map(1, x)",  # parses, but the transpiler cannot handle it
        "event.all(x)",
        "(" * 1500 + "1" + ")" * 1500,  # parses, but nests too deep to compile
    ],
)
def test_expressions_that_do_not_compile_are_invalid_arguments_naming_field_and_text(text: str) -> None:
    with pytest.raises(ServiceError) as exc:
        compile_expression(text, field="functions[0].triggers[1].if")
    assert exc.value.code is ErrorCode.INVALID_ARGUMENT
    assert exc.value.message.startswith("functions[0].triggers[1].if: ")
    assert repr(text)[:60] in exc.value.message
    with pytest.raises(ServiceError):
        check_expression(text, field="x")


def test_expressions_longer_than_the_cap_are_rejected_before_parsing() -> None:
    text = "true || " * (MAX_EXPRESSION_BYTES // 8) + "true"
    with pytest.raises(ServiceError) as exc:
        compile_expression(text, field="f")
    assert exc.value.message == f"f: expression is longer than {MAX_EXPRESSION_BYTES} bytes"


def test_check_expression_returns_the_text_and_compile_expression_keeps_it() -> None:
    assert check_expression("event.data.total > 100", field="f") == "event.data.total > 100"
    expression = compile_expression("event.data.total > 100", field="f")
    assert expression.text == "event.data.total > 100"
    assert repr(expression) == "Expression('event.data.total > 100')"


def test_evaluating_does_not_parse_again(monkeypatch: pytest.MonkeyPatch) -> None:
    expression = compile_expression("event.data.total > 100", field="f")

    def no_parsing(text: str) -> None:
        raise AssertionError("parsed during evaluation")

    monkeypatch.setattr(cel._ENVIRONMENT, "compile", no_parsing)
    assert expression.matches(order_event(total=120))


def test_compiling_works_after_another_environment_replaced_celpys_shared_parser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # celpy caches one parser per process, with the tree class of the first Environment created.
    monkeypatch.setattr(CELParser, "CEL_PARSER", None)
    celpy.Environment()  # an interpreted-runner environment: plain lark trees from now on
    assert matches("event.data.total > 100", total=120)


@given(st.text(alphabet="abe.()[]{}<>=!&|?:+-*/%'\" 0129_,tnuls", max_size=30))
def test_any_text_either_compiles_or_is_an_invalid_argument_and_matching_never_raises(text: str) -> None:
    try:
        expression = compile_expression(text, field="f")
    except ServiceError as exc:
        code = exc.code
    else:
        code = None
        assert expression.matches({"a": 1, "b": {"e": [1.5, "s", None]}, "e": True}) in (True, False)
    assert code in (None, ErrorCode.INVALID_ARGUMENT)


# --- ints and doubles -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "total", "expected"),
    [
        ("event.data.total > 100", 120, True),
        ("event.data.total > 100", 120.5, True),
        ("event.data.total > 100", 99.5, False),
        ("event.data.total > 100.0", 120, True),
        ("event.data.total >= 100", 100.0, True),
        ("event.data.total <= 100.0", 100, True),
        ("event.data.total < 100", 99.9, True),
        ("event.data.total < 100.5", 101, False),
        ("event.data.total == 100", 100, True),
        ("event.data.total == 100", 100.0, True),
        ("event.data.total == 100.0", 100, True),
        ("event.data.total == 100", 100.5, False),
        ("event.data.total != 100", 100.0, False),
        ("event.data.total != 100.0", 101, True),
        ("100 < event.data.total", 100.5, True),
        ("1.5 < event.data.total", 2, True),
        ("event.data.total > 1.5", 2, True),
        ("event.data.total + 1 > 2.5", 2, True),
        ("event.data.total + 1 > 2.5", 1, False),
        ("event.data.total * 1.5 == 3.0", 2, True),
        ("event.data.total - 0.5 == 1.5", 2, True),
        ("event.data.total / 2.0 == 2.5", 5, True),
        ("event.data.total / 2 == 2", 5, True),  # int division stays int, as in CEL
        ("event.data.total in [1, 2.5, 3]", 3.0, True),
        ("event.data.total in [1, 2.5, 3]", 2.5, True),
        ("1 < 1.5 && 2.0 > 1", 0, True),
        ("size([1, 2]) > 1.5", 0, True),
    ],
)
def test_ints_and_doubles_compare_and_combine_by_value(text: str, total: float, expected: bool) -> None:
    assert matches(text, total=total) is expected


OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)
numbers = st.one_of(int64s, st.floats(allow_nan=True, allow_infinity=True))


@given(a=numbers, b=numbers, symbol=st.sampled_from(sorted(OPERATORS)))
def test_numeric_comparison_agrees_with_python_for_any_ints_and_floats(
    a: float, b: float, symbol: str
) -> None:
    assert matches(f"event.data.a {symbol} event.data.b", a=a, b=b) is OPERATORS[symbol](a, b)


@given(a=int64s, b=st.floats(allow_nan=False, allow_infinity=False))
def test_int_plus_double_is_the_double_sum(a: int, b: float) -> None:
    assert evaluate("event.data.a + event.data.b", a=a, b=b) == float(a) + b


def test_double_modulo_and_int_overflow_are_errors_as_in_cel() -> None:
    assert not matches("event.data.x % 2 == 1", x=3.0)
    assert matches("event.data.x % 2 == 1", x=3)
    with pytest.raises(CelEvaluationError):
        evaluate("event.data.x + 1", x=2**63 - 1)


def test_integers_beyond_int64_become_doubles_instead_of_failing_the_event() -> None:
    assert matches("event.data.huge > 1 && event.data.total > 100", huge=2**70, total=120)
    assert evaluate("event.data.huge", huge=2**70) == float(2**70)


# --- bools are not numbers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("event.data.flag", True),
        ("event.data.flag == true", True),
        ("!event.data.off", True),
        ("event.data.flag && !event.data.off", True),
        ("event.data.flag == 1", False),
        ("event.data.flag != 1", True),
        ("event.data.flag > 0", False),  # an error: bools do not order against numbers
        ("event.data.flag + 1 == 2", False),
        ("event.data.flag in [1]", False),
    ],
)
def test_python_bools_stay_cel_bools(text: str, expected: bool) -> None:
    assert matches(text, flag=True, off=False) is expected


# --- missing fields ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "event.data.nope > 1",
        "event.data.nope == 1",
        "event.data.nope != 1",
        "event.data.a.b == 1",  # a is absent
        "event.data.total.b == 1",  # total is not a map
        "event.nope.deeper == 'x'",
        "nothing == 1",  # not a variable at all
        "event.data.items[5] == 1",
        "event.data['nope'] == 1",
        "(event.data.nope || false) == false",  # errors do not turn into values through ==
        "!(event.data.nope > 1)",
    ],
)
def test_a_missing_field_or_key_is_no_match(text: str) -> None:
    assert matches(text, total=120, items=[1]) is False
    with pytest.raises(CelEvaluationError, match="failed"):
        evaluate(text, total=120, items=[1])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("has(event.data.total)", True),
        ("has(event.data.nope)", False),
        ("!has(event.data.nope)", True),
        ("has(event.data.total) && !has(event.data.nope)", True),
        ("has(event.data.nope) || has(event.data.total)", True),
        ("has(event.data.nope) ? false : true", True),
        ("has(event.data.a.b)", False),
        ("has(event.data.nope) == false", True),
        ("event.data.nope > 1 || true", True),  # CEL's commutative ||: an error on one side is absorbed
        ("event.data.nope > 1 && false", False),
    ],
)
def test_has_and_errors_under_logical_operators(text: str, expected: bool) -> None:
    assert matches(text, total=120) is expected


# --- CEL basics -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('event.name == "order.placed"', True),
        ("event.name == 'order.shipped'", False),
        ("event.name.startsWith('order.')", True),
        ("event.name.endsWith('.placed') && event.id == 'evt_1'", True),
        ("event.name.contains('der')", True),
        ("event.name.matches('^order\\\\.[a-z]+$')", True),
        ("event.data.customer.tier == 'gold'", True),
        ("event.data.customer.address.city in ['Oslo', 'Bergen']", True),
        ("'b' in event.data.tags", True),
        ("'z' in event.data.tags", False),
        ("'tier' in event.data.customer", True),
        ("size(event.data.tags) == 3 && size(event.name) == 12", True),
        ("event.data.tags.size() == 3", True),
        ("event.data.tags[0] == 'a'", True),
        ("event.data.tags.exists(t, t == 'c')", True),
        ("event.data.tags.all(t, size(t) == 1)", True),
        ("event.data.tags.filter(t, t != 'a') == ['b', 'c']", True),
        ("event.data.items.map(i, i.qty).exists(q, q > 1.5)", True),
        ("event.data.vip || event.data.total > 1000", True),
        ("!event.data.vip", False),
        ("event.data.total > 100 ? event.data.vip : false", True),
        ("event.data.coupon == null", True),
        ("event.data.customer != null", True),
        ("event.data.total != null", True),
        ("event.data.customer == {'tier': 'gold', 'address': {'city': 'Oslo'}}", True),
        ("event.data.tags == ['a', 'b', 'c']", True),
        ("event.data.total == '120'", False),  # different kinds are unequal, not an error
        ("event.data.total != '120'", True),
        ("event.data.total > '100'", False),  # ordering across kinds is an error: no match
        ("event.data.total + 'x' == 'x'", False),
        ("event.name > 5", False),
        ("int(event.data.total) == 120 && string(event.data.total) == '120'", True),
        ("double(event.data.total) == 120.0", True),
        ("type(event.data.total) == int", True),
        ("1 / 0 == 1", False),
    ],
)
def test_cel_basics(text: str, expected: bool) -> None:
    data = {
        "total": 120,
        "vip": True,
        "coupon": None,
        "tags": ["a", "b", "c"],
        "customer": {"tier": "gold", "address": {"city": "Oslo"}},
        "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}],
    }
    assert matches(text, **data) is expected


# --- timestamps -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('event.timestamp > timestamp("2020-01-01T00:00:00Z")', True),
        ('event.timestamp < timestamp("2024-05-01T12:30:00+02:00")', False),
        ('event.timestamp == timestamp("2024-05-01T12:30:00Z")', True),
        ('event.timestamp - duration("1h") > timestamp("2024-05-01T11:00:00Z")', True),
        ("event.timestamp.getFullYear() == 2024 && event.timestamp.getHours() == 12", True),
        ("event.timestamp > 5", False),
    ],
)
def test_timestamps(text: str, expected: bool) -> None:
    assert matches(text) is expected


def test_datetimes_in_other_zones_are_the_same_instant() -> None:
    oslo = datetime.timezone(datetime.timedelta(hours=2))
    variables = {"event": {"timestamp": PLACED_AT.astimezone(oslo)}}
    assert compile_expression('event.timestamp == timestamp("2024-05-01T12:30:00Z")', field="f").matches(
        variables
    )
    result = compile_expression("event.timestamp", field="f").evaluate(variables)
    assert result == PLACED_AT
    assert result.tzinfo is datetime.UTC
    result = compile_expression('timestamp("2024-05-01T14:30:00+02:00")', field="f").evaluate({})
    assert result == PLACED_AT
    assert result.tzinfo is datetime.UTC


# --- results ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("event.data.total", 120),
        ("event.data.price", 9.5),
        ("event.data.total + 0.5", 120.5),
        ("event.name", "order.placed"),
        ("event.data.coupon", None),
        ("event.data.vip", True),
        ("event.data.tags", ["a", "b"]),
        ("event.data.customer", {"tier": "gold", "ids": [1, 2.5]}),
        ("event.data.tags.map(t, t + '!')", ["a!", "b!"]),
        ("{'k': [event.data.total]}", {"k": [120]}),
        ("event.timestamp", PLACED_AT),
        ('duration("90s")', datetime.timedelta(seconds=90)),
        ("has(event.data.total)", True),
    ],
)
def test_evaluate_returns_plain_python_values(text: str, expected: Any) -> None:
    data = {
        "total": 120,
        "price": 9.5,
        "coupon": None,
        "vip": True,
        "tags": ["a", "b"],
        "customer": {"tier": "gold", "ids": [1, 2.5]},
    }
    result = evaluate(text, **data)
    assert result == expected
    assert_plain(result)


def assert_plain(value: Any) -> None:
    """No celpy types anywhere inside: exactly the builtin types."""
    assert type(value) in (
        int,
        float,
        str,
        bool,
        type(None),
        list,
        dict,
        datetime.datetime,
        datetime.timedelta,
    )
    if isinstance(value, list):
        for item in value:
            assert_plain(item)
    if isinstance(value, dict):
        for key, item in value.items():
            assert_plain(key)
            assert_plain(item)


@pytest.mark.parametrize("text", ["event.data.total", "event.name", "event.data", "event.data.tags", "null"])
def test_a_result_that_is_not_a_bool_is_no_match(text: str) -> None:
    assert matches(text, total=120, tags=[True]) is False


def test_results_without_a_plain_form_are_evaluation_errors() -> None:
    with pytest.raises(CelEvaluationError):
        evaluate("type(1)")


@pytest.mark.parametrize(
    "value",
    [datetime.datetime(2024, 1, 1), {1, 2}, b"bytes", object()],  # the datetime is naive
)
def test_values_that_are_not_json_like_are_evaluation_errors(value: object) -> None:
    expression = compile_expression("has(event.x)", field="f")
    assert expression.matches({"event": {"x": value}}) is False
    with pytest.raises(CelEvaluationError):
        expression.evaluate({"event": {"x": value}})


# --- variables ----------------------------------------------------------------------------------------


def test_wait_match_variables_event_and_async() -> None:
    # `async` is a Python keyword; the transpiled code cannot spell `activation.async`.
    expression = compile_expression("event.data.order_id == async.data.order_id", field="wait.match")
    waiting = {"data": {"order_id": "o1"}}
    assert expression.matches({"event": waiting, "async": {"data": {"order_id": "o1"}}})
    assert not expression.matches({"event": waiting, "async": {"data": {"order_id": "o2"}}})
    assert compile_expression("[async].exists(async, async.id == 1)", field="f").matches({"async": {"id": 1}})


@pytest.mark.parametrize("name", ["package", "functions", "identifiers", "get", "clone", "class", "None"])
def test_variables_named_like_python_keywords_or_activation_attributes(name: str) -> None:
    assert compile_expression(f"{name}.x == 1", field="f").matches({name: {"x": 1}})


def test_subscription_filter_variables() -> None:
    expression = compile_expression(
        "subject.startsWith('orders.') && data.total >= 100 && type == 'order.placed'", field="filter"
    )
    assert expression.matches({"subject": "orders.eu", "data": {"total": 100.0}, "type": "order.placed"})
    assert not expression.matches({"subject": "orders.eu", "data": {}, "type": "order.placed"})


def test_one_expression_evaluates_correctly_from_many_threads() -> None:
    expression = compile_expression("event.data.n % 2 == 0", field="f")
    barrier = threading.Barrier(8)

    def check(n: int) -> bool:
        if n < 8:
            barrier.wait()
        return expression.matches(order_event(n=n)) is (n % 2 == 0)

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(check, range(2000)))


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner, max_size=3),
    max_leaves=8,
)


@given(data=st.dictionaries(st.sampled_from("abc"), _JSON_VALUES, max_size=3))
@settings(max_examples=300, deadline=None)
def test_a_field_path_gives_what_cel_gives(data: dict[str, object]) -> None:
    """Plain field paths skip the CEL interpreter: the value, or the failure, must be CEL's own."""
    variables = {"event": {"name": "n", "data": data, "id": "e1", "metadata": {}}}
    for text in ("event.data.a", "event.data.a.b", "event.data.b.c.a", "event.name", "event.nothing"):
        fast = compile_expression(text, field="key")
        slow = compile_expression(f"({text})", field="key")  # not a plain path: the interpreter runs
        try:
            expected: object = slow.evaluate(variables)
        except CelEvaluationError:
            with pytest.raises(CelEvaluationError):
                fast.evaluate(variables)
        else:
            assert fast.evaluate(variables) == expected
