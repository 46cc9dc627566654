"""Subjects, names and NATS-style patterns: what every stream message is addressed by and matched against.

Grammar (this docstring is the reference for it; keep the code in step)::

    subject         = namespaced-subject | engine-subject
    namespaced-subject = namespace ":" name              ; events:order.placed, topic:notifications.email
    engine-subject  = engine-token *( "." engine-token )  ; system.run.r1.step.charge:1.completed
    namespace       = "events" | "topic"                  ; NAMESPACES

    name            = name-token *( "." name-token )      ; at most 256 bytes
    name-token      = 1*( ALPHA | DIGIT | "_" | "-" )     ; ASCII only

    engine-token    = 1*( any printable, non-whitespace character except "." "*" ">" )
                      ; the FIRST engine token may not contain ":" either

    pattern         = [ namespace ":" ] pattern-body
    pattern-body    = *( ptoken "." ) last-ptoken
    ptoken          = literal | "*"
    last-ptoken     = literal | "*" | ">"
      literal is a name-token after a namespace, an engine-token without one.

Decisions, and why:

* The namespace separator is the first ``:`` *only if it comes before the first ``.``*. Engine subjects
  carry step ids such as ``charge:1`` in later tokens, so a ``:`` further right is ordinary text. A ``:``
  inside the first token always introduces a namespace, and an unknown one (``foo:bar``) is an error
  (`Pattern.parse`, `split_subject`) or matches nothing (`Pattern.matches`). This keeps subjects and
  patterns symmetric: no engine subject can look like a namespaced one, so a pattern never has to guess.
* Engine subjects (no prefix) are in namespace ``"system"``: `split_subject` returns
  ``("system", subject)``, matching the ``namespace`` field of the Event message. ``system`` is not a
  prefix anyone can write: ``system:x`` is an unknown namespace.
* A pattern without a namespace matches engine subjects only, never ``events:``/``topic:`` subjects, so
  ``>`` means "every engine event" rather than "everything".
* Names are deliberately narrow (ASCII letters, digits, ``_``, ``-``): they end up in URLs, Redis keys,
  CEL filters and log lines, and a narrow alphabet spares every one of those an escaping scheme. Engine
  tokens are permissive because the engine builds them from run and step ids (``both/0/fetch``), which
  are validated where they are created.
* ``*`` and ``>`` are wildcards only as whole tokens; ``a*`` or ``**`` are rejected rather than read as
  literals, because a literal ``*`` can never occur in a valid subject and is almost surely a typo.

Matching runs for every stream message and every subscriber, so subjects are split once (an LRU cache
keyed by the subject string) and compared token by token; nothing is compiled per call. Malformed
subjects (empty token, unknown namespace) match nothing rather than raise, since they come from storage,
not from the caller.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .errors import invalid_argument

NAMESPACES: tuple[str, ...] = ("events", "topic")
"""The prefixes callers may write; engine subjects have none and report namespace `SYSTEM_NAMESPACE`."""

SYSTEM_NAMESPACE = "system"
"""The namespace engine subjects (no prefix) belong to."""

MAX_NAME_BYTES = 256
MAX_PATTERN_BYTES = 1024
"""Engine patterns spell out run and step ids, so they may be longer than a name; still bounded."""
MAX_PATTERNS = 100
"""Default cap on patterns per request: each one costs work on every message a subscriber sees."""

WILDCARD_ONE = "*"
WILDCARD_TAIL = ">"

_NAME_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_NAME_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SHOWN_CHARS = 80  # error messages quote the bad value, but never an unbounded one


def _show(value: str) -> str:
    """The offending value quoted for an error message, shortened so a huge input cannot bloat it."""
    if len(value) > _SHOWN_CHARS:
        return repr(value[:_SHOWN_CHARS]) + "..."
    return repr(value)


def _is_bad_char(char: str) -> bool:
    # isprintable() is False for control and format characters (e.g. zero-width space); isspace() adds
    # the printable-looking whitespace such as " " and U+3000.
    return char.isspace() or not char.isprintable()


def _subject_word(what: str, field: str) -> str:
    """The word that starts a message after `field: `; empty when it would repeat the field's name."""
    return "" if field.rsplit(".", 1)[-1] == what else f"{what} "


