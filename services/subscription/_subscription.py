"""The subscriber's side of a subscription: a bounded buffer read one message at a time.

Every kind of subscription (a live fan-out one, a consumer-group member) hands messages to its
subscriber through this buffer, so the protocol edges (gRPC, Connect, WebSocket) drive them all the
same way: `async for delivery in subscription`, `settle(...)` for manual acks, `close()` at the end.

A subscription that ends on the server's side (fell too far behind, its group was deleted, the server
is stopping) puts the error in the buffer in place of what it held, so the subscriber sees it next.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from ironflow.services.core.errors import ErrorCode, ServiceError

from ._messages import AckMode, Delivery, Settle

SERVER_STOPPING = ServiceError(ErrorCode.UNAVAILABLE, "the subscription service is stopping; reconnect")


class Subscription:
    """Base of every subscription. Subclasses fill the buffer and implement `settle` and `_closed`."""

    def __init__(self, *, subscription_id: str, ack: AckMode, buffer_size: int) -> None:
        self.id = subscription_id
        self.ack_mode = ack
        self.start_after_sequence = 0
        self._buffer: asyncio.Queue[Delivery | ServiceError] = asyncio.Queue(maxsize=buffer_size)
        self._ended: ServiceError | None = None
        self._closed = False
        # The sequence of the last message handed to the subscriber: where it can resume from.
        self.last_sequence: int | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Delivery:
        return await self.next()

    async def next(self) -> Delivery:
        """The next message; raises the ServiceError that ended the subscription, if one did."""
        if self._closed:
            raise ServiceError(ErrorCode.CANCELLED, f"subscription {self.id} is closed")
        if self._ended is not None:
            raise self._ended  # every call after the end sees it, whatever is still buffered
        item = await self._buffer.get()
        if isinstance(item, ServiceError):
            raise item
        self.last_sequence = item.sequence
        self._taken(item)
        return item

    def _taken(self, delivery: Delivery) -> None:
        """Called as a message leaves the buffer for the subscriber."""

    def end(self, error: ServiceError) -> None:
        """End the subscription from the server's side: what is buffered is dropped, `error` is next."""
        if self._ended is not None:
            return
        self._ended = error
        while not self._buffer.empty():
            self._buffer.get_nowait()
        self._buffer.put_nowait(error)

    @property
    def ended(self) -> ServiceError | None:
        return self._ended

    async def settle(self, event_id: str, action: Settle, delay: timedelta | None = None) -> None:
        raise ServiceError(
            ErrorCode.FAILED_PRECONDITION,
            f"subscription {self.id} is in auto ack mode; subscribe with ack=manual to ack messages",
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._closing()

    async def _closing(self) -> None:
        """Release what the subscription holds (registrations, pending messages)."""
