"""What client calls return: plain frozen dataclasses, no protobuf in sight."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
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
    # Push mode: where Ironflow POSTs this function's runs; empty for pull mode.
    endpoint_url: str = ""
    # Push mode: the endpoint's circuit breaker, "closed" (healthy), "open" (calls paused after
    # failures) or "half_open" (trying again); empty for pull mode.
    circuit_state: str = ""


@dataclass(frozen=True)
class RunError:
    """Why a run or step failed (or was cancelled): a stable `code` and a human `message`."""

    code: str
    message: str
    details: str = ""


@dataclass(frozen=True)
class Run:
    id: str
    function_id: str
    function_version: int
    event_id: str
    # "queued", "running", "sleeping", "waiting", "completed", "failed", "cancelled" or "paused".
    status: str
    attempt: int
    # What the handler returned (plain JSON); None until the run completes.
    output: Any
    error: RunError | None
    # Set when another run started this one with invoke.
    parent_run_id: str | None
    created_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    # The parent's step that started this run (with parent_run_id).
    parent_step_id: str | None = None
    # Runs this one started with invoke (filled by get_run; empty in list_runs pages).
    child_run_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RunResult:
    """The outcome of one run, as `emit_sync` returns it."""

    run_id: str
    function_id: str
    # The run's status (as Run.status); one that has not ended when the wait ended has timed_out=True.
    status: str
    # What the handler returned (plain JSON); None unless the run completed.
    output: Any
    error: RunError | None
    # True when the wait ended before the run did; the run keeps going.
    timed_out: bool = False


@dataclass(frozen=True)
class RunPage:
    """One page of runs, newest first. Iterating it yields the runs."""

    runs: list[Run]
    # Pass to the next call to continue; empty when this was the last page.
    next_cursor: str

    def __iter__(self) -> Iterator[Run]:
        return iter(self.runs)

    def __len__(self) -> int:
        return len(self.runs)


@dataclass(frozen=True)
class Step:
    # Deterministic within the run: the name plus an occurrence counter ("charge", "charge:1").
    id: str
    name: str
    # "run", "sleep", "wait_for_event", "invoke", "parallel", "map", "publish", ...
    kind: str
    # "running", "completed", "failed", "retrying", "sleeping", "waiting" or "cancelled".
    status: str
    attempt: int
    output: Any
    error: RunError | None
    started_at: datetime | None
    ended_at: datetime | None


@dataclass(frozen=True)
class ConsumerGroup:
    """A consumer group: subscribers that join it share its messages, each delivered to one of them."""

    name: str
    # The one pattern the group delivers (`events:order.*`), and its CEL filter ("" for none).
    pattern: str
    filter: str
    # Where delivery began: "new", "earliest" or a stream sequence as text.
    start: str
    # How long a member has to ack a message before it is redelivered.
    ack_wait: timedelta
    # Deliveries of one message before it goes to `dead_letter_subject`.
    max_deliver: int
    # Unacked messages one member may hold before delivery to it pauses.
    max_in_flight: int
    created_at: datetime | None
    # Messages delivered and not yet acknowledged.
    pending: int
    # Members connected now (to the replica that answered).
    members: int
    # Subject where messages past max_deliver go (`system.consumer.<name>.dead_letter`).
    dead_letter_subject: str


@dataclass(frozen=True)
class TopicInfo:
    """Counts for one event name or topic (`events:order.placed`, `topic:notifications.email`)."""

    subject: str
    # Messages ever carried on this subject (since the server began counting).
    messages: int
    # Stream sequences of the first and last message.
    first_sequence: int
    last_sequence: int
    first_message_at: datetime | None
    last_message_at: datetime | None
    # Live subscriptions whose patterns match the subject (on the replica that answered).
    subscribers: int


@dataclass(frozen=True)
class TopicPage:
    """One page of topics, by subject. Iterating it yields the topics."""

    topics: list[TopicInfo]
    # Pass to the next call to continue; empty when this was the last page.
    next_cursor: str

    def __iter__(self) -> Iterator[TopicInfo]:
        return iter(self.topics)

    def __len__(self) -> int:
        return len(self.topics)
