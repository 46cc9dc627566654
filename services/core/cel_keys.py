"""Index keys for CEL `match` expressions, so an incoming event is not evaluated against every open wait.

A `wait_for_event` wait matches with an expression over `event` (the waiting run's trigger event, known
when the wait is registered) and `async` (the candidate event). Most are, or start with, an equality such
as `async.data.orderId == event.data.orderId`: `equality_key` finds one in the parse tree, and the
scheduler files the wait under `(path, key_text(reference value))` and looks an incoming event up by
`key_text(lookup_path(event, path))`, evaluating the full expression only on the waits it finds.

Soundness is the whole point: a key must never exclude a true match. So only the operands of the top-level
`&&` chain are considered (when `a && b && c` is true, every operand is true; nothing under `||`, `!`,
`?:`, a macro or a function call has that property), the candidate side must be a plain field selection
(which in CEL is exactly a map lookup, and fails when a field is missing), and the other side may mention
no variable but `event`, so evaluating it alone gives the value it has inside the full expression. Anything
else gives no key, and the wait is scanned instead. `key_text` then gives values CEL calls equal the same
text, mirroring `cel._to_cel` and `cel._equal` (numbers by value, bools apart from numbers).

Rejected: matching the text with regular expressions; string literals, comments and parentheses make
"the top-level conjunction" a parsing question.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lark
from celpy import celtypes
from celpy.celparser import CELParseError

from .cel import (
    _ENVIRONMENT,
    _INT64,
    MAX_EXPRESSION_BYTES,
    CelEvaluationError,
    Expression,
    compile_expression,
)
from .errors import ServiceError

# The one variable a reference may use: the scheduler evaluates it with only the waiting run's event.
REFERENCE_VARIABLE = "event"
# Nodes that, with a single child, mean just that child: precedence levels, a member or primary with one
# form, and parentheses. Not `list_lit` (`[x]` is not `x`), nor `exprlist`, `ident_arg`, ... .
_TRANSPARENT = frozenset(
    {
        "expr",
        "conditionalor",
        "conditionaland",
        "relation",
        "addition",
        "multiplication",
        "unary",
        "member",
        "primary",
        "paren_expr",
    }
)
_STRING_TOKENS = frozenset({"STRING_LIT", "MLSTRING_LIT"})
_FIELD = "match"  # only named in errors that equality_key catches


@dataclass(frozen=True)
class EqualityKey:
    """`async.<path> == <reference>` holds whenever the expression it came from is true."""

    path: tuple[str, ...]  # field names under the candidate variable, e.g. ("data", "orderId")
    reference: Expression  # the other side; references only `event`, never the candidate


def equality_key(text: str, *, candidate: str = "async") -> EqualityKey | None:
    """The first top-level conjunct `<candidate field chain> == <expression without it>`, else None.

    If a key K is returned then, for all variable values where the expression is true,
    `lookup_path(candidate, K.path)` exists and CEL-equals `K.reference.evaluate({"event": event})`.
    When the reference fails to evaluate for an event, that conjunct is an error and the expression can
    never be true for that event. None whenever unsure (also for text that does not parse).
    """
    if len(text.encode()) > MAX_EXPRESSION_BYTES:
        return None
    allowed = frozenset({REFERENCE_VARIABLE}) - {candidate}
    try:
        tree = _ENVIRONMENT.compile(text)
        for conjunct in _conjuncts(tree):
            key = _conjunct_key(conjunct, candidate, allowed)
            if key is not None:
                return key
    # Deeply nested parts can exhaust the stack when printed or compared (both recursive); no key is
    # always a safe answer.
    except (CELParseError, RecursionError):
        return None
    return None


def lookup_path(value: Any, path: Sequence[str]) -> tuple[bool, Any]:
    """`(True, value.<path>)`, or `(False, None)` when a step is missing or not a mapping.

    Walks any Mapping, not just dicts, because `cel._to_cel` turns every Mapping into a CEL map.
    """
    for name in path:
        if not isinstance(value, Mapping) or name not in value:
            return False, None
        value = value[name]
    return True, value


def key_text(value: Any) -> str | None:  # noqa: PLR0911 -- one return per kind of value
    """Canonical text of a JSON-like value: values CEL calls equal (see `cel._equal`) give the same text.

    Compact JSON with sorted keys, numbers by value (1 and 1.0 are "1"), bools apart from numbers, None as
    "null", aware datetimes by instant as `timestamp("...Z")`. Unequal values may share a text (the index
    only narrows; the full expression decides). None for what cannot be keyed: NaN, ints too big for a
    double, non-string map keys, naive datetimes and non-JSON types. The set of such values is closed
    under CEL equality, so a candidate value without a text cannot equal a reference value with one.
    """
    if value is None:
        return "null"
    if isinstance(value, bool | celtypes.BoolType):
        return "true" if value else "false"
    if isinstance(value, int):
        # `cel._to_cel` makes an int outside int64 a double, so it equals that double's value.
        return str(int(value)) if value in _INT64 else _float_text(value)
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, str):
        return json.dumps(str(value))
    if isinstance(value, Mapping):
        if not all(isinstance(name, str) for name in value):
            return None  # JSON has none, and CEL's `{1: x}` is unequal to every event's map
        items = {name: key_text(item) for name, item in value.items()}
        if any(item is None for item in items.values()):
            return None
        return "{" + ",".join(f"{json.dumps(str(name))}:{items[name]}" for name in sorted(items)) + "}"
    if isinstance(value, list | tuple):
        elements = [key_text(element) for element in value]
        if any(element is None for element in elements):
            return None
        return "[" + ",".join(element for element in elements if element is not None) + "]"
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            return None  # `cel._to_cel` rejects it, so no expression sees it
        # As a plain datetime, as `cel._to_python` gives a timestamp, then by instant.
        instant = datetime.datetime.combine(value.date(), value.timetz()).astimezone(datetime.UTC)
        return f'timestamp("{instant.isoformat()}")'
    return None


def _float_text(value: float | int) -> str | None:
    try:
        number = float(value)
    except OverflowError:
        return None  # `cel._to_cel` fails on it too, so no expression sees it
    if math.isnan(number):
        return None  # equal to nothing, itself included
    if number.is_integer():
        return str(int(number))  # the text of the int CEL finds equal
    return json.dumps(number)  # shortest round-trip repr; "Infinity" / "-Infinity"


# --- the parse tree -----------------------------------------------------------------------------------


def _unwrap(node: lark.Tree[lark.Token]) -> lark.Tree[lark.Token]:
    """The first node below `node` that does something: skips precedence levels and parentheses."""
    while node.data in _TRANSPARENT and len(node.children) == 1 and isinstance(node.children[0], lark.Tree):
        node = node.children[0]
    return node


def _conjuncts(tree: lark.Tree[lark.Token]) -> Iterator[lark.Tree[lark.Token]]:
    """The operands of the top-level `&&` chain, left to right, flattening parenthesised chains.

    An expression that is not a conjunction (`||`, `?:`, `!`, a call) is its own single operand.
    """
    pending = [tree]
    while pending:
        node = _unwrap(pending.pop())
        if node.data == "conditionaland" and len(node.children) == 2:
            # `conditionaland : conditionaland "&&" relation`; pushed right first so the left pops first.
            pending.extend(child for child in reversed(node.children) if isinstance(child, lark.Tree))
        else:
            yield node


def _conjunct_key(node: lark.Tree[lark.Token], candidate: str, allowed: frozenset[str]) -> EqualityKey | None:
    # `relation : relation_eq addition` and `relation_eq : relation "=="`: `left == right`.
    if node.data != "relation" or len(node.children) != 2:
        return None
    equals, right = node.children
    if not isinstance(equals, lark.Tree) or equals.data != "relation_eq" or not isinstance(right, lark.Tree):
        return None
    (left,) = equals.children
    if not isinstance(left, lark.Tree):
        return None
    for chain, other in ((left, right), (right, left)):
        path = _field_path(chain, candidate)
        if path and _uses_only(other, allowed):
            reference = _compile_part(other)
            if reference is not None:
                return EqualityKey(path, reference)
    return None


def _field_path(node: lark.Tree[lark.Token], candidate: str) -> tuple[str, ...] | None:
    """`("data", "orderId")` for `candidate.data.orderId` or `candidate["data"]["orderId"]`, else None."""
    names: list[str] = []
    node = _unwrap(node)
    while node.data in ("member_dot", "member_index"):
        member, selector = node.children
        if not isinstance(member, lark.Tree):
            return None
        if node.data == "member_dot" and isinstance(selector, lark.Token):
            names.append(selector.value)
        else:
            name = _string_literal(selector)
            if name is None:
                return None
            names.append(name)
        node = _unwrap(member)
    if node.data not in ("ident", "dot_ident") or node.children != [candidate]:
        return None
    return tuple(reversed(names))


def _string_literal(node: lark.Tree[lark.Token] | lark.Token) -> str | None:
    """The value of an index that is a string literal; CEL itself decodes the escapes."""
    if not isinstance(node, lark.Tree):
        return None
    literal = _unwrap(node)
    if literal.data != "literal" or not any(
        isinstance(token, lark.Token) and token.type in _STRING_TOKENS for token in literal.children
    ):
        return None
    expression = _compile_part(literal)
    if expression is None:
        return None
    try:
        value = expression.evaluate({})
    except CelEvaluationError:
        return None
    return value if isinstance(value, str) else None


def _uses_only(node: lark.Tree[lark.Token], allowed: frozenset[str]) -> bool:
    """No variable but `allowed` anywhere below `node` (macro-bound variables count too: be strict)."""
    return all(
        sub.data not in ("ident", "dot_ident") or all(token in allowed for token in sub.children)
        for sub in node.iter_subtrees()
    )


def _compile_part(node: lark.Tree[lark.Token]) -> Expression | None:
    """`node` as an expression of its own, or None.

    The text is printed from the tree rather than sliced from the source, as lark records no position
    for `true` and `false` (celpy's lexer callback makes new tokens). It is parsed again and must give
    the same tree, so a slip in printing gives no key rather than a different expression.
    """
    try:
        source = _source(node)
        if _unwrap(_ENVIRONMENT.compile(source)) != _unwrap(node):
            return None
        return compile_expression(source, field=_FIELD)
    except (CELParseError, ServiceError):
        return None


# `relation_lt : relation "<"` and the like hold their left operand; `unary_not` and `unary_neg` nothing.
_OPERATORS = {
    "relation_lt": "<",
    "relation_le": "<=",
    "relation_gt": ">",
    "relation_ge": ">=",
    "relation_eq": "==",
    "relation_ne": "!=",
    "relation_in": "in",
    "addition_add": "+",
    "addition_sub": "-",
    "multiplication_mul": "*",
    "multiplication_div": "/",
    "multiplication_mod": "%",
    "unary_not": "!",
    "unary_neg": "-",
}
# Nodes printed as their children joined. Spaces around operators keep `- 1` from lexing as `-1`.
_SEPARATORS = {
    "expr": "",
    "conditionalor": " || ",
    "conditionaland": " && ",
    "relation": " ",
    "addition": " ",
    "multiplication": " ",
    "unary": " ",
    "member": "",
    "primary": "",
    "literal": "",
    "ident": "",
    "exprlist": ", ",
}


def _source(node: lark.Tree[lark.Token]) -> str:  # noqa: PLR0911, PLR0912 -- one case per kind of node
    """CEL text for a parse tree (comments and spacing aside); CELParseError for a node it does not know."""
    parts = [_source(child) if isinstance(child, lark.Tree) else str(child.value) for child in node.children]
    match node.data, parts:
        case ("expr", [condition, if_true, if_false]):
            return f"{condition} ? {if_true} : {if_false}"
        case ("member_dot", [member, name]):
            return f"{member}.{name}"
        case ("member_dot_arg", [member, name, *arguments]):
            return f"{member}.{name}({''.join(arguments)})"
        case ("member_index", [member, index]):
            return f"{member}[{index}]"
        case ("member_object", [member, *fields]):
            return f"{member}{{{''.join(fields)}}}"
        case ("dot_ident", [name]):
            return f".{name}"
        case ("dot_ident_arg", [name, *arguments]):
            return f".{name}({''.join(arguments)})"
        case ("ident_arg", [name, *arguments]):
            return f"{name}({''.join(arguments)})"
        case ("paren_expr", [inner]):
            return f"({inner})"
        case ("list_lit", [*elements]):
            return f"[{''.join(elements)}]"
        case ("map_lit", [*entries]):
            return f"{{{''.join(entries)}}}"
        case ("fieldinits" | "mapinits", _):
            return ", ".join(f"{name}: {value}" for name, value in zip(parts[::2], parts[1::2], strict=True))
        case (rule, _) if rule in _OPERATORS:
            return " ".join([*parts, _OPERATORS[rule]])
        case (rule, _) if rule in _SEPARATORS:
            return _SEPARATORS[rule].join(parts)
    raise CELParseError(f"cannot print a {node.data!r} node")
