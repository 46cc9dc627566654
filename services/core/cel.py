"""CEL expressions (trigger `if`, wait `match`, subscription filters, keys): compiled once, evaluated often.

Built on cel-python 0.5: `compile_expression` parses and transpiles to a Python code object once;
`Expression.evaluate` only converts the variables and runs that code.

Numbers. Events are JSON, and authors write `total > 100` without caring whether 120 or 120.5 arrives,
but cel-python raises on `IntType < DoubleType` (while accepting `DoubleType < IntType`). JSON integers
stay CEL ints (other numbers are doubles) and we replace the operator functions (`_<_`, `_==_`, `_+_`,
...) with ones that compare an int with a double by exact value, as current CEL specifies, and let
int/double arithmetic produce a double. Equality is CEL's heterogeneous equality: values of different
kinds are unequal rather than an error, so `x != null` works. Rejected: making every number a double
(as protobuf's JSON Struct does); it breaks `list[0]`, `size(x) > 1` and `int()` results, and loses
integer precision above 2**53.

Running. `CompiledRunner.evaluate` is unusable as is: the transpiled code names extension functions by
module path yet runs in celpy.evaluation's namespace (ours would be undefined), it parks the activation
in that shared namespace (not thread-safe) and logs every evaluation error at ERROR. We exec the
transpiler's code object in a private namespace per call instead, relying on two conventions of the 0.5
transpiler: the code reads `base_activation` and leaves its result in `CEL`.
"""

from __future__ import annotations

import datetime
import keyword
import logging
import operator
import re
import sys
from collections.abc import Callable, Mapping
from types import CodeType
from typing import Any

import celpy
import lark
from celpy import celtypes
from celpy.celparser import CELParseError
from celpy.evaluation import Activation, CELEvalError, CELFunction, Result, TranspilerTree

from .errors import invalid_argument

# cel-python logs every transpiled expression at INFO and every failed evaluation at ERROR; both are
# routine here (a non-matching event is not an error), so only its warnings get through.
logging.getLogger("celpy").setLevel(logging.WARNING)

MAX_EXPRESSION_BYTES = 4096
_INT64 = range(-(2**63), 2**63)
# The transpiler turns a variable `x` into `activation.x`: Python keywords (`async`!) and Activation's own
# attributes cannot be reached that way, so such variables are renamed, PEP 8 style, to `async_`.
_UNSAFE_NAMES = frozenset(keyword.kwlist) | frozenset(dir(Activation()))
# celpy caches one parser per process, with the tree class of whichever Environment came first; all our
# parsing goes through this one, and `_prepared` copes with trees of any class.
_ENVIRONMENT = celpy.Environment(runner_class=celpy.CompiledRunner)


# Identifiers joined by dots, and no CEL reserved word among them (those do not compile as fields).
_FIELD_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


class CelEvaluationError(Exception):
    """An expression failed while evaluating: a missing field, mismatched types, overflow, ..."""


class Expression:
    """A CEL expression compiled once (per function version / subscription) and evaluated many times."""

    __slots__ = ("_activation", "_code", "_path", "text")

    def __init__(self, text: str, code: CodeType, activation: Activation) -> None:
        self.text = text
        self._code = code
        self._activation = activation
        # A plain field path (`event.data.customerId`, the usual key) is evaluated by walking the maps:
        # the same value or failure as CEL gives, at a fraction of the cost (keys are evaluated for
        # every event, inside the trigger).
        self._path = tuple(text.split(".")) if _FIELD_PATH.fullmatch(text) else None

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"

    def evaluate(self, variables: Mapping[str, Any]) -> Any:
        """The result as a plain Python value: JSON-like, or a datetime / timedelta."""
        if self._path is not None:
            return _to_python(_to_cel(self._select(variables, self._path)))
        return _to_python(self._run(variables))

    def _select(self, variables: Mapping[str, Any], path: tuple[str, ...]) -> Any:
        value: Any = variables
        for name in path:
            if not isinstance(value, Mapping) or name not in value:
                raise CelEvaluationError(f"CEL expression {self.text!r} failed: no such key {name!r}")
            value = value[name]
        return value

    def matches(self, variables: Mapping[str, Any]) -> bool:
        """True only when the expression evaluates to boolean true; every failure is a non-match."""
        try:
            result = self._run(variables)
        except CelEvaluationError:
            return False
        return isinstance(result, bool | celtypes.BoolType) and bool(result)

    def _run(self, variables: Mapping[str, Any]) -> Result:
        try:
            context = {_python_name(name): _to_cel(value) for name, value in variables.items()}
            namespace = dict(_NAMESPACE, base_activation=self._activation.nested_activation(vars=context))
            exec(self._code, namespace)  # noqa: S102 -- code transpiled by celpy from a CEL expression
            result: Result = namespace["CEL"]
        # celpy lets some ordinary CEL failures escape as Python errors (AttributeError for a field of a
        # non-map), so anything raised while evaluating is an evaluation error.
        except Exception as exc:
            raise CelEvaluationError(f"CEL expression {self.text!r} failed: {exc}") from exc
        if isinstance(result, CELEvalError):
            reason = result.args[0] if result.args else "error"
            raise CelEvaluationError(f"CEL expression {self.text!r} failed: {reason}")
        return result


