"""Live fan-out: one reader of the firehose per process, handing each message to every subscription.

One tail for all subscribers (rather than one stream read per subscriber) keeps the stream's load flat
however many subscribers there are, and lets the hub decode each message once.

Joining without losing or repeating a message: a subscription that starts in the past (replay,
`start_after_sequence`) first reads the stream itself, at its own pace, until it has caught up with
the hub's position; it then registers with the hub in the same step of the event loop as its last
check, so the hub hands it exactly the messages after the last one it read. The hub skips anything at
or below a subscription's own cursor, so reading a little past the hub during catch-up is harmless.

Backpressure: the hub never waits for a subscriber. Each subscription has a bounded buffer; when a
message does not fit, that subscription alone is ended with RESOURCE_EXHAUSTED, telling the subscriber
the sequence to resume after. Catch-up reads are different: the subscription pulls them, so it simply
reads more slowly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ironflow.services.core.errors import ErrorCode, ServiceError
from ironflow.services.core.streams import Stream
from ironflow.services.core.tasks import cancel_requested, stop_task

from ._messages import AckMode, Delivery, Selector
from ._subscription import SERVER_STOPPING, Subscription

log = logging.getLogger("ironflow.subscription")

_READ_BATCH = 500
_TAIL_BLOCK_MS = 1000
_RETRY_DELAY_S = 1.0


class LiveSubscription(Subscription):
    """An auto-ack subscription served from the hub: no group, no acks, at-most-once once live."""

    def __init__(
        self, *, subscription_id: str, selector: Selector, buffer_size: int, on_close: Callable[[], None]
    ) -> None:
        super().__init__(subscription_id=subscription_id, ack=AckMode.AUTO, buffer_size=buffer_size)
        self.selector = selector
        # The last sequence this subscription has looked at (delivered or skipped).
        self.cursor = 0
        self._on_close = on_close
        self.catch_up: asyncio.Task[None] | None = None

    def offer(self, message: Delivery, sequence: int) -> None:
        """From the hub: deliver if wanted, or end the subscription if its buffer is full."""
        if sequence <= self.cursor or self.ended is not None:
            return
        self.cursor = sequence
        if not self.selector.wants(message):
            return
        try:
            self._buffer.put_nowait(message)
        except asyncio.QueueFull:
            resume = self.last_sequence if self.last_sequence is not None else self.start_after_sequence
            self.end(
                ServiceError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"subscriber fell more than {self._buffer.maxsize} messages behind and was dropped; "
                    f"resubscribe with start_after_sequence={resume} to continue where it left off",
                )
            )
            self._on_close()

    async def _closing(self) -> None:
        if self.catch_up is not None:
            self.catch_up.cancel()
        self._on_close()


class Hub:
    """Tails the firehose and offers every new message to the registered subscriptions."""

    def __init__(self, *, stream: Stream, firehose: str) -> None:
        self._stream = stream
        self._firehose = firehose
        self._subscriptions: dict[str, LiveSubscription] = {}
        # The last sequence read from the stream and offered to every registered subscription.
        self.position = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def subscriptions(self) -> list[LiveSubscription]:
        return list(self._subscriptions.values())

    async def start(self) -> None:
        newest = await self._stream.read_last(self._firehose, 1)
        self.position = newest[-1].sequence if newest else 0
        self._task = asyncio.create_task(self._tail_forever(), name="subscription-hub")

    async def stop(self) -> None:
        self._stopping = True
        await stop_task(self._task)
        for subscription in self.subscriptions:
            subscription.end(SERVER_STOPPING)
        self._subscriptions.clear()

    def remove(self, subscription_id: str) -> None:
        self._subscriptions.pop(subscription_id, None)

    async def join(self, subscription: LiveSubscription, after: int) -> None:
        """Deliver what follows `after` from the stream, then go live (see the module docstring)."""
        subscription.cursor = after
        subscription.start_after_sequence = after
        while not subscription.closed and subscription.ended is None:
            if subscription.cursor >= self.position:
                # No await between this check and registering: the hub cannot move in between.
                self._subscriptions[subscription.id] = subscription
                return
            entries = await self._stream.read(self._firehose, after=subscription.cursor, count=_READ_BATCH)
            if not entries:
                # Nothing between the cursor and the hub's position is left (trimmed or deleted).
                subscription.cursor = self.position
                continue
            for entry in entries:
                subscription.cursor = entry.sequence
                message = Delivery.from_entry(entry)
                if subscription.selector.wants(message):
                    await subscription._buffer.put(message)

    async def _tail_forever(self) -> None:
        while not self._stopping and not cancel_requested():
            try:
                found = await self._stream.tail(
                    {self._firehose: self.position}, count=_READ_BATCH, block_ms=_TAIL_BLOCK_MS
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the stream is away: keep trying, subscribers wait
                log.warning("reading the firehose failed (%s); retrying in %.0fs", exc, _RETRY_DELAY_S)
                await asyncio.sleep(_RETRY_DELAY_S)
                continue
            for _, entry in found:
                if self._subscriptions:
                    self._dispatch(entry.sequence, Delivery.from_entry(entry))
                else:
                    self.position = entry.sequence  # nobody to decode it for

    def _dispatch(self, sequence: int, message: Delivery) -> None:
        self.position = sequence
        for subscription in list(self._subscriptions.values()):
            subscription.offer(message, sequence)
