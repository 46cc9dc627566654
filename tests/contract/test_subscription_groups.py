"""Consumer groups on both backends: sharing, acks, redelivery, dead letters, durability, CRUD."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from ironflow.services.core.errors import ErrorCode, ServiceError
from ironflow.services.subscription import (
    AckMode,
    Delivery,
    Settle,
    SubscribeSpec,
    Subscription,
    SubscriptionEngine,
    group_config,
)
from tests.contract.subscription_support import Stores, nothing_more, open_stores, take
from tests.support import eventually


@pytest.fixture(
    params=["embedded", pytest.param("distributed", marks=[pytest.mark.redis, pytest.mark.postgres])]
)
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    async with open_stores(request.param, tmp_path) as opened:
        yield opened


def spec(group: str, *, ack: AckMode = AckMode.AUTO) -> SubscribeSpec:
    return SubscribeSpec(group=group, ack=ack)


async def test_two_members_split_a_thousand_messages_with_no_loss_and_no_duplicates(stores: Stores) -> None:
    engine = await stores.engine()
    await engine.create_group(group_config(name="split", pattern="topic:work.>"))
    first = await engine.subscribe(spec("split"))
    second = await engine.subscribe(spec("split"))
    await stores.append_many("topic:work.item", [{"i": i} for i in range(1000)])
    await stores.append_many("topic:other", [{"i": -1}] * 50)  # not the group's: acked, never delivered

    seen: dict[str, list[int]] = {first.id: [], second.id: []}

    async def drain(member_id: str, sub: Subscription) -> None:
        while True:
            delivery = await sub.next()
            seen[member_id].append(delivery.data["i"])

    readers = [asyncio.create_task(drain(first.id, first)), asyncio.create_task(drain(second.id, second))]
    try:
        await eventually(
            lambda: _true(sum(len(v) for v in seen.values()) >= 1000), within=30, what="1000 deliveries"
        )
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    everything = seen[first.id] + seen[second.id]
    assert sorted(everything) == list(range(1000))  # each exactly once
    assert seen[first.id]
    assert seen[second.id]
    info = await engine.get_group("split")
    assert info.members == 2
    await eventually(lambda: _pending_is(engine, "split", 0), what="auto acks to be recorded")


async def _true(value: bool) -> bool:
    return value


async def _pending_is(engine: SubscriptionEngine, name: str, expected: int) -> bool:
    info = await engine.get_group(name)
    return info.pending == expected


async def test_an_unacked_message_goes_to_the_other_member_after_ack_wait(stores: Stores) -> None:
    engine = await stores.engine()
    await engine.create_group(
        group_config(name="slowpoke", pattern="topic:jobs", ack_wait=timedelta(seconds=1))
    )
    lazy = await engine.subscribe(spec("slowpoke", ack=AckMode.MANUAL))
    await stores.append("topic:jobs", {"job": 1})
    [held] = await take(lazy, 1)
    assert held.delivery_attempt == 1
    busy = await engine.subscribe(spec("slowpoke", ack=AckMode.MANUAL))
    [again] = await take(busy, 1, within=10)
    assert (again.event_id, again.delivery_attempt) == (held.event_id, 2)
    await busy.settle(again.event_id, Settle.ACK)
    await eventually(lambda: _pending_is(engine, "slowpoke", 0), what="the ack")
    # The first member's claim is stale now: acking it finds nothing of its own any more.
    await nothing_more(lazy, within=0.3)


async def test_nak_with_a_delay_redelivers_after_the_delay_and_term_stops_redelivery(stores: Stores) -> None:
    engine = await stores.engine()
    await engine.create_group(group_config(name="nakked", pattern="topic:n", ack_wait=timedelta(seconds=30)))
    member = await engine.subscribe(spec("nakked", ack=AckMode.MANUAL))
    await stores.append("topic:n", {"k": "a"})
    [first] = await take(member, 1)
    loop = asyncio.get_running_loop()
    nakked_at = loop.time()
    await member.settle(first.event_id, Settle.NAK, timedelta(milliseconds=700))
    [second] = await take(member, 1)
    waited = loop.time() - nakked_at
    assert second.event_id == first.event_id
    assert second.delivery_attempt == 2
    assert 0.6 <= waited < 5  # after the delay, well before ack_wait (30 s)

    await member.settle(second.event_id, Settle.TERM)
    await eventually(lambda: _pending_is(engine, "nakked", 0), what="term to settle the message")
    await nothing_more(member, within=1.0)


async def test_a_nak_longer_than_ack_wait_is_kept_back_for_the_whole_delay(stores: Stores) -> None:
    engine = await stores.engine()
    await engine.create_group(
        group_config(name="longnak", pattern="topic:l", ack_wait=timedelta(milliseconds=400))
    )
    member = await engine.subscribe(spec("longnak", ack=AckMode.MANUAL))
    await stores.append("topic:l", {})
    [first] = await take(member, 1)
    loop = asyncio.get_running_loop()
    nakked_at = loop.time()
    await member.settle(first.event_id, Settle.NAK, timedelta(milliseconds=1500))
    [again] = await take(member, 1)
    assert again.delivery_attempt == 2
    assert loop.time() - nakked_at >= 1.4


async def test_in_progress_extends_the_ack_deadline(stores: Stores) -> None:
    engine = await stores.engine()
    await engine.create_group(
        group_config(name="working", pattern="topic:w", ack_wait=timedelta(milliseconds=800))
    )
    member = await engine.subscribe(spec("working", ack=AckMode.MANUAL))
    other = await engine.subscribe(spec("working", ack=AckMode.MANUAL))
    await stores.append("topic:w", {})
    taker, first = await _first_of(member, other)
    for _ in range(4):  # 4 x 0.4 s = twice ack_wait, kept alive throughout
        await asyncio.sleep(0.4)  # the passage of time is the point here, not a wait for a result
        await taker.settle(first.event_id, Settle.IN_PROGRESS)
    await taker.settle(first.event_id, Settle.ACK)
    idle = other if taker is member else member
    await nothing_more(idle, within=1.0)


async def _first_of(a: Subscription, b: Subscription) -> tuple[Subscription, Delivery]:
    tasks = {asyncio.create_task(a.next()): a, asyncio.create_task(b.next()): b}
    done, pending = await asyncio.wait(tasks, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    [finished] = done
    return tasks[finished], finished.result()


async def test_past_max_deliver_a_message_is_dead_lettered_and_can_be_replayed(stores: Stores) -> None:
    engine = await stores.engine()
    await engine.create_group(
        group_config(name="fragile", pattern="topic:f", ack_wait=timedelta(milliseconds=200), max_deliver=2)
    )
    watcher = await engine.subscribe(SubscribeSpec(patterns=("system.consumer.fragile.dead_letter",)))
    member = await engine.subscribe(spec("fragile", ack=AckMode.MANUAL))
    await stores.append("topic:f", {"payload": 7})
    attempts = [d.delivery_attempt for d in await take(member, 2)]  # never acked
    assert attempts == [1, 2]
    [dead] = await take(watcher, 1)
    assert dead.data["group"] == "fragile"
    assert dead.data["subject"] == "topic:f"
    assert dead.data["deliveries"] == 2
    assert dead.data["data"] == {"payload": 7}
    await nothing_more(member, within=0.6)
    await eventually(lambda: _pending_is(engine, "fragile", 0), what="the dead letter to leave pending")

    assert await engine.replay_dead_letters("fragile", 0) == 1
    [replayed] = await take(member, 1)
    assert replayed.data == {"payload": 7}
    assert replayed.sequence == dead.data["sequence"]
    assert replayed.delivery_attempt == 1
    await member.settle(replayed.event_id, Settle.ACK)
    assert await engine.replay_dead_letters("fragile", 0) == 0


async def test_group_position_and_pending_messages_survive_a_restart_of_the_service(stores: Stores) -> None:
    """The service restarts (a new engine on the same database and stream store): the acknowledged
    message is not seen again, the one that was pending comes back, and new ones keep coming."""
    engine = await stores.engine()
    await engine.create_group(
        group_config(name="durable", pattern="topic:d", ack_wait=timedelta(milliseconds=500))
    )
    member = await engine.subscribe(spec("durable", ack=AckMode.MANUAL))
    await stores.append_many("topic:d", [{"i": 1}, {"i": 2}])
    one, _two = await take(member, 2)
    await member.settle(one.event_id, Settle.ACK)
    await engine.stop()  # `two` is still pending

    await stores.append("topic:d", {"i": 3})
    restarted = await stores.engine()
    info = await restarted.get_group("durable")
    assert info.pending == 1
    rejoined = await restarted.subscribe(spec("durable", ack=AckMode.MANUAL))
    got = await take(rejoined, 2)
    assert sorted((d.data["i"], d.delivery_attempt) for d in got) == [(2, 2), (3, 1)]


async def test_a_member_leaving_hands_its_messages_to_the_others_at_once(stores: Stores) -> None:
    engine = await stores.engine()
    await engine.create_group(
        group_config(name="handover", pattern="topic:h", ack_wait=timedelta(minutes=10))
    )
    leaving = await engine.subscribe(spec("handover", ack=AckMode.MANUAL))
    await stores.append("topic:h", {})
    [held] = await take(leaving, 1)
    staying = await engine.subscribe(spec("handover", ack=AckMode.MANUAL))
    await engine.unsubscribe(leaving)
    [got] = await take(staying, 1, within=5)  # long before the 10 minute ack_wait
    assert got.event_id == held.event_id


async def test_max_in_flight_limits_unacked_messages_per_member(stores: Stores) -> None:
    engine = await stores.engine()
    await engine.create_group(group_config(name="limited", pattern="topic:m", max_in_flight=3))
    member = await engine.subscribe(spec("limited", ack=AckMode.MANUAL))
    await stores.append_many("topic:m", [{"i": i} for i in range(10)])
    got = await take(member, 3)
    await nothing_more(member, within=0.5)
    await member.settle(got[0].event_id, Settle.ACK)
    [fourth] = await take(member, 1)
    assert fourth.data == {"i": 3}


async def test_manual_ack_without_a_group_redelivers_to_the_same_subscriber(stores: Stores) -> None:
    engine = await stores.engine()
    sub = await engine.subscribe(SubscribeSpec(patterns=("topic:solo",), ack=AckMode.MANUAL))
    await stores.append("topic:solo", {"x": 1})
    [first] = await take(sub, 1)
    await sub.settle(first.event_id, Settle.NAK, timedelta(0))
    [again] = await take(sub, 1)
    assert (again.event_id, again.delivery_attempt) == (first.event_id, 2)
    await sub.settle(again.event_id, Settle.ACK)
    with pytest.raises(ServiceError) as caught:
        await sub.settle(again.event_id, Settle.ACK)
    assert caught.value.code is ErrorCode.NOT_FOUND
    await engine.unsubscribe(sub)


async def test_acks_in_auto_mode_are_refused(stores: Stores) -> None:
    engine = await stores.engine()
    sub = await engine.subscribe(SubscribeSpec(patterns=("topic:auto",)))
    with pytest.raises(ServiceError) as caught:
        await engine.settle(sub.id, "evt_x", Settle.ACK)
    assert caught.value.code is ErrorCode.FAILED_PRECONDITION
    with pytest.raises(ServiceError) as missing:
        await engine.settle("sub_unknown", "evt_x", Settle.ACK)
    assert missing.value.code is ErrorCode.NOT_FOUND


async def test_joining_an_unknown_group_creates_it_from_the_request(stores: Stores) -> None:
    engine = await stores.engine()
    member = await engine.subscribe(
        SubscribeSpec(patterns=("topic:auto.*",), filter="data.n > 1", group="implicit")
    )
    info = await engine.get_group("implicit")
    assert (info.config.pattern, info.config.filter, info.config.start) == (
        "topic:auto.*",
        "data.n > 1",
        "new",
    )
    await stores.append_many("topic:auto.x", [{"n": 1}, {"n": 2}])
    [got] = await take(member, 1)
    assert got.data == {"n": 2}

    with pytest.raises(ServiceError) as caught:
        await engine.subscribe(SubscribeSpec(patterns=("topic:else",), group="implicit"))
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    assert caught.value.message.startswith("patterns:")
    with pytest.raises(ServiceError) as needs_pattern:
        await engine.subscribe(SubscribeSpec(group="nobody-made-this"))
    assert needs_pattern.value.message.startswith("patterns:")


async def test_a_group_starting_at_earliest_or_a_sequence_sees_older_messages(stores: Stores) -> None:
    engine = await stores.engine()
    sequences = await stores.append_many("topic:old", [{"i": i} for i in range(5)])
    await engine.create_group(group_config(name="from-start", pattern="topic:old", start="earliest"))
    await engine.create_group(group_config(name="from-seq", pattern="topic:old", start=str(sequences[2])))
    await engine.create_group(group_config(name="from-now", pattern="topic:old"))
    assert [d.data["i"] for d in await take(await engine.subscribe(spec("from-start")), 5)] == [0, 1, 2, 3, 4]
    assert [d.data["i"] for d in await take(await engine.subscribe(spec("from-seq")), 2)] == [3, 4]
    now = await engine.subscribe(spec("from-now"))
    await stores.append("topic:old", {"i": 5})
    assert [d.data["i"] for d in await take(now, 1)] == [5]


async def test_group_crud_and_validation(stores: Stores) -> None:
    engine = await stores.engine()
    created, was_new = await engine.create_group(group_config(name="crud", pattern="events:order.*"))
    assert was_new
    assert created.config.ack_wait == timedelta(seconds=30)
    assert (created.config.max_deliver, created.config.max_in_flight) == (5, 1000)
    assert created.dead_letter_subject == "system.consumer.crud.dead_letter"
    again, was_new = await engine.create_group(group_config(name="crud", pattern="events:order.*"))
    assert not was_new
    assert again.config == created.config
    with pytest.raises(ServiceError) as conflict:
        await engine.create_group(group_config(name="crud", pattern="events:order.>"))
    assert conflict.value.code is ErrorCode.ALREADY_EXISTS
    assert "pattern" in conflict.value.message
    assert [info.config.name for info in await engine.list_groups()] == ["crud"]

    member = await engine.subscribe(spec("crud"))
    await engine.delete_group("crud")
    with pytest.raises(ServiceError) as ended:
        await take(member, 1)
    assert ended.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(ServiceError) as gone:
        await engine.get_group("crud")
    assert gone.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(ServiceError) as twice:
        await engine.delete_group("crud")
    assert twice.value.code is ErrorCode.NOT_FOUND


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "", "pattern": "topic:a"}, "group.name"),
        ({"name": "has.dot", "pattern": "topic:a"}, "group.name"),
        ({"name": "g", "pattern": ""}, "group.pattern"),
        ({"name": "g", "pattern": "topic:a.>.b"}, "group.pattern"),
        ({"name": "g", "pattern": "topic:a", "filter_text": "data.x >"}, "group.filter"),
        ({"name": "g", "pattern": "topic:a", "start": "yesterday"}, "group.start"),
        ({"name": "g", "pattern": "topic:a", "ack_wait": timedelta(milliseconds=1)}, "group.ack_wait"),
        ({"name": "g", "pattern": "topic:a", "max_deliver": -1}, "group.max_deliver"),
        ({"name": "g", "pattern": "topic:a", "max_in_flight": 10**9}, "group.max_in_flight"),
    ],
)
def test_bad_group_settings_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ServiceError) as caught:
        group_config(**kwargs)  # type: ignore[arg-type]
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    assert caught.value.message.startswith(f"{field}:")


async def test_topic_stats_count_events_and_topics_once(stores: Stores) -> None:
    engine = await stores.engine(count_topics=True)
    second_replica = await stores.engine(count_topics=True)
    sequences = await stores.append_many("topic:stats.a", [{"i": i} for i in range(7)])
    await stores.append("events:order.placed", {})
    await stores.append("system.run.r1.created", {})  # engine events are not counted
    listener = await engine.subscribe(SubscribeSpec(patterns=("topic:stats.*",)))

    async def counted() -> bool:
        topics, _ = await engine.list_topics(pattern="", limit=0, cursor="")
        return sum(topic.messages for topic, _ in topics) == 8

    await eventually(counted, within=15, what="both replicas to count the batch once")
    stats, subscribers = await second_replica.topic_stats("topic:stats.a")
    assert (stats.messages, stats.first_sequence, stats.last_sequence) == (7, sequences[0], sequences[-1])
    assert stats.first_message_at <= stats.last_message_at
    assert subscribers == 0  # subscribers are per replica
    assert (await engine.topic_stats("topic:stats.a"))[1] == 1
    topics, cursor = await engine.list_topics(pattern="topic:>", limit=0, cursor="")
    assert [topic.subject for topic, _ in topics] == ["topic:stats.a"]
    page, cursor = await engine.list_topics(pattern="", limit=1, cursor="")
    assert [topic.subject for topic, _ in page] == ["events:order.placed"]
    page, cursor = await engine.list_topics(pattern="", limit=1, cursor=cursor)
    assert [topic.subject for topic, _ in page] == ["topic:stats.a"]
    await engine.unsubscribe(listener)
    with pytest.raises(ServiceError) as system:
        await engine.topic_stats("system.run.r1.created")
    assert system.value.code is ErrorCode.INVALID_ARGUMENT
    with pytest.raises(ServiceError) as unknown:
        await engine.topic_stats("topic:never")
    assert unknown.value.code is ErrorCode.NOT_FOUND
