"""SubscriptionService over Connect/gRPC: a thin translation onto `SubscriptionEngine`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from connectrpc.request import RequestContext
from google.protobuf import duration_pb2

from ironflow.services.core.disconnect import client_gone
from ironflow.services.core.errors import ServiceError, invalid_argument
from ironflow.services.core.protojson import dict_to_struct, to_timestamp
from ironflow.services.core.tasks import stop_task
from ironflow.v1 import subscriptions_pb2 as pb
from ironflow.v1.subscriptions_connect import SubscriptionService

from ._engine import GroupInfo, SubscriptionEngine, group_config
from ._messages import AckMode, Delivery, Settle, SubscribeSpec
from ._subscription import Subscription
from ._topics import TopicStats

Ctx = RequestContext[Any, Any]
log = logging.getLogger("ironflow.subscription")

_ACK_MODES = {
    pb.ACK_MODE_UNSPECIFIED: AckMode.AUTO,
    pb.ACK_MODE_AUTO: AckMode.AUTO,
    pb.ACK_MODE_MANUAL: AckMode.MANUAL,
}
_ACTIONS: dict[int, Settle] = {
    pb.ACK_ACTION_UNSPECIFIED: Settle.ACK,
    pb.ACK_ACTION_ACK: Settle.ACK,
    pb.ACK_ACTION_NAK: Settle.NAK,
    pb.ACK_ACTION_TERM: Settle.TERM,
    pb.ACK_ACTION_IN_PROGRESS: Settle.IN_PROGRESS,
}


class SubscriptionServiceRpc(SubscriptionService):
    def __init__(self, engine: SubscriptionEngine) -> None:
        self._engine = engine

    async def subscribe(self, request: pb.SubscribeRequest, ctx: Ctx) -> AsyncIterator[pb.SubscribeResponse]:
        subscription = await self._engine.subscribe(spec_from_proto(request))
        try:
            yield pb.SubscribeResponse(subscribed=_subscribed(subscription))
            async for delivery in _until_client_leaves(subscription):
                yield pb.SubscribeResponse(event=message_to_proto(delivery))
        finally:
            await self._engine.unsubscribe(subscription)

    async def subscribe_stream(
        self, request: AsyncIterator[pb.SubscribeStreamRequest], ctx: Ctx
    ) -> AsyncIterator[pb.SubscribeStreamResponse]:
        first = await anext(request, None)
        if first is None or first.WhichOneof("message") != "subscribe":
            raise invalid_argument("subscribe", "the first message on SubscribeStream must be a subscribe")
        subscription = await self._engine.subscribe(spec_from_proto(first.subscribe))
        failures: asyncio.Queue[pb.AckFailed] = asyncio.Queue()
        reader = asyncio.create_task(self._read_acks(subscription, request, failures))
        try:
            yield pb.SubscribeStreamResponse(subscribed=_subscribed(subscription))
            async for item in _merge(subscription, failures, reader):
                if isinstance(item, pb.AckFailed):
                    yield pb.SubscribeStreamResponse(ack_failed=item)
                else:
                    yield pb.SubscribeStreamResponse(event=message_to_proto(item))
        finally:
            # Bounded: connect-python's request stream can sit out a cancellation until the client
            # closes, which would hold a graceful shutdown open.
            await stop_task(reader, grace=1.0)
            await self._engine.unsubscribe(subscription)

    @staticmethod
    async def _read_acks(
        subscription: Subscription,
        requests: AsyncIterator[pb.SubscribeStreamRequest],
        failures: asyncio.Queue[pb.AckFailed],
    ) -> None:
        async for message in requests:
            if message.WhichOneof("message") != "ack":
                failures.put_nowait(
                    pb.AckFailed(
                        code="INVALID_ARGUMENT", message="subscribe: only the first message may subscribe"
                    )
                )
                continue
            command = message.ack
            try:
                await subscription.settle(command.event_id, _action(command.action), _delay(command))
            except ServiceError as exc:
                failures.put_nowait(
                    pb.AckFailed(event_id=command.event_id, code=exc.code.value, message=exc.message)
                )

    async def ack(self, request: pb.AckRequest, ctx: Ctx) -> pb.AckResponse:
        if not request.subscription_id:
            raise invalid_argument("subscription_id", "name the subscription the message was delivered on")
        await self._engine.settle(
            request.subscription_id, request.event_id, _action(request.action), _delay(request)
        )
        return pb.AckResponse()

    async def create_consumer_group(
        self, request: pb.CreateConsumerGroupRequest, ctx: Ctx
    ) -> pb.CreateConsumerGroupResponse:
        group = request.group
        config = group_config(
            name=group.name,
            pattern=group.pattern,
            filter_text=group.filter,
            start=group.start,
            ack_wait=_duration(group.ack_wait, "group.ack_wait") if group.HasField("ack_wait") else None,
            max_deliver=group.max_deliver,
            max_in_flight=group.max_in_flight,
        )
        info, _ = await self._engine.create_group(config)
        return pb.CreateConsumerGroupResponse(group=group_to_proto(info))

    async def get_consumer_group(
        self, request: pb.GetConsumerGroupRequest, ctx: Ctx
    ) -> pb.GetConsumerGroupResponse:
        return pb.GetConsumerGroupResponse(group=group_to_proto(await self._engine.get_group(request.name)))

    async def list_consumer_groups(
        self, request: pb.ListConsumerGroupsRequest, ctx: Ctx
    ) -> pb.ListConsumerGroupsResponse:
        groups = await self._engine.list_groups()
        return pb.ListConsumerGroupsResponse(groups=[group_to_proto(info) for info in groups])

    async def delete_consumer_group(
        self, request: pb.DeleteConsumerGroupRequest, ctx: Ctx
    ) -> pb.DeleteConsumerGroupResponse:
        await self._engine.delete_group(request.name)
        return pb.DeleteConsumerGroupResponse()

    async def replay_dead_letters(
        self, request: pb.ReplayDeadLettersRequest, ctx: Ctx
    ) -> pb.ReplayDeadLettersResponse:
        replayed = await self._engine.replay_dead_letters(request.group, request.limit)
        return pb.ReplayDeadLettersResponse(replayed=replayed)

    async def list_topics(self, request: pb.ListTopicsRequest, ctx: Ctx) -> pb.ListTopicsResponse:
        topics, cursor = await self._engine.list_topics(
            pattern=request.pattern, limit=request.limit, cursor=request.cursor
        )
        return pb.ListTopicsResponse(
            topics=[topic_to_proto(topic, subscribers) for topic, subscribers in topics], next_cursor=cursor
        )

    async def get_topic_stats(self, request: pb.GetTopicStatsRequest, ctx: Ctx) -> pb.GetTopicStatsResponse:
        topic, subscribers = await self._engine.topic_stats(request.subject)
        return pb.GetTopicStatsResponse(topic=topic_to_proto(topic, subscribers))


async def _until_client_leaves(subscription: Subscription) -> AsyncIterator[Delivery]:
    """Deliveries until the subscription ends or the client disconnects, even while idle."""
    gone = client_gone()
    if gone is None:
        async for delivery in subscription:
            yield delivery
        return
    left = asyncio.ensure_future(gone.wait())
    try:
        while True:
            following = asyncio.ensure_future(subscription.next())
            await asyncio.wait({following, left}, return_when=asyncio.FIRST_COMPLETED)
            if not following.done():
                following.cancel()
                return
            yield following.result()
    finally:
        left.cancel()


async def _merge(
    subscription: Subscription, failures: asyncio.Queue[pb.AckFailed], reader: asyncio.Task[None]
) -> AsyncIterator[Delivery | pb.AckFailed]:
    """Deliveries and ack failures as they come, until the subscription ends or the client goes away.

    A client that half-closes its side (as `buf curl` does after the subscribe message) keeps
    receiving; only a broken request stream ends the call.
    """
    next_delivery = asyncio.ensure_future(subscription.next())
    next_failure = asyncio.ensure_future(failures.get())
    watching: set[asyncio.Future[Any]] = {next_delivery, next_failure, reader}
    try:
        while True:
            done, _ = await asyncio.wait(watching, return_when=asyncio.FIRST_COMPLETED)
            if next_failure in done:
                yield next_failure.result()
                watching.discard(next_failure)
                next_failure = asyncio.ensure_future(failures.get())
                watching.add(next_failure)
            if next_delivery in done:
                yield next_delivery.result()
                watching.discard(next_delivery)
                next_delivery = asyncio.ensure_future(subscription.next())
                watching.add(next_delivery)
            if reader in done:
                watching.discard(reader)
                if not reader.cancelled() and reader.exception() is not None:
                    return
    finally:
        next_delivery.cancel()
        next_failure.cancel()


def spec_from_proto(request: pb.SubscribeRequest) -> SubscribeSpec:
    return SubscribeSpec(
        patterns=tuple(request.patterns),
        replay=request.replay,
        start_after_sequence=request.start_after_sequence
        if request.HasField("start_after_sequence")
        else None,
        filter=request.filter,
        ack=_ACK_MODES.get(request.ack, AckMode.AUTO),
        group=request.group,
    )


def message_to_proto(delivery: Delivery) -> pb.StreamMessage:
    return pb.StreamMessage(
        subject=delivery.subject,
        event_id=delivery.event_id,
        sequence=delivery.sequence,
        delivery_attempt=delivery.delivery_attempt,
        timestamp=to_timestamp(delivery.timestamp),
        data=dict_to_struct(delivery.data),
        metadata=delivery.metadata,
    )


def group_to_proto(info: GroupInfo) -> pb.ConsumerGroup:
    config = info.config
    ack_wait = duration_pb2.Duration()
    ack_wait.FromTimedelta(config.ack_wait)
    return pb.ConsumerGroup(
        name=config.name,
        pattern=config.pattern,
        filter=config.filter,
        start=config.start,
        ack_wait=ack_wait,
        max_deliver=config.max_deliver,
        max_in_flight=config.max_in_flight,
        created_at=to_timestamp(config.created_at),
        pending=info.pending,
        members=info.members,
        dead_letter_subject=info.dead_letter_subject,
    )


def topic_to_proto(topic: TopicStats, subscribers: int) -> pb.TopicInfo:
    return pb.TopicInfo(
        subject=topic.subject,
        messages=topic.messages,
        first_sequence=topic.first_sequence,
        last_sequence=topic.last_sequence,
        first_message_at=to_timestamp(topic.first_message_at),
        last_message_at=to_timestamp(topic.last_message_at),
        subscribers=subscribers,
    )


def _subscribed(subscription: Subscription) -> pb.Subscribed:
    return pb.Subscribed(
        subscription_id=subscription.id, start_after_sequence=subscription.start_after_sequence
    )


def _action(action: int) -> Settle:
    settle = _ACTIONS.get(action)
    if settle is None:
        raise invalid_argument("action", f"unknown ack action {action}")
    return settle


def _delay(command: pb.AckCommand | pb.AckRequest) -> timedelta | None:
    return _duration(command.delay, "delay") if command.HasField("delay") else None


def _duration(value: duration_pb2.Duration, field: str) -> timedelta:
    if value.seconds < 0 or value.nanos < 0:
        raise invalid_argument(field, "must not be negative")
    return value.ToTimedelta()