def check_expression(text: str, *, field: str) -> str:
    """Raise INVALID_ARGUMENT naming `field` and the expression when it does not compile."""
    compile_expression(text, field=field)
    return text


def compile_expression(text: str, *, field: str) -> Expression:
    """Compile `text`, or raise INVALID_ARGUMENT naming `field` and quoting the expression."""
    if len(text.encode()) > MAX_EXPRESSION_BYTES:
        raise invalid_argument(field, f"expression is longer than {MAX_EXPRESSION_BYTES} bytes")
    try:
        tree = _ENVIRONMENT.compile(text)
    except CELParseError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise invalid_argument(field, f"invalid CEL expression {text!r}: {first_line}") from exc
    # Some parseable expressions (`[1].map(1, x)`, very deep nesting) make the transpiler fail with
    # assorted Python errors; they are as invalid as a syntax error.
    try:
        runner = _ENVIRONMENT.program(_prepared(tree), functions=_FUNCTIONS)
    except Exception as exc:
        raise invalid_argument(field, f"invalid CEL expression {text!r}: {exc!r}") from exc
    assert isinstance(runner, celpy.CompiledRunner)
    return Expression(text, runner.tp.executable_code, runner.tp.base_activation)


def _python_name(name: str) -> str:
    return f"{name}_" if name in _UNSAFE_NAMES else name


def _prepared(tree: lark.Tree[lark.Token]) -> TranspilerTree:
    """Copy the tree as the transpiler's node class, renaming variables Python cannot spell."""
    children: list[Any] = []
    for child in tree.children:
        if isinstance(child, lark.Tree):
            children.append(_prepared(child))
        elif tree.data in ("ident", "dot_ident"):
            children.append(child.update(value=_python_name(child.value)))
        else:
            children.append(child)
    return TranspilerTree(tree.data, children, tree.meta)


# --- values in and out ------------------------------------------------------------------------------


