"""What subscribers receive, what they asked for, and how a message is matched against it.

A `Delivery` is one firehose message as handed to one subscriber (with its delivery attempt). A
`Selector` is patterns plus an optional CEL filter, compiled once per subscription or group and
evaluated for every message it sees.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ironflow.services.core.cel import Expression, compile_expression
from ironflow.services.core.errors import invalid_argument
from ironflow.services.core.firehose import FirehoseMessage
from ironflow.services.core.streams import StreamEntry
from ironflow.services.core.subjects import PatternSet, split_subject

MAX_REPLAY = 1000
"""The most messages a subscription may ask to see from before it joined."""

# A dead-lettered or replayed message keeps its original firehose sequence in this field.
ORIGINAL_SEQUENCE_FIELD = "sequence"


class AckMode(enum.StrEnum):
    AUTO = "auto"
    MANUAL = "manual"


class Settle(enum.StrEnum):
    """What a subscriber can say about a message it was given (manual ack mode)."""

    ACK = "ack"
    NAK = "nak"
    TERM = "term"
    IN_PROGRESS = "in_progress"


@dataclass(frozen=True, slots=True)
class Delivery:
    subject: str
    event_id: str
    sequence: int
    delivery_attempt: int
    timestamp: datetime
    data: dict[str, Any]
    metadata: dict[str, str]

    @classmethod
    def from_entry(cls, entry: StreamEntry, attempt: int = 1) -> Delivery:
        message = FirehoseMessage.decode(entry.fields)
        original = entry.fields.get(ORIGINAL_SEQUENCE_FIELD)
        return cls(
            subject=message.subject,
            event_id=message.event_id,
            sequence=int(original) if original is not None else entry.sequence,
            delivery_attempt=attempt,
            timestamp=message.timestamp,
            data=message.data,
            metadata=message.metadata,
        )

    def with_attempt(self, attempt: int) -> Delivery:
        return Delivery(
            self.subject, self.event_id, self.sequence, attempt, self.timestamp, self.data, self.metadata
        )


def filter_variables(message: Delivery) -> dict[str, Any]:
    """The names a filter sees. `event` holds the whole message, for filters written like triggers."""
    namespace, name = split_subject(message.subject)
    whole = {
        "subject": message.subject,
        "name": name,
        "namespace": namespace,
        "data": message.data,
        "metadata": message.metadata,
        "timestamp": message.timestamp,
        "event_id": message.event_id,
        "id": message.event_id,
        "sequence": message.sequence,
    }
    return {**whole, "event": whole}


class Selector:
    """Patterns and an optional filter: which messages a subscription or group wants."""

    __slots__ = ("expression", "patterns")

    def __init__(self, patterns: PatternSet, expression: Expression | None) -> None:
        self.patterns = patterns
        self.expression = expression

    @classmethod
    def compile(
        cls, patterns: Sequence[str], filter_text: str, *, patterns_field: str, filter_field: str
    ) -> Selector:
        parsed = PatternSet.parse(patterns, field=patterns_field)
        expression = compile_expression(filter_text, field=filter_field) if filter_text.strip() else None
        return cls(parsed, expression)

    def wants_subject(self, subject: str) -> bool:
        return self.patterns.matches(subject)

    def wants(self, message: Delivery) -> bool:
        """Patterns first (cheap); the filter only for messages they let through. A filter that fails
        on a message (a missing field, mismatched types) does not match it, as for triggers."""
        if not self.patterns.matches(message.subject):
            return False
        return self.expression is None or self.expression.matches(filter_variables(message))


@dataclass(frozen=True, slots=True)
class SubscribeSpec:
    """A subscribe request, whichever protocol it arrived on (gRPC, Connect, WebSocket)."""

    patterns: tuple[str, ...] = ()
    replay: int = 0
    start_after_sequence: int | None = None
    filter: str = ""
    ack: AckMode = AckMode.AUTO
    group: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    def check(self) -> None:
        if not 0 <= self.replay <= MAX_REPLAY:
            raise invalid_argument("replay", f"must be between 0 and {MAX_REPLAY}, got {self.replay}")
        if self.start_after_sequence is not None and self.start_after_sequence < 0:
            raise invalid_argument(
                "start_after_sequence", f"must not be negative, got {self.start_after_sequence}"
            )
        if self.group:
            if self.replay:
                raise invalid_argument("replay", "a consumer group member starts at the group's position")
            if self.start_after_sequence is not None:
                raise invalid_argument(
                    "start_after_sequence", "a consumer group member starts at the group's position"
                )


def nak_delay(delay: timedelta | None) -> timedelta:
    if delay is None:
        return timedelta(0)
    if delay < timedelta(0):
        raise invalid_argument("delay", "must not be negative")
    return delay