def _check_text(value: object, field: str, what: str, max_bytes: int) -> str:
    """Checks shared by names and patterns: a non-empty string of bounded size with no invisible chars."""
    what = _subject_word(what, field)
    if not isinstance(value, str):
        raise invalid_argument(field, f"{what}must be a string, got {type(value).__name__}")
    if not value:
        raise invalid_argument(field, f"{what}must not be empty")
    # len() counts characters, and a character is at least one UTF-8 byte, so a long string is rejected
    # without encoding it; surrogatepass keeps lone surrogates from raising here (they fail below).
    if len(value) > max_bytes or len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise invalid_argument(field, f"{what}must be at most {max_bytes} bytes (UTF-8): {_show(value)}")
    if any(_is_bad_char(c) for c in value):
        raise invalid_argument(
            field, f"{what}must not contain whitespace or control characters: {_show(value)}"
        )
    return value


def _check_name_token(token: str, text: str, field: str, what: str) -> None:
    what = _subject_word(what, field)
    if not token:
        raise invalid_argument(
            field, f"{what}has an empty token (leading, trailing or doubled '.'): {_show(text)}"
        )
    if WILDCARD_ONE in token or WILDCARD_TAIL in token:
        raise invalid_argument(field, f"{what}must not contain wildcards '*' or '>': {_show(text)}")
    if ":" in token:
        raise invalid_argument(field, f"{what}must not contain ':': {_show(text)}")
    if _NAME_TOKEN.fullmatch(token) is None:
        bad = next(c for c in token if c not in _NAME_TOKEN_CHARS)
        raise invalid_argument(
            field,
            f"{what}may only use ASCII letters, digits, '_' and '-' between dots, found {bad!r}: "
            f"{_show(text)}",
        )


def validate_name(name: str, *, field: str = "name") -> str:
    """Return `name` if it is a valid event or topic name, else raise INVALID_ARGUMENT naming `field`."""
    _check_text(name, field, "name", MAX_NAME_BYTES)
    for token in name.split("."):
        _check_name_token(token, name, field, "name")
    return name


def subject_for(namespace: str, name: str, *, field: str = "name") -> str:
    """The stream subject of a user event or topic message: ``events:order.placed``."""
    if namespace not in NAMESPACES:
        raise invalid_argument(
            "namespace", f"unknown namespace {_show(namespace)}; expected one of {NAMESPACES}"
        )
    return f"{namespace}:{validate_name(name, field=field)}"


def split_subject(subject: str, *, field: str = "subject") -> tuple[str, str]:
    """Split a subject into ``(namespace, name)``; engine subjects give ``("system", subject)``.

    Only the prefix is checked, not the name (subjects read back from storage were validated on the way
    in, and this runs on hot paths).
    """
    if not subject:
        raise invalid_argument(field, "subject must not be empty")
    colon = subject.find(":")
    if colon == -1:
        return SYSTEM_NAMESPACE, subject
    dot = subject.find(".")
    if dot != -1 and dot < colon:
        return SYSTEM_NAMESPACE, subject
    namespace = subject[:colon]
    if namespace not in NAMESPACES:
        raise invalid_argument(field, f"unknown namespace {_show(namespace)} in subject {_show(subject)}")
    return namespace, subject[colon + 1 :]


@functools.lru_cache(maxsize=8192)
def _subject_key(subject: str) -> tuple[str, tuple[str, ...]] | None:
    """``(namespace, tokens)`` of a subject, or None if it is malformed and so can match nothing.

    Cached because one message is matched against every subscriber's patterns in turn.
    """
    colon = subject.find(":")
    dot = subject.find(".")
    if colon != -1 and (dot == -1 or colon < dot):
        namespace = subject[:colon]
        if namespace not in NAMESPACES:
            return None
        tokens = tuple(subject[colon + 1 :].split("."))
    else:
        namespace = SYSTEM_NAMESPACE
        tokens = tuple(subject.split("."))
    if "" in tokens:
        return None
    return namespace, tokens


def _match_tokens(pattern: tuple[str, ...], tokens: tuple[str, ...]) -> bool:
    """NATS matching on pre-split tokens: ``*`` is one token, a final ``>`` is one or more tokens."""
    count = len(pattern)
    if pattern[-1] == WILDCARD_TAIL:
        if len(tokens) < count:  # ">" needs at least one token of its own
            return False
        count -= 1
    elif len(tokens) != count:
        return False
    for i in range(count):
        want = pattern[i]
        if want != WILDCARD_ONE and want != tokens[i]:
            return False
    return True


