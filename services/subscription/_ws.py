"""The WebSocket edge of the subscription service: `/ws`, one JSON message per text frame.

One socket carries any number of subscriptions. Each has a pump task moving its deliveries into one
bounded outgoing queue, drained by the only writer of the socket. The bound is the backpressure: a
slow socket stalls its own pumps, then the subscriptions' bounded buffers fill and the engine decides
(a live subscriber that falls behind is dropped with RESOURCE_EXHAUSTED; a group member is given no
more), so a connection's memory stays bounded and no other connection ever waits for it.

Everything else (client frames, reaping pumps whose subscription the server ended, shutdown) happens
in the connection's own task, one thing at a time: answers come back in the order they were asked
for, and only that task subscribes or unsubscribes, so nothing is cancelled halfway through either.

Frames the client gets besides `subscribed`, `unsubscribed` and `event`: an `error` with `id`
answers the request that carried that `id` (any request may carry one); an `error` with
`subscription_id` and no `event_id` says the server ended that subscription (it is gone); one with
`event_id` says an ack failed. A bad frame is answered, never a reason to close the socket.

When the engine stops, every subscription ends with UNAVAILABLE; their error frames go out and the
socket closes with 1012 (service restart), so an idle socket cannot hold a graceful shutdown open.
Plain ASGI, like the REST routes: a framework would add nothing a dozen lines do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from datetime import UTC, timedelta
from typing import Any

from ironflow.services.core.errors import ErrorCode, ServiceError, invalid_argument, not_found
from ironflow.services.core.http import Message, Receive, Scope, Send, reject_unknown_fields, send_json

from ._engine import SubscriptionEngine
from ._messages import AckMode, Delivery, Settle, SubscribeSpec
from ._subscription import Subscription

log = logging.getLogger("ironflow.subscription")

CLOSE_SERVICE_RESTART = 1012
_SHUTDOWN_GRACE_S = 2.0
_SUBSCRIBE_FIELDS = {"type", "id", "patterns", "replay", "filter", "group", "ack", "start_after_sequence"}
_UNSUBSCRIBE_FIELDS = {"type", "id", "subscription_id"}
_SETTLE_FIELDS = {"type", "id", "subscription_id", "event_id", "delay_ms"}
_SETTLES = {"ack": Settle.ACK, "nak": Settle.NAK, "term": Settle.TERM, "in_progress": Settle.IN_PROGRESS}
_TYPES = ("subscribe", "unsubscribe", *_SETTLES)
_ABOUT_A_SUBSCRIPTION = ("unsubscribe", *_SETTLES)

Frame = dict[str, Any]


class WebSocketApp:
    """ASGI app for `/ws`; `queue_size` frames may wait per socket, `max_subscriptions` per socket."""

    def __init__(
        self, engine: SubscriptionEngine, *, queue_size: int = 64, max_subscriptions: int = 100
    ) -> None:
        self._engine = engine
        self._queue_size = queue_size
        self._max_subscriptions = max_subscriptions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            body = {"code": "failed_precondition", "message": "/ws speaks WebSocket only"}
            await send_json(send, 426, body)
            return
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        connection = _Connection(self._engine, send, self._queue_size, self._max_subscriptions)
        await connection.serve(receive)


class _Connection:
    def __init__(self, engine: SubscriptionEngine, send: Send, queue_size: int, limit: int) -> None:
        self._engine = engine
        self._send = send
        self._limit = limit
        self._outgoing: asyncio.Queue[Frame] = asyncio.Queue(maxsize=queue_size)
        self._subscriptions: dict[str, Subscription] = {}
        self._pumps: dict[str, asyncio.Task[None]] = {}

    async def serve(self, receive: Receive) -> None:
        writer = asyncio.create_task(self._write())
        try:
            if await self._run(receive, writer):
                await self._say_goodbye(writer)
        finally:
            writer.cancel()
            await self._release_all()
            await asyncio.gather(writer, return_exceptions=True)

    async def _run(self, receive: Receive, writer: asyncio.Task[None]) -> bool:
        """Handle frames until the client leaves (False) or the server stops (True); reap pumps."""
        stopping = asyncio.ensure_future(self._engine.stopping.wait())
        incoming = asyncio.ensure_future(receive())
        try:
            while True:
                watching = {incoming, stopping, writer, *self._pumps.values()}
                done, _ = await asyncio.wait(watching, return_when=asyncio.FIRST_COMPLETED)
                await self._reap()
                if incoming in done:
                    message = incoming.result()
                    if message["type"] == "websocket.disconnect":
                        return False
                    await self._handle(message)
                    incoming = asyncio.ensure_future(receive())
                elif stopping in done:
                    return True
                elif writer in done:
                    log.warning("WebSocket writer failed (%r); dropping the connection", writer.exception())
                    return False
        finally:
            incoming.cancel()
            stopping.cancel()

    async def _reap(self) -> None:
        """Forget subscriptions whose pump ended (the server ended them; the client was told)."""
        for subscription_id, pump in list(self._pumps.items()):
            if pump.done():
                del self._pumps[subscription_id]
                await self._forget(self._subscriptions.pop(subscription_id))

    async def _say_goodbye(self, writer: asyncio.Task[None]) -> None:
        """The server is stopping: let the pumps report their end, flush, close with 1012."""
        if self._pumps:
            await asyncio.wait(self._pumps.values(), timeout=_SHUTDOWN_GRACE_S)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._outgoing.join(), timeout=_SHUTDOWN_GRACE_S)
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await self._send({"type": "websocket.close", "code": CLOSE_SERVICE_RESTART})

    async def _release_all(self) -> None:
        for pump in self._pumps.values():
            pump.cancel()
        await asyncio.gather(*self._pumps.values(), return_exceptions=True)
        self._pumps.clear()
        for subscription in self._subscriptions.values():
            await self._forget(subscription)
        self._subscriptions.clear()

    async def _forget(self, subscription: Subscription) -> None:
        try:
            await self._engine.unsubscribe(subscription)
        except Exception:  # the engine's stop() releases whatever is left; keep the socket's others
            log.exception("could not unsubscribe %s", subscription.id)

    # -- the socket's two directions ---------------------------------------------------------------

    async def _write(self) -> None:
        while True:
            frame = await self._outgoing.get()
            try:
                await self._send({"type": "websocket.send", "text": json.dumps(frame, separators=(",", ":"))})
            finally:
                self._outgoing.task_done()

    async def _emit(self, frame: Frame) -> None:
        await self._outgoing.put(frame)

    async def _pump(self, subscription: Subscription) -> None:
        """Deliveries to the socket until the server ends the subscription; then why it ended."""
        try:
            async for delivery in subscription:
                await self._emit(event_frame(subscription.id, delivery))
        except ServiceError as exc:
            await self._emit(error_frame(exc, {"subscription_id": subscription.id}))
        except Exception as exc:  # noqa: BLE001 - logged by _internal; the client gets a trace id
            await self._emit(error_frame(_internal(exc), {"subscription_id": subscription.id}))

    async def _handle(self, message: Message) -> None:
        context: Frame = {}
        try:
            frame = parse_frame(message)
            context = _context(frame)
            check_type(frame)
            await self._dispatch(frame, context)
        except ServiceError as exc:
            await self._emit(error_frame(exc, context))
        except Exception as exc:  # noqa: BLE001 - logged by _internal; the client gets a trace id
            await self._emit(error_frame(_internal(exc), context))

    async def _dispatch(self, frame: Frame, context: Frame) -> None:
        kind = frame["type"]
        if kind == "subscribe":
            await self._subscribe(frame, context)
        elif kind == "unsubscribe":
            await self._unsubscribe(frame, context)
        else:
            await self._settle(frame, _SETTLES[kind])

    # -- requests ----------------------------------------------------------------------------------

    async def _subscribe(self, frame: Frame, context: Frame) -> None:
        reject_unknown_fields(frame, _SUBSCRIBE_FIELDS)
        spec = spec_from_frame(frame)
        if len(self._subscriptions) >= self._limit:
            raise ServiceError(
                ErrorCode.RESOURCE_EXHAUSTED, f"at most {self._limit} subscriptions per connection"
            )
        subscription = await self._engine.subscribe(spec)
        self._subscriptions[subscription.id] = subscription
        await self._emit(
            {
                "type": "subscribed",
                **context,
                "subscription_id": subscription.id,
                "start_after_sequence": subscription.start_after_sequence,
            }
        )
        self._pumps[subscription.id] = asyncio.create_task(
            self._pump(subscription), name=f"ws-pump-{subscription.id}"
        )

    async def _unsubscribe(self, frame: Frame, context: Frame) -> None:
        reject_unknown_fields(frame, _UNSUBSCRIBE_FIELDS)
        subscription_id = _required_string(frame, "subscription_id")
        subscription = self._subscriptions.pop(subscription_id, None)
        if subscription is None:
            raise not_found("subscription", subscription_id)
        pump = self._pumps.pop(subscription_id, None)
        if pump is not None:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
        await self._engine.unsubscribe(subscription)
        await self._emit({"type": "unsubscribed", **context})

    async def _settle(self, frame: Frame, action: Settle) -> None:
        reject_unknown_fields(frame, _SETTLE_FIELDS)
        subscription_id = _required_string(frame, "subscription_id")
        event_id = _required_string(frame, "event_id")
        delay_ms = _integer(frame, "delay_ms")
        if delay_ms is not None and action is not Settle.NAK:
            raise invalid_argument("delay_ms", "only a nak takes a delay")
        if delay_ms is not None and delay_ms < 0:
            raise invalid_argument("delay_ms", "must not be negative")
        subscription = self._subscriptions.get(subscription_id)
        if subscription is None:
            raise not_found("subscription", subscription_id)
        delay = timedelta(milliseconds=delay_ms) if delay_ms is not None else None
        await subscription.settle(event_id, action, delay)


# -- frames ----------------------------------------------------------------------------------------


def parse_frame(message: Message) -> Frame:
    """A client message as a JSON object, or INVALID_ARGUMENT."""
    text = message.get("text")
    if text is None:
        try:
            text = bytes(message.get("bytes") or b"").decode()
        except UnicodeDecodeError as exc:
            raise invalid_argument("frame", "is not UTF-8 text") from exc
    try:
        frame = json.loads(text)
    except json.JSONDecodeError as exc:
        raise invalid_argument("frame", f"is not valid JSON ({exc})") from exc
    if not isinstance(frame, dict):
        raise invalid_argument("frame", "must be a JSON object")
    return frame


def check_type(frame: Frame) -> None:
    kind = frame.get("type")
    if kind not in _TYPES:
        raise invalid_argument("type", f"must be one of {', '.join(_TYPES)}; got {json.dumps(kind)}")
    _optional_string(frame, "id")


def _context(frame: Frame) -> Frame:
    """What an answer to `frame` repeats: its `id`, and for unsubscribe and acks what they named."""
    names = ("id", "subscription_id", "event_id") if frame.get("type") in _ABOUT_A_SUBSCRIPTION else ("id",)
    return {name: frame[name] for name in names if isinstance(frame.get(name), str)}


def spec_from_frame(frame: Frame) -> SubscribeSpec:
    ack = _optional_string(frame, "ack") or AckMode.AUTO.value
    if ack not in (AckMode.AUTO.value, AckMode.MANUAL.value):
        raise invalid_argument("ack", f'must be "auto" or "manual", got {json.dumps(ack)}')
    patterns = frame.get("patterns", [])
    if not isinstance(patterns, list) or not all(isinstance(one, str) for one in patterns):
        raise invalid_argument("patterns", "must be a list of strings")
    return SubscribeSpec(
        patterns=tuple(patterns),
        replay=_integer(frame, "replay") or 0,
        start_after_sequence=_integer(frame, "start_after_sequence"),
        filter=_optional_string(frame, "filter") or "",
        ack=AckMode(ack),
        group=_optional_string(frame, "group") or "",
    )


def event_frame(subscription_id: str, delivery: Delivery) -> Frame:
    timestamp = delivery.timestamp
    timestamp = timestamp.replace(tzinfo=UTC) if timestamp.tzinfo is None else timestamp.astimezone(UTC)
    return {
        "type": "event",
        "subscription_id": subscription_id,
        "subject": delivery.subject,
        "event_id": delivery.event_id,
        "sequence": delivery.sequence,
        "delivery_attempt": delivery.delivery_attempt,
        "timestamp": timestamp.isoformat().replace("+00:00", "Z"),
        "data": delivery.data,
        "metadata": delivery.metadata,
    }


def error_frame(exc: ServiceError, context: Frame) -> Frame:
    return {"type": "error", **context, "code": exc.code.value.lower(), "message": exc.message}


def _internal(exc: Exception) -> ServiceError:
    trace_id = uuid.uuid4().hex
    log.error("unexpected error on a WebSocket (trace id %s)", trace_id, exc_info=exc)
    return ServiceError(ErrorCode.INTERNAL, f"internal error (trace id {trace_id})")


def _optional_string(frame: Frame, name: str) -> str | None:
    value = frame.get(name)
    if value is not None and not isinstance(value, str):
        raise invalid_argument(name, f"must be a string, got {json.dumps(value)}")
    return value


def _required_string(frame: Frame, name: str) -> str:
    value = _optional_string(frame, name)
    if not value:
        raise invalid_argument(name, "is required")
    return value


def _integer(frame: Frame, name: str) -> int | None:
    value = frame.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_argument(name, f"must be an integer, got {json.dumps(value)}")
    return value