def _to_cel(value: object) -> celtypes.Value:  # noqa: PLR0911 -- one return per kind of value
    """A JSON-like Python value as a CEL value; bools first, as `bool` is a subclass of `int`."""
    if value is None:
        return None
    if isinstance(value, bool | celtypes.BoolType):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        # A huge integer anywhere in an event must not fail every expression; a double is close enough.
        return celtypes.IntType(value) if value in _INT64 else celtypes.DoubleType(value)
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, Mapping):
        return celtypes.MapType({_to_cel(key): _to_cel(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return celtypes.ListType([_to_cel(item) for item in value])
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise TypeError("naive datetime; timestamps must be timezone-aware")
        return celtypes.TimestampType(value.astimezone(datetime.UTC))
    raise TypeError(f"unsupported value of type {type(value).__name__}")


def _to_python(value: Result) -> Any:  # noqa: PLR0911 -- one return per kind of value
    if value is None:
        return None
    if isinstance(value, bool | celtypes.BoolType):
        return bool(value)
    for plain in (int, float, str):
        if isinstance(value, plain):
            return plain(value)
    if isinstance(value, Mapping):
        return {_to_python(key): _to_python(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_python(item) for item in value]
    if isinstance(value, datetime.datetime):
        return datetime.datetime.combine(value.date(), value.timetz()).astimezone(datetime.UTC)
    if isinstance(value, datetime.timedelta):
        return datetime.timedelta(days=value.days, seconds=value.seconds, microseconds=value.microseconds)
    raise CelEvaluationError(f"a result of type {type(value).__name__} has no plain Python form")


# --- operators ----------------------------------------------------------------------------------------

# Kinds of value for equality and ordering: all numbers are one kind, and Python bools (`has()` yields
# them) are CEL bools; bools come first because both are ints. Anything else is its own type.
_KINDS: tuple[type | tuple[type, ...], ...] = ((bool, celtypes.BoolType), (int, float), str, list, Mapping)


def _kind(value: object) -> object:
    return next((index for index, kind in enumerate(_KINDS) if isinstance(value, kind)), type(value))


def _number(value: object) -> int | float | None:
    """A CEL int, uint or double as a plain int or float, which Python compares exactly; else None."""
    if isinstance(value, bool | celtypes.BoolType) or not isinstance(value, int | float):
        return None
    return float(value) if isinstance(value, float) else int(value)


def _equal(a: object, b: object) -> bool:
    left, right = _number(a), _number(b)
    if left is not None and right is not None:
        return left == right
    if _kind(a) != _kind(b):
        return False
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_equal, a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_equal(a[key], b[key]) for key in a)
    return bool(a == b)


def _compare(op: Callable[[Any, Any], bool], a: Result, b: Result) -> Result:
    if isinstance(a, CELEvalError) or isinstance(b, CELEvalError):
        return a if isinstance(a, CELEvalError) else b
    left, right = _number(a), _number(b)
    if left is not None and right is not None:
        return celtypes.BoolType(op(left, right))
    if op is operator.eq or op is operator.ne:
        return celtypes.BoolType(op(_equal(a, b), True))
    if _kind(a) != _kind(b):
        raise TypeError(f"no such overload: {type(a).__name__} and {type(b).__name__}")
    return celtypes.BoolType(op(a, b))


def _arithmetic(op: Callable[[Any, Any], Any], a: Result, b: Result) -> Result:
    if isinstance(a, bool | celtypes.BoolType) or isinstance(b, bool | celtypes.BoolType):
        raise TypeError("no such overload: arithmetic on a bool")  # celpy would treat it as 0 or 1
    left, right = _number(a), _number(b)
    if left is not None and right is not None and float in (type(left), type(right)):
        # DoubleType's own `/` gives infinity for x / 0.0, and its `%` raises: both as CEL specifies.
        return celtypes.DoubleType(op(celtypes.DoubleType(left), celtypes.DoubleType(right)))
    return op(a, b)  # type: ignore[no-any-return]


def _cel_bool(value: Result) -> Any:
    """`has()` yields a Python bool, which celpy's own `!`, `&&`, `||` and `?:` reject."""
    return celtypes.BoolType(value) if isinstance(value, bool) else value


def _contains(item: Result, container: Result) -> Result:
    if isinstance(item, CELEvalError) or isinstance(container, CELEvalError):
        return item if isinstance(item, CELEvalError) else container
    if not isinstance(container, list | Mapping):
        raise TypeError(f"no such overload: in {type(container).__name__}")
    return celtypes.BoolType(any(_equal(item, element) for element in container))


class _Operators:
    """Transpiled code calls these by dotted path, `<root package>...cel._Operators.lt(a, b)`."""

    @staticmethod
    def lt(a: Result, b: Result) -> Result:
        return _compare(operator.lt, a, b)

    @staticmethod
    def le(a: Result, b: Result) -> Result:
        return _compare(operator.le, a, b)

    @staticmethod
    def gt(a: Result, b: Result) -> Result:
        return _compare(operator.gt, a, b)

    @staticmethod
    def ge(a: Result, b: Result) -> Result:
        return _compare(operator.ge, a, b)

    @staticmethod
    def eq(a: Result, b: Result) -> Result:
        return _compare(operator.eq, a, b)

    @staticmethod
    def ne(a: Result, b: Result) -> Result:
        return _compare(operator.ne, a, b)

    @staticmethod
    def add(a: Result, b: Result) -> Result:
        return _arithmetic(operator.add, a, b)

    @staticmethod
    def sub(a: Result, b: Result) -> Result:
        return _arithmetic(operator.sub, a, b)

    @staticmethod
    def mul(a: Result, b: Result) -> Result:
        return _arithmetic(operator.mul, a, b)

    @staticmethod
    def div(a: Result, b: Result) -> Result:
        return _arithmetic(operator.truediv, a, b)

    @staticmethod
    def mod(a: Result, b: Result) -> Result:
        return _arithmetic(operator.mod, a, b)

    @staticmethod
    def not_(a: Result) -> Result:
        return celtypes.logical_not(_cel_bool(a))

    @staticmethod
    def and_(a: Result, b: Result) -> Result:
        return celtypes.logical_and(_cel_bool(a), _cel_bool(b))

    @staticmethod
    def or_(a: Result, b: Result) -> Result:
        return celtypes.logical_or(_cel_bool(a), _cel_bool(b))

    @staticmethod
    def conditional(condition: Result, if_true: Any, if_false: Any) -> Result:
        return celtypes.logical_condition(_cel_bool(condition), if_true, if_false)


_FUNCTIONS: dict[str, CELFunction] = {
    "_<_": _Operators.lt,
    "_<=_": _Operators.le,
    "_>_": _Operators.gt,
    "_>=_": _Operators.ge,
    "_==_": _Operators.eq,
    "_!=_": _Operators.ne,
    "_in_": _contains,
    "_+_": _Operators.add,
    "_-_": _Operators.sub,
    "_*_": _Operators.mul,
    "_/_": _Operators.div,
    "_%_": _Operators.mod,
    "!_": _Operators.not_,
    "_&&_": _Operators.and_,
    "_||_": _Operators.or_,
    "_?_:_": _Operators.conditional,
}
# Everything transpiled code names: celpy, `operator` (celpy's own functions) and, for `_Operators` and
# `_contains`, our root package.
_ROOT_PACKAGE = __name__.partition(".")[0]
_NAMESPACE: dict[str, Any] = {
    "celpy": celpy,
    "operator": operator,
    "CELEvalError": CELEvalError,
    _ROOT_PACKAGE: sys.modules[_ROOT_PACKAGE],
}
