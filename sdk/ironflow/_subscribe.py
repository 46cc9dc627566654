"""`ironflow.subscribe(...)`: real-time messages from the stream, over one grpcio bidirectional stream.

    async with ironflow.subscribe("system.run.>", "events:order.*", replay=10) as sub:
        async for message in sub:
            print(message.sequence, message.subject, message.data)

`SubscribeStream` (not the server-streaming `Subscribe`) carries the subscription, so that manual acks
travel on the same stream, to the replica that holds the messages.

Acks are fire-and-forget: the server answers only the ones it could not apply (`ack_failed`). Such a
failure is logged as a warning and raised, as an `IronflowError` with the server's code, from the next
ack/nak/term/in_progress call on the subscription (whose own command has been sent by then). Waiting
for a confirmation of every ack would need one the protocol does not have.

Reconnecting: when the connection drops (UNAVAILABLE and the like) or the server drops a subscriber
that fell behind (RESOURCE_EXHAUSTED), the subscription reconnects with exponential backoff and jitter
(0.1 s doubling to 5 s). A plain subscription resumes with `start_after_sequence` = the last sequence
it received, so nothing the stream still holds is missed or repeated; in manual ack mode it resumes
before the oldest message it had not acked or termed (skipping, and acking, those it had), so
unacknowledged messages come again. A consumer-group member simply rejoins; the group redelivers what
it had not acked. Messages delivered on a lost connection can no longer be settled: their ack raises.
Errors that retrying cannot fix (INVALID_ARGUMENT, NOT_FOUND, ...) are raised to the caller.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Literal

import grpc
from google.protobuf import duration_pb2

from ironflow.v1 import subscriptions_pb2 as pb
from ironflow.v1 import subscriptions_pb2_grpc

from ._client import grpc_channel, resolve_server_url, rpc_error
from ._convert import from_struct, from_timestamp
from ._durations import Duration, to_duration_proto
from ._errors import IronflowError

log = logging.getLogger("ironflow.subscribe")

AckMode = Literal["auto", "manual"]

MAX_REPLAY = 1000
INITIAL_BACKOFF_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 5.0
# A connection that stayed up this long counts as healthy: the next outage starts the backoff afresh.
_HEALTHY_SECONDS = 10.0
# Worth another connection: the server went away, restarted, or dropped us for falling behind.
RETRYABLE_CODES = frozenset(
    {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "INTERNAL", "UNKNOWN", "CANCELLED", "ABORTED", "DEADLINE_EXCEEDED"}
)
_ACK_MODES = {"auto": pb.ACK_MODE_AUTO, "manual": pb.ACK_MODE_MANUAL}
_PRUNE_SETTLED_AT = 10_000


@dataclass(frozen=True, eq=False)
class Message:
    """One message delivered to a subscription.

    In manual ack mode settle it with `ack()`, `nak(delay)`, `term()`, or extend its ack deadline
    with `in_progress()`; in auto mode these raise.
    """

    subject: str
    event_id: str
    # Position on the stream; resume after it with `start_after_sequence`.
    sequence: int
    # 1 on first delivery, more on redeliveries (counted per connection for non-group subscriptions).
    delivery_attempt: int
    timestamp: datetime | None
    data: dict[str, Any]
    metadata: dict[str, str]
    _subscription: Subscription | None = field(default=None, repr=False)
    _connection: int = field(default=0, repr=False)

    @property
    def namespace(self) -> str:
        """`events`, `topic`, or `system` for engine subjects."""
        return _split_subject(self.subject)[0]

    @property
    def name(self) -> str:
        """The subject without its namespace: `order.placed` for `events:order.placed`."""
        return _split_subject(self.subject)[1]

    async def ack(self) -> None:
        """Done with it: it is never delivered again."""
        await self._settle(pb.ACK_ACTION_ACK)

    async def nak(self, delay: Duration | None = None) -> None:
        """Not handled: deliver it again after `delay` (seconds or a string such as "5s") [at once]."""
        await self._settle(pb.ACK_ACTION_NAK, delay)

    async def term(self) -> None:
        """Give up on it: never deliver it again (without handling it)."""
        await self._settle(pb.ACK_ACTION_TERM)

    async def in_progress(self) -> None:
        """Still working on it: restart its ack deadline."""
        await self._settle(pb.ACK_ACTION_IN_PROGRESS)

    async def _settle(self, action: pb.AckAction.ValueType, delay: Duration | None = None) -> None:
        if self._subscription is None:
            raise IronflowError("FAILED_PRECONDITION", "this message was not delivered by a subscription")
        await self._subscription._settle(self, action, delay)


def subscribe(
    *patterns: str | Iterable[str],
    server_url: str | None = None,
    api_key: str | None = None,
    replay: int = 0,
    filter: str | None = None,
    group: str | None = None,
    ack: AckMode = "auto",
    start_after_sequence: int | None = None,
    reconnect: bool = True,
) -> Subscription:
    """Subscribe to messages whose subjects match `patterns` (`system.run.>`, `events:order.*`, ...).

    replay: first deliver the last N matching messages [0, at most 1000].
    start_after_sequence: resume exactly after this stream sequence (0: from the oldest retained).
    filter: a CEL expression over data, subject, name, namespace, timestamp, metadata.
    group: join this consumer group (its members share the messages); patterns may then be omitted.
    ack: "auto" (a message counts as handled once delivered) or "manual" (ack each one).
    reconnect: reconnect and resume after connection loss [True].

    Use as `async with ironflow.subscribe(...) as sub: async for message in sub: ...`. Arguments are
    checked at once (IronflowError INVALID_ARGUMENT naming the argument); the server's verdict on
    patterns and filter is raised when entering the `async with`.
    """
    return Subscription(
        _flatten(patterns),
        server_url=server_url,
        api_key=api_key,
        replay=replay,
        filter=filter,
        group=group,
        ack=ack,
        start_after_sequence=start_after_sequence,
        reconnect=reconnect,
    )


class Subscription:
    """A live subscription: an async context manager and an async iterator of `Message`s."""

    def __init__(
        self,
        patterns: list[str],
        *,
        server_url: str | None = None,
        api_key: str | None = None,
        replay: int = 0,
        filter: str | None = None,
        group: str | None = None,
        ack: AckMode = "auto",
        start_after_sequence: int | None = None,
        reconnect: bool = True,
    ) -> None:
        _check(
            patterns,
            replay=replay,
            filter_text=filter,
            group=group,
            ack=ack,
            start_after_sequence=start_after_sequence,
        )
        self.server_url = resolve_server_url(server_url)
        self.ack_mode: AckMode = ack
        self.group = group or None
        self._request = pb.SubscribeRequest(
            patterns=patterns, replay=replay, filter=filter or "", ack=_ACK_MODES[ack], group=group or ""
        )
        if start_after_sequence is not None:
            self._request.start_after_sequence = start_after_sequence
        key = api_key or os.environ.get("IRONFLOW_API_KEY")
        self._metadata = (("authorization", f"Bearer {key}"),) if key else None
        self._reconnect = reconnect
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self._write_lock = asyncio.Lock()
        self._opened = False
        self._closed = False
        # Bumped on every connection (and loss): messages from an older one cannot be settled.
        self._connection = 0
        self._connected_at = 0.0
        self._outages = 0
        self.subscription_id = ""
        # Non-group subscriptions: the highest sequence received (where to resume).
        self._position: int | None = None
        # Manual mode: event id -> sequence of messages the server holds for us (awaiting an ack).
        self._held: dict[str, int] = {}
        # Manual mode, non-group: delivered and not acked/termed (a nak still counts), and the
        # sequences settled above the oldest of those; a resumed connection skips the latter.
        self._unsettled: set[int] = set()
        self._settled: set[int] = set()
        self._skip: set[int] = set()
        self._ack_failures: collections.deque[pb.AckFailed] = collections.deque(maxlen=100)
        # What ended the subscription for good (raised again on every later read).
        self._ended: IronflowError | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Subscription:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect and wait until the server confirms the subscription (or raises its error)."""
        if self._opened:
            raise IronflowError("FAILED_PRECONDITION", "this subscription is already open")
        self._opened = True
        await self._new_channel()
        try:
            await self._connect(self._request)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Leave: the server stops delivering (and hands unacked group messages to other members)."""
        if self._closed:
            return
        self._closed = True
        self._connection += 1
        if self._call is not None:
            self._call.cancel()
        if self._channel is not None:
            await self._channel.close()

    async def _new_channel(self) -> None:
        old, self._channel = self._channel, subscription_channel(self.server_url)
        if old is not None:
            await old.close()

    @property
    def position(self) -> int | None:
        """The last sequence received (non-group subscriptions): resume after it. None for groups."""
        return self._position

    # -- receiving -------------------------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        if not self._opened:
            raise IronflowError(
                "FAILED_PRECONDITION", "use `async with ironflow.subscribe(...) as sub:` before iterating"
            )
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._ended is not None:
                raise self._ended
            response = await self._read()
            if response is None:
                continue  # reconnected
            kind = response.WhichOneof("message")
            if kind == "event":
                message = await self._accept(response.event)
                if message is not None:
                    return message
            elif kind == "ack_failed":
                failure = response.ack_failed
                log.warning(
                    "ack of message %s failed: %s: %s", failure.event_id, failure.code, failure.message
                )
                self._ack_failures.append(failure)

    async def _read(self) -> pb.SubscribeStreamResponse | None:
        """The next response; None after a lost connection was replaced (StopAsyncIteration once closed)."""
        try:
            response = await self._call.read()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and task is not None and not task.cancelling():
                raise StopAsyncIteration from None  # closed from another task
            raise
        except grpc.aio.AioRpcError as exc:
            if self._closed:
                raise StopAsyncIteration from None
            await self._recover(rpc_error(exc, self.server_url))
            return None
        if response is grpc.aio.EOF:
            if self._closed:
                raise StopAsyncIteration
            await self._recover(IronflowError("UNAVAILABLE", "the server ended the subscription"))
            return None
        result: pb.SubscribeStreamResponse = response
        return result

    async def _accept(self, event: pb.StreamMessage) -> Message | None:
        self._outages = 0
        sequence = event.sequence
        manual = self.ack_mode == "manual"
        if self.group is None:
            if manual and sequence in self._skip:
                # Settled before the connection was lost; the resumed one delivers it again.
                self._skip.discard(sequence)
                # Should this fail, the connection is going: the next read notices and resumes.
                with contextlib.suppress(IronflowError):
                    await self._send(event.event_id, pb.ACK_ACTION_ACK, None)
                return None
            if not manual and self._position is not None and sequence <= self._position:
                return None  # already delivered (resumed a little early)
            self._position = max(self._position or 0, sequence)
            if manual:
                self._unsettled.add(sequence)
        if manual:
            self._held[event.event_id] = sequence
        return Message(
            subject=event.subject,
            event_id=event.event_id,
            sequence=sequence,
            delivery_attempt=event.delivery_attempt,
            timestamp=from_timestamp(event.timestamp),
            data=from_struct(event.data),
            metadata=dict(event.metadata),
            _subscription=self,
            _connection=self._connection,
        )

    # -- connecting ------------------------------------------------------------------------------

    async def _connect(self, request: pb.SubscribeRequest) -> None:
        assert self._channel is not None
        stub = subscriptions_pb2_grpc.SubscriptionServiceStub(self._channel)
        call: Any = stub.SubscribeStream(metadata=self._metadata)
        try:
            await call.write(pb.SubscribeStreamRequest(subscribe=request))
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            call.cancel()
            raise rpc_error(exc, self.server_url) from None
        except asyncio.InvalidStateError:  # the call ended before the write: its status says why
            call.cancel()
            raise await _ended_call_error(call, self.server_url) from None
        if first is grpc.aio.EOF or first.WhichOneof("message") != "subscribed":
            call.cancel()
            raise IronflowError("UNAVAILABLE", "the server ended the subscription before confirming it")
        self._call = call
        self._connection += 1
        self._connected_at = time.monotonic()
        self.subscription_id = first.subscribed.subscription_id
        self._held.clear()
        if self.group is None and self._position is None:
            self._position = first.subscribed.start_after_sequence

    def _resume_request(self) -> pb.SubscribeRequest:
        request = pb.SubscribeRequest()
        request.CopyFrom(self._request)
        if self.group is not None:
            return request  # the group keeps the position
        request.replay = 0
        after = self._position or 0
        if self.ack_mode == "manual" and self._unsettled:
            # Again from the oldest message not acked; those acked since are skipped on the way.
            after = min(self._unsettled) - 1
            self._skip = {sequence for sequence in self._settled if sequence > after}
        request.start_after_sequence = after
        return request

    async def _recover(self, error: IronflowError) -> None:
        """Reconnect after `error`, or raise it when reconnecting cannot help."""
        if not self._reconnect or error.code not in RETRYABLE_CODES:
            self._ended = error
            raise error
        self._connection += 1  # what was delivered on the lost connection can no longer be settled
        self._call.cancel()
        if time.monotonic() - self._connected_at > _HEALTHY_SECONDS:
            self._outages = 0
        log.warning(
            "subscription %s interrupted (%s: %s); reconnecting",
            self.subscription_id,
            error.code,
            error.message,
        )
        while not self._closed:
            await asyncio.sleep(backoff(self._outages))
            if self._closed:
                return
            self._outages += 1
            # A fresh channel each time: a channel that failed to connect holds new calls back for
            # its own (slower, un-jittered) reconnect backoff, which would override ours.
            await self._new_channel()
            request = self._resume_request()
            try:
                await self._connect(request)
            except IronflowError as exc:
                if exc.code not in RETRYABLE_CODES:
                    self._ended = exc
                    raise
                log.debug("reconnecting failed (%s: %s); retrying", exc.code, exc.message)
                continue
            if self.group is not None:
                log.info("rejoined consumer group %s as %s", self.group, self.subscription_id)
            else:
                log.info(
                    "reconnected as %s, resuming after sequence %d",
                    self.subscription_id,
                    request.start_after_sequence,
                )
            return

    # -- acks --------------------------------------------------------------------------------------

    async def _settle(self, message: Message, action: pb.AckAction.ValueType, delay: Duration | None) -> None:
        wait = _delay(delay)
        if self.ack_mode != "manual":
            raise IronflowError(
                "FAILED_PRECONDITION",
                "ack: this subscription acknowledges messages automatically (ack='auto'); "
                "subscribe with ack='manual' to ack, nak or term them yourself",
            )
        if self._closed:
            raise IronflowError(
                "FAILED_PRECONDITION", "the subscription is closed; its messages can no longer be settled"
            )
        if message._connection != self._connection:
            raise IronflowError(
                "FAILED_PRECONDITION",
                f"message {message.event_id} (sequence {message.sequence}) arrived on a connection that "
                "was lost since; it can no longer be settled and will be delivered again",
            )
        if message.event_id not in self._held:
            raise IronflowError(
                "FAILED_PRECONDITION",
                f"message {message.event_id} (sequence {message.sequence}) was already settled "
                "(acked, termed or nak'ed)",
            )
        await self._send(message.event_id, action, wait)
        if action != pb.ACK_ACTION_IN_PROGRESS:
            self._held.pop(message.event_id, None)
        if self.group is None and action in (pb.ACK_ACTION_ACK, pb.ACK_ACTION_TERM):
            self._record_settled(message.sequence)
        if self._ack_failures:
            failures = list(self._ack_failures)
            self._ack_failures.clear()
            first = failures[0]
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise IronflowError(
                first.code or "UNKNOWN",
                f"an earlier ack of message {first.event_id} failed: {first.message}{more} "
                "(this call's command was sent)",
            )

    def _record_settled(self, sequence: int) -> None:
        self._unsettled.discard(sequence)
        if not self._unsettled:
            self._settled.clear()  # resuming after the position repeats nothing
            return
        self._settled.add(sequence)
        if len(self._settled) > _PRUNE_SETTLED_AT:
            # A message left unacked this long (dead-lettered, or forgotten) stops holding the resume
            # point back, so this bookkeeping stays bounded.
            self._unsettled.discard(min(self._unsettled))
            oldest = min(self._unsettled, default=None)
            self._settled = {one for one in self._settled if oldest is not None and one > oldest}

    async def _send(
        self, event_id: str, action: pb.AckAction.ValueType, delay: duration_pb2.Duration | None
    ) -> None:
        command = pb.AckCommand(event_id=event_id, action=action, delay=delay)
        try:
            async with self._write_lock:
                await self._call.write(pb.SubscribeStreamRequest(ack=command))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            raise IronflowError(
                "UNAVAILABLE",
                f"the connection was lost before the ack of message {event_id} was sent; "
                "it will be delivered again",
            ) from None


def subscription_channel(server_url: str) -> grpc.aio.Channel:
    """A channel of its own for one subscription, reconnecting on our schedule.

    Extra options on the clients' channel: grpcio shares subchannels process-wide between channels
    with equal options, and one that failed to connect waits out grpc's own reconnect backoff (1 s growing to
    2 min), failing every call on every channel sharing it. A local subchannel pool and a short grpc
    backoff keep a subscription's retries, and their failures, to itself. (Not
    `grpc.min_reconnect_backoff_ms`: grpc uses it as the connect timeout too.)
    """
    return grpc_channel(
        server_url,
        options=[
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.initial_reconnect_backoff_ms", int(INITIAL_BACKOFF_SECONDS * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(MAX_BACKOFF_SECONDS * 1000)),
        ],
    )


def _delay(delay: Duration | None) -> duration_pb2.Duration | None:
    if delay is None:
        return None
    try:
        return to_duration_proto(delay, field="delay")
    except ValueError as exc:
        raise IronflowError("INVALID_ARGUMENT", str(exc)) from None


def backoff(attempt: int) -> float:
    """Seconds to wait before reconnect `attempt` (0, 1, ...): 0.1 s doubling to 5 s, with jitter."""
    ceiling: float = min(MAX_BACKOFF_SECONDS, INITIAL_BACKOFF_SECONDS * float(2 ** min(attempt, 16)))
    return ceiling * random.uniform(0.5, 1.0)


async def _ended_call_error(call: Any, server_url: str) -> IronflowError:
    code = await call.code()
    details = await call.details()
    if code == grpc.StatusCode.UNAVAILABLE:
        return IronflowError("UNAVAILABLE", f"cannot reach the Ironflow server at {server_url}: {details}")
    return IronflowError(code.name if code is not None else "UNKNOWN", details or "")


def _flatten(patterns: tuple[str | Iterable[str], ...]) -> list[str]:
    """`subscribe("a", "b")` and `subscribe(["a", "b"])` mean the same."""
    flat: list[str] = []
    for item in patterns:
        if isinstance(item, str):
            flat.append(item)
        elif isinstance(item, Iterable):
            flat.extend(item)
        else:
            flat.append(item)  # rejected by _check with its position
    return flat


def _check(
    patterns: list[str],
    *,
    replay: int,
    filter_text: str | None,
    group: str | None,
    ack: str,
    start_after_sequence: int | None,
) -> None:
    def invalid(message: str) -> IronflowError:
        return IronflowError("INVALID_ARGUMENT", message)

    if ack not in _ACK_MODES:
        raise invalid(f"ack: must be 'auto' or 'manual', got {ack!r}")
    for index, pattern in enumerate(patterns):
        if not isinstance(pattern, str) or not pattern.strip():
            raise invalid(
                f"patterns[{index}]: must be a non-empty string such as 'system.run.>', got {pattern!r}"
            )
    if not patterns and not group:
        raise invalid("patterns: give at least one pattern (for example 'system.run.>'), or a group")
    if isinstance(replay, bool) or not isinstance(replay, int) or not 0 <= replay <= MAX_REPLAY:
        raise invalid(f"replay: must be an integer between 0 and {MAX_REPLAY}, got {replay!r}")
    if start_after_sequence is not None and (
        isinstance(start_after_sequence, bool)
        or not isinstance(start_after_sequence, int)
        or start_after_sequence < 0
    ):
        raise invalid(f"start_after_sequence: must be an integer >= 0, got {start_after_sequence!r}")
    if filter_text is not None and not isinstance(filter_text, str):
        raise invalid(f"filter: must be a CEL expression string, got {type(filter_text).__name__}")
    if group is not None:
        if not isinstance(group, str):
            raise invalid(f"group: must be a string, got {type(group).__name__}")
        if group and replay:
            raise invalid("replay: a consumer group member starts at the group's position")
        if group and start_after_sequence is not None:
            raise invalid("start_after_sequence: a consumer group member starts at the group's position")


def _split_subject(subject: str) -> tuple[str, str]:
    colon = subject.find(":")
    dot = subject.find(".")
    if colon == -1 or (dot != -1 and dot < colon):
        return "system", subject
    return subject[:colon], subject[colon + 1 :]


__all__ = ["Message", "Subscription", "backoff", "subscribe"]