def _parse_body(body: str, text: str, field: str, *, engine: bool) -> tuple[str, ...]:
    """Split a pattern body into tokens, checking wildcards and literals; `text` is quoted in errors."""
    tokens = tuple(body.split("."))
    last = len(tokens) - 1
    for i, token in enumerate(tokens):
        if token == WILDCARD_ONE:
            continue
        if token == WILDCARD_TAIL:
            if i != last:
                raise invalid_argument(field, f"'>' is only allowed as the last token: {_show(text)}")
            continue
        if not token:
            raise invalid_argument(
                field, f"pattern has an empty token (leading, trailing or doubled '.'): {_show(text)}"
            )
        if WILDCARD_ONE in token or WILDCARD_TAIL in token:
            raise invalid_argument(
                field, f"wildcards '*' and '>' must be whole tokens, found {token!r}: {_show(text)}"
            )
        if not engine:
            _check_name_token(token, text, field, "pattern")
        # An engine literal already passed _check_text (no whitespace or control characters); ':' in its
        # first token was routed to the namespace branch by the caller, so nothing more to check.
    return tokens


@dataclass(frozen=True, slots=True)
class Pattern:
    """A parsed subject pattern. `namespace` is ``"events"``, ``"topic"`` or ``"system"`` (no prefix)."""

    namespace: str
    tokens: tuple[str, ...]

    @classmethod
    def parse(cls, text: str, *, field: str = "pattern") -> Pattern:
        """Parse ``[namespace:]tokens``; raise INVALID_ARGUMENT naming `field` if it is malformed."""
        _check_text(text, field, "pattern", MAX_PATTERN_BYTES)
        colon = text.find(":")
        dot = text.find(".")
        if colon != -1 and (dot == -1 or colon < dot):
            namespace = text[:colon]
            if namespace not in NAMESPACES:
                raise invalid_argument(
                    field,
                    f"unknown namespace {_show(namespace)} in {_show(text)}; expected one of {NAMESPACES}",
                )
            body = text[colon + 1 :]
            if not body:
                raise invalid_argument(field, f"pattern has nothing after the namespace: {_show(text)}")
            if len(body.encode("utf-8")) > MAX_NAME_BYTES:
                raise invalid_argument(
                    field,
                    f"pattern after the namespace must be at most {MAX_NAME_BYTES} bytes: {_show(text)}",
                )
            return cls(namespace, _parse_body(body, text, field, engine=False))
        return cls(SYSTEM_NAMESPACE, _parse_body(text, text, field, engine=True))

    @property
    def is_literal(self) -> bool:
        """True if the pattern has no wildcard, so it matches exactly one subject."""
        return WILDCARD_ONE not in self.tokens and WILDCARD_TAIL not in self.tokens

    def matches(self, subject: str) -> bool:
        """True if `subject` matches; a malformed subject matches nothing."""
        key = _subject_key(subject)
        return key is not None and key[0] == self.namespace and _match_tokens(self.tokens, key[1])

    def __str__(self) -> str:
        body = ".".join(self.tokens)
        return body if self.namespace == SYSTEM_NAMESPACE else f"{self.namespace}:{body}"


@dataclass(frozen=True, slots=True)
class NamePattern:
    """A pattern over bare event names, as function triggers use: ``order.*``, ``order.>``, ``order.placed``.

    Same wildcard rules as `Pattern`, name-token literals, and no namespace (a trigger is always on
    ``events:``, so writing one would only invite ``topic:`` mistakes).
    """

    tokens: tuple[str, ...]

    @classmethod
    def parse(cls, text: str, *, field: str = "event") -> NamePattern:
        _check_text(text, field, "pattern", MAX_NAME_BYTES)
        if ":" in text:
            raise invalid_argument(field, f"an event name pattern takes no namespace or ':': {_show(text)}")
        return cls(_parse_body(text, text, field, engine=False))

    @property
    def is_literal(self) -> bool:
        return WILDCARD_ONE not in self.tokens and WILDCARD_TAIL not in self.tokens

    def matches(self, name: str) -> bool:
        """True if the bare event name matches; a name with an empty token matches nothing."""
        tokens = tuple(name.split("."))
        return "" not in tokens and _match_tokens(self.tokens, tokens)

    def subject_pattern(self, namespace: str = "events") -> Pattern:
        """The equivalent subject pattern, e.g. to subscribe to what a trigger would fire on."""
        if namespace not in NAMESPACES:
            raise invalid_argument(
                "namespace", f"unknown namespace {_show(namespace)}; expected one of {NAMESPACES}"
            )
        return Pattern(namespace, self.tokens)

    def __str__(self) -> str:
        return ".".join(self.tokens)


