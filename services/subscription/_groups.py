"""Consumer groups at work: members sharing a group's messages, acks, redelivery and dead letters.

Built on the stream's consumer groups (Redis XREADGROUP/XACK/XAUTOCLAIM, or the in-process
equivalent), so the group's position and its pending messages live in the stream, shared by every
replica of this service and kept across its restarts:

* A member reads new messages with `read_group` under its own consumer name. Messages its group's
  patterns or filter do not want are acknowledged at once (every group reads the whole firehose).
* Auto ack: a message is acknowledged once the subscriber has taken it. Manual ack: it stays pending
  until the subscriber settles it.
* A sweep per group (on every replica with members) claims messages pending for `ack_wait` and hands
  them to the member with the most room, counting a delivery; one past `max_deliver` goes to the
  group's dead-letter subject instead.
* `nak(delay)` leaves the message pending but backdates it so the sweep finds it `delay` from now;
  `in_progress` makes it fresh again; `term` acknowledges it without processing.
* A member that leaves hands what it still holds back at once (backdated past `ack_wait`), so another
  member gets it on the next sweep rather than after the timeout.

Dead letters are kept on a per-group stream, from which `replay_dead_letters` moves them to a
per-group replay stream that members read before new messages, and announced on the firehose as
`system.consumer.<group>.dead_letter` for anyone subscribed to that subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from ironflow.services.core.errors import ErrorCode, ServiceError
from ironflow.services.core.firehose import DEFAULT_FIREHOSE_MAXLEN, FirehoseMessage
from ironflow.services.core.ids import IdSource, utc_now
from ironflow.services.core.streams import GroupEntry, Stream
from ironflow.services.core.tasks import cancel_requested, stop_task

from ._group_store import dead_letter_subject
from ._messages import ORIGINAL_SEQUENCE_FIELD, AckMode, Delivery, Selector, Settle, nak_delay
from ._subscription import SERVER_STOPPING, Subscription

log = logging.getLogger("ironflow.subscription")

_FETCH_BLOCK_MS = 500
# Messages a member reads ahead of its subscriber (see `GroupMember.room`).
_PREFETCH = 64
_RETRY_DELAY_S = 1.0
_MAX_SWEEP_INTERVAL_S = 1.0
_MIN_SWEEP_INTERVAL_S = 0.02
# Who owns messages a departed member handed back, until the sweep gives them to a member.
_RELEASED = "~released"
# Backdating a released message this far makes it due at the next sweep whatever the ack_wait.
_LONG_AGO_MS = 365 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class GroupKeys:
    """Where a group lives: its consumer group on the firehose, and its dead-letter and replay streams."""

    firehose: str
    stream_group: str
    dead: str
    replay: str
    # Dead-letter notices appended to the firehose trim it to this many messages, as every writer does.
    firehose_maxlen: int = DEFAULT_FIREHOSE_MAXLEN

    @classmethod
    def for_group(
        cls,
        *,
        prefix: str,
        firehose: str,
        name: str,
        ephemeral: bool,
        firehose_maxlen: int = DEFAULT_FIREHOSE_MAXLEN,
    ) -> GroupKeys:
        kind = "ephemeral" if ephemeral else "group"
        return cls(
            firehose=firehose,
            firehose_maxlen=firehose_maxlen,
            stream_group=f"{kind}:{name}",
            dead=f"{prefix}:{kind}:{name}:dead",
            replay=f"{prefix}:{kind}:{name}:replay",
        )

    async def create(self, stream: Stream, start: str | int) -> None:
        """Create the stream-side groups if missing (every replica may call this)."""
        await stream.create_group(self.firehose, self.stream_group, start=start)
        await stream.create_group(self.replay, self.stream_group, start="0")

    async def destroy(self, stream: Stream) -> None:
        await stream.destroy_group(self.firehose, self.stream_group)
        await stream.delete_stream(self.replay)
        await stream.delete_stream(self.dead)


@dataclass(frozen=True, slots=True)
class GroupLimits:
    ack_wait: timedelta
    max_deliver: int
    max_in_flight: int

    @property
    def ack_wait_ms(self) -> int:
        return max(1, int(self.ack_wait / timedelta(milliseconds=1)))


class GroupRuntime:
    """One group's members in this process and the sweep that redelivers for them."""

    def __init__(
        self,
        *,
        name: str,
        selector: Selector,
        limits: GroupLimits,
        keys: GroupKeys,
        stream: Stream,
        ids: IdSource,
        ephemeral: bool = False,
    ) -> None:
        self.name = name
        self.selector = selector
        self.limits = limits
        self.keys = keys
        self.ephemeral = ephemeral
        self._stream = stream
        self._ids = ids
        self.members: dict[str, GroupMember] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # Naks whose delay is longer than ack_wait: kept fresh here until they are close enough to due.
        self._deferred: dict[tuple[str, str], _Deferred] = {}
        self.deleted = False

    # -- setting up ------------------------------------------------------------------------------

    async def ensure_stream_groups(self, start: str | int) -> None:
        await self.keys.create(self._stream, start)

    async def destroy_stream_groups(self) -> None:
        await self.keys.destroy(self._stream)

    def add(self, member: GroupMember) -> None:
        self.members[member.id] = member
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep_forever(), name=f"group-sweep-{self.name}")

    async def remove(self, member: GroupMember) -> None:
        self.members.pop(member.id, None)
        if not self.members and self._sweeper is not None:
            sweeper, self._sweeper = self._sweeper, None
            await stop_task(sweeper)
        else:
            self.wake()

    def end_all(self, error: ServiceError) -> None:
        for member in list(self.members.values()):
            member.end(error)

    def wake(self) -> None:
        self._wake.set()

    # -- acks --------------------------------------------------------------------------------------

    async def defer(self, key: str, entry_id: str, consumer: str, delay: timedelta) -> None:
        """Make a pending message due for redelivery `delay` from now (a nak)."""
        ack_wait = self.limits.ack_wait
        if delay <= ack_wait:
            idle = ack_wait - delay
            await self._stream.set_idle(key, self.keys.stream_group, consumer, [entry_id], idle_ms=_ms(idle))
            asyncio.get_running_loop().call_later(delay.total_seconds(), self.wake)
            return
        await self._stream.set_idle(key, self.keys.stream_group, consumer, [entry_id], idle_ms=0)
        now = time.monotonic()
        self._deferred[(key, entry_id)] = _Deferred(
            consumer=consumer, due=now + delay.total_seconds(), refreshed=now
        )

    # -- the sweep ---------------------------------------------------------------------------------

    def _sweep_interval(self) -> float:
        quarter = self.limits.ack_wait.total_seconds() / 4
        return min(_MAX_SWEEP_INTERVAL_S, max(_MIN_SWEEP_INTERVAL_S, quarter))

    async def _sweep_forever(self) -> None:
        while not cancel_requested():
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except ServiceError as exc:
                if exc.code != ErrorCode.NOT_FOUND:
                    log.warning("sweeping group %s failed (%s); retrying", self.name, exc.message)
            except Exception:
                log.exception("sweeping group %s failed; retrying", self.name)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._sweep_interval()):
                    await self._wake.wait()
            self._wake.clear()

    async def sweep(self) -> None:
        """Refresh long naks, then redeliver (or dead-letter) what has waited `ack_wait`."""
        await self._refresh_deferred()
        for key in (self.keys.replay, self.keys.firehose):
            for member in sorted(self.members.values(), key=lambda m: m.room(), reverse=True):
                room = member.room()
                if room <= 0:
                    break
                claimed = await self._stream.claim_idle(
                    key,
                    self.keys.stream_group,
                    member.id,
                    min_idle_ms=self.limits.ack_wait_ms,
                    count=room,
                )
                if not claimed:
                    break
                await self._hand_out(member, key, claimed)

    async def _hand_out(self, member: GroupMember, key: str, claimed: list[GroupEntry]) -> None:
        dead = [one for one in claimed if one.deliveries > self.limits.max_deliver]
        if dead:
            await self._dead_letter(key, dead)
        live = [one for one in claimed if one.deliveries <= self.limits.max_deliver]
        if member.closed or member.ended is not None:
            # It left while we claimed for it: hand these back for the next sweep.
            await self.release(key, [one.entry.id for one in live])
            return
        # A redelivery goes to another member where there is one: the first may be stuck on it.
        keep: list[GroupEntry] = []
        moved: dict[str, list[GroupEntry]] = {}
        for one in live:
            event_id = one.entry.fields.get("event_id", "")
            other = self._other_member(member, moved) if member.holds(event_id) else None
            if other is None:
                keep.append(one)
                continue
            member.forget(event_id)
            moved.setdefault(other.id, []).append(one)
        for other_id, entries in moved.items():
            other = self.members[other_id]
            ids = [one.entry.id for one in entries]
            await self._stream.set_idle(key, self.keys.stream_group, other.id, ids, idle_ms=0)
            await other.accept(key, entries)
        await member.accept(key, keep)

    def _other_member(self, member: GroupMember, planned: dict[str, list[GroupEntry]]) -> GroupMember | None:
        candidates = [
            other
            for other in self.members.values()
            if other is not member and other.room() > len(planned.get(other.id, ()))
        ]
        return max(candidates, key=lambda other: other.room(), default=None)

    async def _refresh_deferred(self) -> None:
        if not self._deferred:
            return
        now = time.monotonic()
        ack_wait = self.limits.ack_wait.total_seconds()
        for (key, entry_id), deferred in list(self._deferred.items()):
            remaining = deferred.due - now
            if remaining <= ack_wait:
                del self._deferred[(key, entry_id)]
                await self.defer(key, entry_id, deferred.consumer, timedelta(seconds=max(0.0, remaining)))
            elif now - deferred.refreshed >= ack_wait / 2:
                deferred.refreshed = now
                await self._stream.set_idle(
                    key, self.keys.stream_group, deferred.consumer, [entry_id], idle_ms=0
                )

    async def release(self, key: str, entry_ids: list[str]) -> None:
        if entry_ids:
            await self._stream.set_idle(
                key, self.keys.stream_group, _RELEASED, entry_ids, idle_ms=_LONG_AGO_MS
            )
            self.wake()

    async def release_consumer(self, consumer: str) -> None:
        """Hand back everything `consumer` still owns, then forget the consumer."""
        for key in (self.keys.firehose, self.keys.replay):
            while True:
                owned = await self._stream.pending(key, self.keys.stream_group, count=500, consumer=consumer)
                if not owned:
                    break
                await self.release(key, [one.id for one in owned])
            await self._stream.delete_consumer(key, self.keys.stream_group, consumer)

    async def _dead_letter(self, key: str, entries: list[GroupEntry]) -> None:
        """Move messages past max_deliver to the dead-letter stream and announce them; then ack them."""
        kept = []
        announced = []
        for one in entries:
            message = Delivery.from_entry(one.entry)
            fields = dict(one.entry.fields)
            fields[ORIGINAL_SEQUENCE_FIELD] = str(message.sequence)
            fields["deliveries"] = str(one.deliveries - 1)
            kept.append(fields)
            announced.append(
                FirehoseMessage(
                    subject=dead_letter_subject(self.name),
                    event_id=self._ids("evt"),
                    timestamp=utc_now(),
                    data={
                        "group": self.name,
                        "subject": message.subject,
                        "event_id": message.event_id,
                        "sequence": message.sequence,
                        "deliveries": one.deliveries - 1,
                        "timestamp": message.timestamp.isoformat(),
                        "data": message.data,
                        "metadata": message.metadata,
                    },
                ).encode()
            )
        await self._stream.append_many(self.keys.dead, kept)
        await self._stream.append_many(self.keys.firehose, announced, maxlen=self.keys.firehose_maxlen)
        await self._stream.ack(key, self.keys.stream_group, [one.entry.id for one in entries])
        log.info(
            "group %s: %d messages dead-lettered after %d deliveries",
            self.name,
            len(entries),
            self.limits.max_deliver,
        )

    async def replay_dead_letters(self, limit: int | None) -> int:
        """Move up to `limit` dead letters (oldest first; None: all) to the replay stream."""
        moved = 0
        while limit is None or moved < limit:
            want = 500 if limit is None else min(500, limit - moved)
            batch = await self._stream.read(self.keys.dead, after="0-0", count=want)
            if not batch:
                break
            originals = [{k: v for k, v in one.fields.items() if k != "deliveries"} for one in batch]
            await self._stream.append_many(self.keys.replay, originals)
            await self._stream.trim(self.keys.dead, min_id=batch[-1].sequence + 1)
            moved += len(batch)
        self.wake()
        return moved


