"""Subjects, names and patterns: the spec's examples, then properties over generated names and patterns."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ironflow.services.core.errors import ErrorCode, ServiceError
from ironflow.services.core.subjects import (
    MAX_NAME_BYTES,
    NAMESPACES,
    NamePattern,
    Pattern,
    PatternSet,
    parse_patterns,
    split_subject,
    subject_for,
    validate_name,
)

# --- strategies -------------------------------------------------------------------------------------

TOKEN_ALPHABET = "abcxyzABZ019_-"
tokens = st.text(alphabet=TOKEN_ALPHABET, min_size=1, max_size=6)
token_lists = st.lists(tokens, min_size=1, max_size=6)
names = token_lists.map(".".join)
namespaces = st.sampled_from(NAMESPACES)
# Engine tokens may carry ':' and '/' (step ids such as `charge:1`, `both/0/fetch`), except the first.
engine_tokens = st.text(alphabet=TOKEN_ALPHABET + ":/", min_size=1, max_size=6)
engine_subjects = st.builds(
    lambda first, rest: ".".join([first, *rest]), tokens, st.lists(engine_tokens, max_size=6)
)


def assert_invalid(exc: pytest.ExceptionInfo[ServiceError], field: str) -> None:
    assert exc.value.code is ErrorCode.INVALID_ARGUMENT
    assert exc.value.message.startswith(f"{field}: ")


# --- names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["order.placed", "a", "user-signed_up.v2", "A.b.C", "x" * MAX_NAME_BYTES])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        " ",
        "order placed",
        "order.placed ",
        "order\tplaced",
        "order\nplaced",
        "order\x00placed",
        "order\u200bplaced",  # zero-width space: invisible, so never allowed
        "a..b",
        ".a",
        "a.",
        ".",
        "order.*",
        "order.>",
        "a*",
        "events:order",
        "a:b",
        "ordér",
        "a/b",
        "x" * (MAX_NAME_BYTES + 1),
    ],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(ServiceError) as exc:
        validate_name(name, field="event.name")
    assert_invalid(exc, "event.name")


def test_name_must_be_a_string() -> None:
    with pytest.raises(ServiceError) as exc:
        validate_name(42, field="name")  # type: ignore[arg-type]
    assert_invalid(exc, "name")


def test_huge_name_error_is_bounded() -> None:
    with pytest.raises(ServiceError) as exc:
        validate_name("x" * 100_000)
    assert len(exc.value.message) < 300


@given(names)
def test_generated_names_are_valid(name: str) -> None:
    assume(len(name) <= MAX_NAME_BYTES)
    assert validate_name(name) == name


@given(token_lists, st.sampled_from([" ", "\t", "*", ">", ":", "\x7f", "é"]), st.data())
def test_a_bad_character_anywhere_is_rejected(parts: list[str], bad: str, data: st.DataObject) -> None:
    name = ".".join(parts)
    at = data.draw(st.integers(0, len(name)))
    with pytest.raises(ServiceError) as exc:
        validate_name(name[:at] + bad + name[at:], field="topic")
    assert_invalid(exc, "topic")


@given(token_lists, st.data())
def test_an_empty_token_is_rejected(parts: list[str], data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(parts)))
    with pytest.raises(ServiceError) as exc:
        validate_name(".".join([*parts[:at], "", *parts[at:]]))
    assert_invalid(exc, "name")


@given(st.integers(MAX_NAME_BYTES + 1, MAX_NAME_BYTES * 4))
def test_names_over_the_byte_limit_are_rejected(size: int) -> None:
    with pytest.raises(ServiceError) as exc:
        validate_name("a" * size)
    assert_invalid(exc, "name")


# --- subjects ---------------------------------------------------------------------------------------


def test_subject_for_and_split_subject() -> None:
    assert subject_for("events", "order.placed") == "events:order.placed"
    assert subject_for("topic", "notifications.email") == "topic:notifications.email"
    assert split_subject("events:order.placed") == ("events", "order.placed")
    assert split_subject("topic:notifications.email") == ("topic", "notifications.email")
    assert split_subject("system.run.r1.created") == ("system", "system.run.r1.created")
    # A ':' after the first '.' belongs to a step id, not to a namespace.
    step = "system.run.r1.step.charge:1.completed"
    assert split_subject(step) == ("system", step)


def test_subject_for_rejects_bad_input() -> None:
    with pytest.raises(ServiceError) as exc:
        subject_for("system", "order.placed")
    assert_invalid(exc, "namespace")
    with pytest.raises(ServiceError) as exc:
        subject_for("events", "order..placed", field="event.name")
    assert_invalid(exc, "event.name")


@pytest.mark.parametrize("subject", ["", "foo:bar", "system:run.x", ":x"])
def test_split_subject_rejects_unknown_namespaces(subject: str) -> None:
    with pytest.raises(ServiceError) as exc:
        split_subject(subject, field="subject")
    assert_invalid(exc, "subject")


@given(namespaces, names)
def test_subject_round_trip(namespace: str, name: str) -> None:
    assume(len(name) <= MAX_NAME_BYTES)
    assert split_subject(subject_for(namespace, name)) == (namespace, name)


# --- patterns: examples -----------------------------------------------------------------------------

CASES = [
    ("system.run.>", "system.run.r1.created", True),
    ("system.run.>", "system.run.r1.step.charge:1.completed", True),
    ("system.run.>", "system.run", False),
    ("system.run.*.completed", "system.run.r1.completed", True),
    ("system.run.*.completed", "system.run.r1.step.s1.completed", False),
    ("system.run.*.step.*.completed", "system.run.r1.step.charge:1.completed", True),
    ("system.run.r1.step.charge:1.completed", "system.run.r1.step.charge:1.completed", True),
    ("system.run.r1.step.both/0/fetch.completed", "system.run.r1.step.both/0/fetch.completed", True),
    ("events:order.*", "events:order.placed", True),
    ("events:order.*", "events:order.placed.v2", False),
    ("events:order.*", "events:order", False),
    ("events:order.*", "topic:order.placed", False),
    ("events:>", "events:order.placed", True),
    ("events:>", "events:x", True),
    ("events:>", "system.run.r1.created", False),
    ("topic:notifications.>", "topic:notifications.email", True),
    ("topic:notifications.>", "topic:notifications", False),
    ("topic:notifications.>", "events:notifications.email", False),
    (">", "system.run.r1.created", True),
    (">", "events:order.placed", False),
    ("*", "system", True),
    ("*", "system.run", False),
    ("system.run.>", "events:system.run.x", False),
    # Malformed subjects match nothing rather than raise.
    ("system.>", "system..x", False),
    (">", "foo:bar", False),
]


@pytest.mark.parametrize(("pattern", "subject", "expected"), CASES)
def test_pattern_examples(pattern: str, subject: str, expected: bool) -> None:
    assert Pattern.parse(pattern).matches(subject) is expected
    assert PatternSet.parse([pattern]).matches(subject) is expected


def test_pattern_fields() -> None:
    p = Pattern.parse("events:order.*")
    assert (p.namespace, p.tokens, p.is_literal) == ("events", ("order", "*"), False)
    q = Pattern.parse("system.run.r1.created")
    assert (q.namespace, q.tokens, q.is_literal) == ("system", ("system", "run", "r1", "created"), True)
    assert str(p) == "events:order.*"
    assert str(q) == "system.run.r1.created"
    assert Pattern.parse("topic:a.>") == Pattern("topic", ("a", ">"))


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        ">.a",
        "a.>.b",
        "events:>.x",
        "**",
        "a*",
        "*a",
        "a.b>",
        ">>",
        "a..b",
        ".a",
        "a.",
        "events:",
        "events:a..b",
        "events:order placed",
        "events:ordér",
        "events:a:b",
        "foo:bar",
        "system:run.>",
        "Events:order",
        ":order",
        " system.run.>",
        "system.run.>\n",
        "system.\x00.>",
        "x" * 2000,
        "events:" + "a" * (MAX_NAME_BYTES + 1),
    ],
)
def test_malformed_patterns(pattern: str) -> None:
    with pytest.raises(ServiceError) as exc:
        Pattern.parse(pattern, field="patterns[0]")
    assert_invalid(exc, "patterns[0]")


def test_parse_patterns() -> None:
    parsed = parse_patterns(["events:a", "system.>", "events:a"])
    assert [str(p) for p in parsed] == ["events:a", "system.>"]
    with pytest.raises(ServiceError) as exc:
        parse_patterns(["events:a", "a.>.b"], field="patterns")
    assert_invalid(exc, "patterns[1]")
    with pytest.raises(ServiceError) as exc:
        parse_patterns([])
    assert_invalid(exc, "patterns")
    assert parse_patterns([], allow_empty=True) == ()
    with pytest.raises(ServiceError) as exc:
        parse_patterns("events:a")
    assert_invalid(exc, "patterns")
    with pytest.raises(ServiceError) as exc:
        parse_patterns(["events:a"] * 3, max_count=2)
    assert_invalid(exc, "patterns")


def test_pattern_set() -> None:
    patterns = PatternSet.parse(
        ["events:order.*", "system.run.*.step.*.completed", "topic:a.b", "events:x.>"]
    )
    assert len(patterns) == 4
    assert patterns.matches("events:order.placed")
    assert patterns.matches("system.run.r1.step.charge:1.completed")
    assert patterns.matches("topic:a.b")
    assert patterns.matches("events:x.y.z")
    assert not patterns.matches("events:x")
    assert not patterns.matches("topic:a.c")
    assert not patterns.matches("system.run.r1.completed")
    assert not patterns.matches("")
    assert not PatternSet([]).matches("events:a")


def test_pattern_set_explores_both_literal_and_star_branches() -> None:
    # "a.b.c" must not stop at the literal branch "a.b.x" when "a.*.c" would match.
    patterns = PatternSet.parse(["events:a.b.x", "events:a.*.c", "events:a.b.*.>"])
    assert patterns.matches("events:a.b.c")
    assert patterns.matches("events:a.z.c")
    assert patterns.matches("events:a.b.c.d")
    assert not patterns.matches("events:a.z.x")


# --- patterns: properties ---------------------------------------------------------------------------


@given(namespaces, names)
def test_a_literal_pattern_matches_exactly_its_subject(namespace: str, name: str) -> None:
    assume(len(name) <= MAX_NAME_BYTES)
    subject = subject_for(namespace, name)
    pattern = Pattern.parse(subject)
    assert pattern.is_literal
    assert pattern.matches(subject)
    assert not pattern.matches(subject + ".x")
    assert not pattern.matches(subject + "x")
    assert not pattern.matches(name)  # the same tokens without the namespace


@given(engine_subjects)
def test_a_literal_engine_pattern_matches_exactly_its_subject(subject: str) -> None:
    pattern = Pattern.parse(subject)
    assert pattern.is_literal
    assert pattern.namespace == "system"
    assert pattern.matches(subject)
    assert PatternSet([pattern]).matches(subject)
    assert not pattern.matches(subject + ".x")


@given(namespaces, token_lists, token_lists)
def test_tail_wildcard_matches_every_longer_subject_with_the_prefix(
    namespace: str, prefix: list[str], rest: list[str]
) -> None:
    pattern = Pattern.parse(f"{namespace}:{'.'.join([*prefix, '>'])}")
    longer = f"{namespace}:{'.'.join([*prefix, *rest])}"
    assert pattern.matches(longer)
    assert PatternSet([pattern]).matches(longer)
    assert not pattern.matches(f"{namespace}:{'.'.join(prefix)}")  # '>' needs at least one token


@given(namespaces, token_lists, st.data())
def test_star_matches_exactly_one_token(namespace: str, parts: list[str], data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(parts) - 1))
    pattern_tokens = [*parts[:at], "*", *parts[at + 1 :]]
    pattern = Pattern.parse(f"{namespace}:{'.'.join(pattern_tokens)}")
    assert pattern.matches(f"{namespace}:{'.'.join(parts)}")
    # '*' never spans a dot: replacing its token by two tokens no longer matches.
    split = [*parts[:at], "p", "q", *parts[at + 1 :]]
    assert not pattern.matches(f"{namespace}:{'.'.join(split)}")
    assert not PatternSet([pattern]).matches(f"{namespace}:{'.'.join(split)}")


@given(namespaces, namespaces, names, st.booleans())
def test_namespace_must_match_exactly(ns_pattern: str, ns_subject: str, name: str, tail: bool) -> None:
    assume(len(name) <= MAX_NAME_BYTES)
    pattern = Pattern.parse(f"{ns_pattern}:{'>' if tail else name}")
    subject = subject_for(ns_subject, name)
    assert pattern.matches(subject) is (ns_pattern == ns_subject)
    assert PatternSet([pattern]).matches(subject) is (ns_pattern == ns_subject)


@given(namespaces, names, st.sampled_from([">", "*", "*.>", "{name}", "{first}.>"]))
def test_patterns_without_namespace_never_match_namespaced_subjects(
    namespace: str, name: str, shape: str
) -> None:
    assume(len(name) <= MAX_NAME_BYTES)
    text = shape.format(name=name, first=name.partition(".")[0])
    pattern = Pattern.parse(text)
    assert pattern.namespace == "system"
    subject = subject_for(namespace, name)
    assert not pattern.matches(subject)
    assert not PatternSet([pattern]).matches(subject)


pattern_tokens = st.one_of(tokens, st.just("*"))
pattern_texts = st.builds(
    lambda ns, body, tail: f"{ns}:{'.'.join(body + (['>'] if tail else []))}",
    namespaces,
    st.lists(pattern_tokens, min_size=1, max_size=4),
    st.booleans(),
)


@given(st.lists(pattern_texts, min_size=1, max_size=5), namespaces, st.lists(tokens, min_size=1, max_size=5))
def test_pattern_set_agrees_with_its_patterns(texts: list[str], namespace: str, parts: list[str]) -> None:
    patterns = parse_patterns(texts)
    subject = f"{namespace}:{'.'.join(parts)}"
    assert PatternSet(patterns).matches(subject) is any(p.matches(subject) for p in patterns)


@given(token_lists, st.data())
def test_tail_wildcard_anywhere_but_last_is_rejected(parts: list[str], data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(parts) - 1))
    text = ".".join([*parts[:at], ">", *parts[at:]])
    with pytest.raises(ServiceError) as exc:
        Pattern.parse(f"events:{text}", field="pattern")
    assert_invalid(exc, "pattern")


@given(token_lists, st.data(), st.sampled_from(["*", ">"]))
def test_wildcards_inside_a_token_are_rejected(parts: list[str], data: st.DataObject, wild: str) -> None:
    at = data.draw(st.integers(0, len(parts) - 1))
    glued = [*parts[:at], parts[at] + wild, *parts[at + 1 :]]
    with pytest.raises(ServiceError) as exc:
        Pattern.parse(".".join(glued), field="pattern")
    assert_invalid(exc, "pattern")


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8), names)
def test_unknown_namespaces_are_rejected(namespace: str, name: str) -> None:
    assume(namespace not in NAMESPACES)
    with pytest.raises(ServiceError) as exc:
        Pattern.parse(f"{namespace}:{name}", field="pattern")
    assert_invalid(exc, "pattern")


# --- event-name patterns (function triggers) --------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("order.placed", "order.placed", True),
        ("order.placed", "order.placed.v2", False),
        ("order.*", "order.placed", True),
        ("order.*", "order.placed.v2", False),
        ("order.>", "order.placed.v2", True),
        ("order.>", "order", False),
        (">", "anything.at.all", True),
        ("*.placed", "order.placed", True),
        ("order.*", "order..x", False),
    ],
)
def test_name_pattern_examples(pattern: str, name: str, expected: bool) -> None:
    assert NamePattern.parse(pattern).matches(name) is expected


@pytest.mark.parametrize(
    "pattern", ["", "events:order.*", "order.>.x", "order*", "a..b", "order placed", "a/b"]
)
def test_malformed_name_patterns(pattern: str) -> None:
    with pytest.raises(ServiceError) as exc:
        NamePattern.parse(pattern, field="trigger.event")
    assert_invalid(exc, "trigger.event")


@given(st.lists(pattern_tokens, min_size=1, max_size=4), st.booleans(), token_lists)
def test_name_pattern_agrees_with_the_events_subject_pattern(
    body: list[str], tail: bool, parts: list[str]
) -> None:
    name_pattern = NamePattern.parse(".".join(body + ([">"] if tail else [])))
    name = ".".join(parts)
    assert name_pattern.matches(name) is name_pattern.subject_pattern().matches(f"events:{name}")
    assert name_pattern.is_literal is (not tail and "*" not in body)
