"""The subscription engine: every kind of subscription, consumer groups and topic statistics.

The protocol edges (gRPC/Connect in `_rpc`, WebSocket in `_ws`) turn requests into a `SubscribeSpec`
and drive the `Subscription` they get back; everything else happens here. Which machinery serves a
subscription depends on what it asked for:

* auto ack, no group: the hub's live fan-out (fastest; nothing to acknowledge);
* a group: a member of that consumer group (created on first use when it does not exist);
* manual ack without a group: a member of an ephemeral group of its own, so acks, redelivery and
  dead letters work the same as in a named group; the group disappears when the subscriber leaves.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

from ironflow.services.core.errors import ErrorCode, ServiceError, invalid_argument, not_found
from ironflow.services.core.firehose import DEFAULT_FIREHOSE_MAXLEN, FIREHOSE_STREAM
from ironflow.services.core.ids import Clock, IdSource, random_id, utc_now
from ironflow.services.core.storage import Database
from ironflow.services.core.streams import Stream

from ._group_store import (
    DEFAULT_ACK_WAIT,
    DEFAULT_MAX_DELIVER,
    DEFAULT_MAX_IN_FLIGHT,
    START_EARLIEST,
    START_NEW,
    GroupConfig,
    GroupStore,
    check_group_name,
    dead_letter_subject,
)
from ._groups import GroupKeys, GroupLimits, GroupMember, GroupRuntime
from ._hub import Hub, LiveSubscription
from ._messages import AckMode, Delivery, Selector, Settle, SubscribeSpec
from ._subscription import SERVER_STOPPING, Subscription
from ._topics import TopicCounter, TopicQueries, TopicStats

log = logging.getLogger("ironflow.subscription")

_REPLAY_PAGE = 500


@dataclass(frozen=True, slots=True)
class SubscriptionSettings:
    firehose: str = FIREHOSE_STREAM
    # Dead-letter notices appended to the firehose trim it to this many messages.
    firehose_maxlen: int = DEFAULT_FIREHOSE_MAXLEN
    # Prefix of the per-group stream keys (dead letters, replays), as for the firehose.
    stream_prefix: str = "ironflow"
    # Messages a subscription may have waiting for its subscriber before it is dropped (live) or
    # given no more (group member).
    buffer_size: int = 1000
    # How far back a replay looks for matching messages.
    replay_scan_limit: int = 100_000
    # Keep topic statistics (off in tests that count nothing, or for a replica that should not).
    count_topics: bool = True


@dataclass(frozen=True, slots=True)
class GroupInfo:
    config: GroupConfig
    pending: int
    members: int
    dead_letter_subject: str


class SubscriptionEngine:
    def __init__(
        self,
        *,
        db: Database,
        stream: Stream,
        settings: SubscriptionSettings | None = None,
        ids: IdSource = random_id,
        clock: Clock = utc_now,
    ) -> None:
        self.settings = settings = settings or SubscriptionSettings()
        self._stream = stream
        self._ids = ids
        self._clock = clock
        self._store = GroupStore(db)
        self._topics = TopicQueries(db)
        self._counter = (
            TopicCounter(db=db, stream=stream, firehose=settings.firehose, consumer=ids("stats"))
            if settings.count_topics
            else None
        )
        self.hub = Hub(stream=stream, firehose=settings.firehose)
        self._subscriptions: dict[str, Subscription] = {}
        self._runtimes: dict[str, GroupRuntime] = {}
        # Set by `begin_shutdown`: edges holding idle connections (WebSocket) close them on it.
        self.stopping = asyncio.Event()

    async def start(self) -> None:
        await self.hub.start()
        if self._counter is not None:
            await self._counter.start()

    def begin_shutdown(self) -> None:
        """End every subscription (their calls finish) and refuse new ones."""
        self.stopping.set()
        for subscription in list(self._subscriptions.values()):
            subscription.end(SERVER_STOPPING)

    async def stop(self) -> None:
        self.begin_shutdown()
        for subscription in list(self._subscriptions.values()):
            await self.unsubscribe(subscription)
        await self.hub.stop()
        if self._counter is not None:
            await self._counter.stop()

    # -- subscribing -------------------------------------------------------------------------------

    async def subscribe(self, spec: SubscribeSpec) -> Subscription:
        """Start a subscription; the caller must `close()` it (through `unsubscribe`) when done."""
        if self.stopping.is_set():
            raise SERVER_STOPPING
        spec.check()
        subscription_id = self._ids("sub")
        if spec.group:
            subscription: Subscription = await self._join_group(subscription_id, spec)
        else:
            selector = Selector.compile(
                spec.patterns, spec.filter, patterns_field="patterns", filter_field="filter"
            )
            after = await self._start_position(spec, selector)
            if spec.ack is AckMode.MANUAL:
                subscription = await self._join_ephemeral(subscription_id, selector, after)
            else:
                subscription = self._go_live(subscription_id, selector, after)
        self._subscriptions[subscription.id] = subscription
        if self.stopping.is_set():
            subscription.end(SERVER_STOPPING)  # shutdown began while this one was being set up
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.pop(subscription.id, None)
        await subscription.close()
        if isinstance(subscription, GroupMember) and subscription.runtime.ephemeral:
            runtime = subscription.runtime
            self._runtimes.pop(runtime.name, None)
            try:
                await runtime.destroy_stream_groups()
            except Exception as exc:  # noqa: BLE001 - a leftover group costs memory, not correctness
                log.warning("could not remove the ephemeral group of %s (%s)", subscription.id, exc)

    def find(self, subscription_id: str) -> Subscription:
        subscription = self._subscriptions.get(subscription_id)
        if subscription is None:
            raise not_found("subscription", subscription_id)
        return subscription

    async def settle(
        self, subscription_id: str, event_id: str, action: Settle, delay: timedelta | None = None
    ) -> None:
        """The unary Ack: settle a message of a subscription served by this process."""
        if not event_id:
            raise invalid_argument("event_id", "name the message to acknowledge")
        await self.find(subscription_id).settle(event_id, action, delay)

    def _go_live(self, subscription_id: str, selector: Selector, after: int) -> LiveSubscription:
        subscription = LiveSubscription(
            subscription_id=subscription_id,
            selector=selector,
            buffer_size=self.settings.buffer_size,
            on_close=lambda: self.hub.remove(subscription_id),
        )
        subscription.start_after_sequence = after
        subscription.catch_up = asyncio.create_task(self._catch_up(subscription, after))
        return subscription

    async def _catch_up(self, subscription: LiveSubscription, after: int) -> None:
        try:
            await self.hub.join(subscription, after)
        except asyncio.CancelledError:
            raise
        except ServiceError as exc:
            subscription.end(exc)
        except Exception:
            log.exception("subscription %s could not catch up", subscription.id)
            subscription.end(ServiceError(ErrorCode.UNAVAILABLE, "reading the stream failed; resubscribe"))

    async def _start_position(self, spec: SubscribeSpec, selector: Selector) -> int:
        """The sequence delivery starts after: an explicit one, the replay's, or the live position."""
        if spec.start_after_sequence is not None:
            return spec.start_after_sequence
        # The stream's tail now, not the hub's position: the hub may not have read the newest yet, and
        # "live" means what is appended after this call.
        newest = await self._stream.read_last(self.settings.firehose, 1)
        position = max(self.hub.position, newest[-1].sequence if newest else 0)
        if spec.replay <= 0:
            return position
        # Walk back from the live position until `replay` matching messages are found.
        found = 0
        oldest_match: int | None = None
        scanned = 0
        before: int = position + 1
        while scanned < self.settings.replay_scan_limit and before > 1:
            page = await self._stream.read_reverse(self.settings.firehose, before=before, count=_REPLAY_PAGE)
            if not page:
                break
            for entry in page:  # newest first
                scanned += 1
                if selector.wants(Delivery.from_entry(entry)):
                    found += 1
                    oldest_match = entry.sequence
                    if found == spec.replay:
                        return entry.sequence - 1
            before = page[-1].sequence
        return oldest_match - 1 if oldest_match is not None else position

    async def _join_ephemeral(self, subscription_id: str, selector: Selector, after: int) -> GroupMember:
        runtime = GroupRuntime(
            name=subscription_id,
            selector=selector,
            limits=GroupLimits(DEFAULT_ACK_WAIT, DEFAULT_MAX_DELIVER, DEFAULT_MAX_IN_FLIGHT),
            keys=self._keys(subscription_id, ephemeral=True),
            stream=self._stream,
            ids=self._ids,
            ephemeral=True,
        )
        await runtime.ensure_stream_groups(after)
        self._runtimes[runtime.name] = runtime
        member = self._member(subscription_id, runtime, AckMode.MANUAL)
        member.start_after_sequence = after
        return member

    async def _join_group(self, subscription_id: str, spec: SubscribeSpec) -> GroupMember:
        name = check_group_name(spec.group, field="group")
        config = await self._store.find(name)
        if config is None:
            if len(spec.patterns) != 1:
                raise invalid_argument(
                    "patterns",
                    f"consumer group {name!r} does not exist; give exactly one pattern to create it "
                    "(or create it first with CreateConsumerGroup)",
                )
            config, _ = await self._create(
                GroupConfig.checked(
                    name=name,
                    pattern=spec.patterns[0],
                    filter_text=spec.filter,
                    start=START_NEW,
                    ack_wait=None,
                    max_deliver=0,
                    max_in_flight=0,
                    created_at=self._clock(),
                )
            )
        else:
            _check_member_fits(config, spec)
        runtime = await self._runtime(config)
        return self._member(subscription_id, runtime, spec.ack)

    def _member(self, subscription_id: str, runtime: GroupRuntime, ack: AckMode) -> GroupMember:
        member = GroupMember(
            subscription_id=subscription_id,
            runtime=runtime,
            stream=self._stream,
            ack=ack,
            buffer_size=self.settings.buffer_size,
        )
        member.start()
        return member

    async def _runtime(self, config: GroupConfig) -> GroupRuntime:
        runtime = self._runtimes.get(config.name)
        if runtime is None or runtime.deleted:
            runtime = GroupRuntime(
                name=config.name,
                selector=config.selector(),
                limits=GroupLimits(config.ack_wait, config.max_deliver, config.max_in_flight),
                keys=self._keys(config.name, ephemeral=False),
                stream=self._stream,
                ids=self._ids,
            )
            # Normally done at creation; repeated here in case the stream store lost its data.
            await runtime.ensure_stream_groups(self._stream_start(config))
            self._runtimes[config.name] = runtime
        return runtime

    def _keys(self, name: str, *, ephemeral: bool) -> GroupKeys:
        return GroupKeys.for_group(
            prefix=self.settings.stream_prefix,
            firehose=self.settings.firehose,
            firehose_maxlen=self.settings.firehose_maxlen,
            name=name,
            ephemeral=ephemeral,
        )

    @staticmethod
    def _stream_start(config: GroupConfig) -> str | int:
        if config.start == START_NEW:
            return "$"
        if config.start == START_EARLIEST:
            return "0"
        return int(config.start)

    # -- consumer groups -------------------------------------------------------------------------

    async def create_group(self, config: GroupConfig) -> tuple[GroupInfo, bool]:
        config, created = await self._create(config)
        return await self._info(config), created

    async def _create(self, config: GroupConfig) -> tuple[GroupConfig, bool]:
        stored, created = await self._store.create(config)
        await self._keys(stored.name, ephemeral=False).create(self._stream, self._stream_start(stored))
        return stored, created

    async def get_group(self, name: str) -> GroupInfo:
        return await self._info(await self._store.get(check_group_name(name, field="name")))

    async def list_groups(self) -> list[GroupInfo]:
        return [await self._info(config) for config in await self._store.list()]

    async def delete_group(self, name: str) -> None:
        check_group_name(name, field="name")
        if not await self._store.delete(name):
            raise not_found("consumer group", name)
        runtime = self._runtimes.pop(name, None)
        gone = ServiceError(ErrorCode.NOT_FOUND, f"consumer group {name!r} was deleted")
        if runtime is not None:
            runtime.deleted = True
            runtime.end_all(gone)
        await self._keys(name, ephemeral=False).destroy(self._stream)

    async def replay_dead_letters(self, name: str, limit: int) -> int:
        if limit < 0:
            raise invalid_argument("limit", "must not be negative")
        config = await self._store.get(check_group_name(name, field="group"))
        runtime = self._runtimes.get(name) or await self._runtime(config)
        return await runtime.replay_dead_letters(limit or None)

    async def _info(self, config: GroupConfig) -> GroupInfo:
        keys = self._keys(config.name, ephemeral=False)
        pending = 0
        for key in (keys.firehose, keys.replay):
            try:
                pending += await self._stream.pending_count(key, keys.stream_group)
            except ServiceError as exc:
                if exc.code != ErrorCode.NOT_FOUND:
                    raise
        runtime = self._runtimes.get(config.name)
        members = len(runtime.members) if runtime is not None else 0
        return GroupInfo(config, pending, members, dead_letter_subject(config.name))

    # -- topics ------------------------------------------------------------------------------------

    async def list_topics(
        self, *, pattern: str, limit: int, cursor: str
    ) -> tuple[list[tuple[TopicStats, int]], str]:
        topics, next_cursor = await self._topics.list(pattern=pattern, limit=limit, cursor=cursor)
        return [(topic, self.subscribers(topic.subject)) for topic in topics], next_cursor

    async def topic_stats(self, subject: str) -> tuple[TopicStats, int]:
        topic = await self._topics.get(subject)
        return topic, self.subscribers(subject)

    async def count_topics_once(self) -> int:
        """Fold what the stats group has waiting (tests and tools; the service does it continuously)."""
        return await self._counter.count_once() if self._counter is not None else 0

    def subscribers(self, subject: str) -> int:
        """Live subscriptions in this process whose patterns match `subject`."""
        count = 0
        for subscription in self._subscriptions.values():
            if subscription.closed or subscription.ended is not None:
                continue
            if isinstance(subscription, LiveSubscription):
                count += subscription.selector.wants_subject(subject)
            elif isinstance(subscription, GroupMember):
                count += subscription.runtime.selector.wants_subject(subject)
        return count


def _check_member_fits(config: GroupConfig, spec: SubscribeSpec) -> None:
    """A member may restate the group's pattern and filter, but not ask for different ones."""
    if spec.patterns and list(spec.patterns) != [config.pattern]:
        raise invalid_argument(
            "patterns",
            f"consumer group {config.name!r} delivers {config.pattern!r}; "
            "subscribe with that pattern or with none",
        )
    if spec.filter.strip() and spec.filter.strip() != config.filter:
        raise invalid_argument(
            "filter",
            f"consumer group {config.name!r} has filter {config.filter!r}; "
            "subscribe with that filter or with none",
        )


def group_config(
    *,
    name: str,
    pattern: str,
    filter_text: str = "",
    start: str = "",
    ack_wait: timedelta | None = None,
    max_deliver: int = 0,
    max_in_flight: int = 0,
    clock: Clock = utc_now,
) -> GroupConfig:
    """A checked group configuration with defaults filled in (for the RPC and tests)."""
    return GroupConfig.checked(
        name=name,
        pattern=pattern,
        filter_text=filter_text,
        start=start,
        ack_wait=ack_wait,
        max_deliver=max_deliver,
        max_in_flight=max_in_flight,
        created_at=clock(),
    )