def parse_patterns(
    texts: Iterable[str], *, field: str = "patterns", allow_empty: bool = False, max_count: int = MAX_PATTERNS
) -> tuple[Pattern, ...]:
    """Parse a request's patterns in order, dropping duplicates; errors name the index (``patterns[2]``)."""
    if isinstance(texts, str):
        # A lone string would otherwise be parsed one character at a time.
        raise invalid_argument(field, "expected a list of patterns, got a single string")
    parsed: dict[Pattern, None] = {}
    for index, text in enumerate(texts):
        if index >= max_count:
            raise invalid_argument(field, f"at most {max_count} patterns are allowed")
        parsed.setdefault(Pattern.parse(text, field=f"{field}[{index}]"))
    if not parsed and not allow_empty:
        raise invalid_argument(field, "at least one pattern is required")
    return tuple(parsed)


class _Node:
    """One level of the wildcard trie: literal children, a ``*`` child, and whether a pattern ends here."""

    __slots__ = ("children", "end", "star", "tail")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.star: _Node | None = None
        self.end = False  # a pattern ends exactly at this depth
        self.tail = False  # a pattern has ">" at this depth: any one or more further tokens match

    def insert(self, tokens: tuple[str, ...]) -> None:
        node = self
        for token in tokens:
            if token == WILDCARD_TAIL:
                node.tail = True
                return
            if token == WILDCARD_ONE:
                if node.star is None:
                    node.star = _Node()
                node = node.star
            else:
                node = node.children.setdefault(token, _Node())
        node.end = True

    def match(self, tokens: tuple[str, ...], start: int) -> bool:
        node = self
        i = start
        size = len(tokens)
        while True:
            if node.tail and i < size:
                return True
            if i == size:
                return node.end
            child = node.children.get(tokens[i])
            star = node.star
            i += 1
            if child is None:
                if star is None:
                    return False
                node = star
            else:
                # Both branches can match; only recurse for the rarer one, loop on the literal.
                if star is not None and star.match(tokens, i):
                    return True
                node = child


class PatternSet:
    """Several patterns matched as one, for the per-message, per-subscriber hot path.

    Literal patterns are a set of subject strings, so the common "exact subject" case costs one hash
    lookup and no split. Wildcard patterns go into a token trie per namespace, so the cost grows with the
    subject's length rather than with the number of patterns.
    """

    __slots__ = ("_literals", "_patterns", "_tries")

    def __init__(self, patterns: Iterable[Pattern]) -> None:
        self._patterns = tuple(dict.fromkeys(patterns))
        self._literals = frozenset(str(p) for p in self._patterns if p.is_literal)
        tries: dict[str, _Node] = {}
        for pattern in self._patterns:
            if not pattern.is_literal:
                tries.setdefault(pattern.namespace, _Node()).insert(pattern.tokens)
        self._tries = tries

    @classmethod
    def parse(cls, texts: Iterable[str], *, field: str = "patterns", allow_empty: bool = False) -> PatternSet:
        return cls(parse_patterns(texts, field=field, allow_empty=allow_empty))

    @property
    def patterns(self) -> tuple[Pattern, ...]:
        return self._patterns

    def matches(self, subject: str) -> bool:
        if subject in self._literals:
            return True
        if not self._tries:
            return False
        key = _subject_key(subject)
        if key is None:
            return False
        trie = self._tries.get(key[0])
        return trie is not None and trie.match(key[1], 0)

    def __len__(self) -> int:
        return len(self._patterns)

    def __iter__(self) -> Iterator[Pattern]:
        return iter(self._patterns)

    def __repr__(self) -> str:
        return f"PatternSet({[str(p) for p in self._patterns]!r})"
