"""What client calls return: plain frozen dataclasses, no protobuf in sight."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class EmitResult:
    event_id: str
    run_ids: list[str]
    # Position of the event on the stream (resume subscriptions after it); 0 if not yet streamed.
    sequence: int = 0
    # True when the idempotency key matched an earlier event (that event is returned).
    duplicate: bool = False


@dataclass(frozen=True)
class PublishResult:
    event_id: str
    sequence: int
    duplicate: bool = False


@dataclass(frozen=True)
class Event:
    id: str
    name: str
    namespace: str
    subject: str
    data: dict[str, Any]
    metadata: dict[str, str]
    idempotency_key: str | None
    timestamp: datetime | None
    sequence: int


@dataclass(frozen=True)
class EventPage:
    events: list[Event]
    # Pass to the next call to continue; empty when this was the last page.
    next_cursor: str


@dataclass(frozen=True)
class FunctionInfo:
    id: str
    name: str
    version: int
    status: str
    mode: str
    triggers: list[dict[str, Any]]
    created_at: datetime | None
    updated_at: datetime | None
    # The whole definition as JSON (retry, timeout, flow control, ...).
    definition: dict[str, Any] = field(default_factory=dict)