@dataclass(slots=True)
class _Deferred:
    consumer: str
    due: float
    refreshed: float


def _ms(delta: timedelta) -> int:
    return max(0, int(delta / timedelta(milliseconds=1)))


class GroupMember(Subscription):
    """One subscriber in a group: a consumer of the stream group with its own fetch loop."""

    def __init__(
        self,
        *,
        subscription_id: str,
        runtime: GroupRuntime,
        stream: Stream,
        ack: AckMode,
        buffer_size: int,
    ) -> None:
        super().__init__(subscription_id=subscription_id, ack=ack, buffer_size=buffer_size)
        self.runtime = runtime
        self._stream = stream
        # Messages given to this member and not yet settled: event id -> (stream key, entry id).
        self._held: dict[str, tuple[str, str]] = {}
        self._to_ack: list[tuple[str, str]] = []
        self._room_changed = asyncio.Event()
        self._fetcher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.runtime.add(self)
        self._fetcher = asyncio.create_task(self._fetch_forever(), name=f"group-member-{self.id}")

    def room(self) -> int:
        """How many more messages this member may be given now."""
        if self.closed or self.ended is not None:
            return 0
        # Members fetch a little ahead of their subscriber, not a whole buffer: what one member has
        # buffered is out of reach of the others, so a deep prefetch would starve them.
        free = min(self._buffer.maxsize, _PREFETCH) - self._buffer.qsize()
        return max(0, min(free, self.runtime.limits.max_in_flight - len(self._held)))

    async def accept(self, key: str, entries: list[GroupEntry]) -> None:
        """Buffer the wanted entries for the subscriber; acknowledge the rest at once."""
        unwanted = []
        overflow = []
        for one in entries:
            message = Delivery.from_entry(one.entry, one.deliveries)
            if not self.runtime.selector.wants(message):
                unwanted.append(one.entry.id)
            elif self._buffer.full():
                # The sweep and the fetch loop both fill the buffer; whichever came second hands back.
                overflow.append(one.entry.id)
            else:
                self._held[message.event_id] = (key, one.entry.id)
                self._buffer.put_nowait(message)
        if unwanted:
            await self._stream.ack(key, self.runtime.keys.stream_group, unwanted)
        if overflow:
            await self.runtime.release(key, overflow)

    def holds(self, event_id: str) -> bool:
        return event_id in self._held

    def forget(self, event_id: str) -> None:
        """The message went to another member: its ack no longer belongs here."""
        if self._held.pop(event_id, None) is not None:
            self._room_changed.set()

    def _taken(self, delivery: Delivery) -> None:
        if self.ack_mode is AckMode.AUTO:
            held = self._held.pop(delivery.event_id, None)
            if held is not None:
                self._to_ack.append(held)
            self._room_changed.set()

    async def settle(self, event_id: str, action: Settle, delay: timedelta | None = None) -> None:
        if self.ack_mode is AckMode.AUTO:
            await super().settle(event_id, action, delay)
        held = self._held.get(event_id)
        if held is None:
            raise ServiceError(
                ErrorCode.NOT_FOUND,
                f"message {event_id!r} is not awaiting an ack on subscription {self.id} "
                "(already settled, redelivered elsewhere, or never delivered here)",
            )
        key, entry_id = held
        group = self.runtime.keys.stream_group
        if action is Settle.IN_PROGRESS:
            await self._stream.set_idle(key, group, self.id, [entry_id], idle_ms=0)
            return
        if action is Settle.NAK:
            await self.runtime.defer(key, entry_id, self.id, nak_delay(delay))
        else:  # ACK and TERM both end the message's life in the group
            await self._stream.ack(key, group, [entry_id])
        self._held.pop(event_id, None)
        self._room_changed.set()

    async def _flush_acks(self) -> None:
        if not self._to_ack:
            return
        batch, self._to_ack = self._to_ack, []
        by_key: dict[str, list[str]] = {}
        for key, entry_id in batch:
            by_key.setdefault(key, []).append(entry_id)
        for key, ids in by_key.items():
            await self._stream.ack(key, self.runtime.keys.stream_group, ids)

    async def _fetch_forever(self) -> None:
        group = self.runtime.keys.stream_group
        while not self.closed and not cancel_requested():
            try:
                await self._flush_acks()
                room = self.room()
                if room <= 0:
                    self._room_changed.clear()
                    await self._room_changed.wait()
                    continue
                got = await self._stream.read_group(
                    self.runtime.keys.replay, group, self.id, count=room, block_ms=None
                )
                key = self.runtime.keys.replay
                if not got:
                    key = self.runtime.keys.firehose
                    got = await self._stream.read_group(
                        key, group, self.id, count=room, block_ms=_FETCH_BLOCK_MS
                    )
                await self.accept(key, got)
                # Reads from the in-process stream do not suspend while messages are waiting: yield,
                # so the group's other members get their turn.
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                raise
            except ServiceError as exc:
                if exc.code == ErrorCode.NOT_FOUND and self.runtime.deleted:
                    return
                if exc.code == ErrorCode.NOT_FOUND:
                    # The stream group vanished (the stream store lost its data): recreate it from now.
                    log.warning("group %s is missing on the stream; recreating it", self.runtime.name)
                    with contextlib.suppress(Exception):
                        await self.runtime.ensure_stream_groups("$")
                    continue
                log.warning("group %s member %s: %s; retrying", self.runtime.name, self.id, exc.message)
                await asyncio.sleep(_RETRY_DELAY_S)

    async def _closing(self) -> None:
        self._room_changed.set()  # a fetch loop waiting for room sees it is closed
        await stop_task(self._fetcher)
        try:
            await self._flush_acks()
            if not self.runtime.deleted:
                await self.runtime.release_consumer(self.id)
        except Exception as exc:  # noqa: BLE001 - pending messages still come back after ack_wait
            log.warning("member %s left without handing back its messages (%s)", self.id, exc)
        finally:
            await self.runtime.remove(self)

    def stop(self) -> None:
        self.end(SERVER_STOPPING)
