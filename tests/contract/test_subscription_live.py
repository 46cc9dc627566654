"""Live subscriptions on both backends: patterns, filters, replay, resuming, backpressure.

Each test runs against the embedded stores (SQLite + the in-process stream) and the distributed ones
(Postgres + Redis), driving the engine directly; the protocol edges have their own tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ironflow.services.core.errors import ErrorCode, ServiceError
from ironflow.services.subscription import SubscribeSpec
from tests.contract.subscription_support import Stores, nothing_more, open_stores, take


@pytest.fixture(
    params=["embedded", pytest.param("distributed", marks=[pytest.mark.redis, pytest.mark.postgres])]
)
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    async with open_stores(request.param, tmp_path) as opened:
        yield opened


async def test_live_messages_arrive_in_order_and_only_matching_ones(stores: Stores) -> None:
    engine = await stores.engine()
    sub = await engine.subscribe(SubscribeSpec(patterns=("events:order.*", "topic:alerts.>")))
    await stores.append("events:order.placed", {"n": 1})
    await stores.append("events:order.placed.extra", {"n": 2})  # `*` is exactly one token
    await stores.append("topic:alerts.disk.full", {"n": 3})
    await stores.append("events:user.created", {"n": 4})
    await stores.append("system.run.r1.created", {"n": 5})  # no namespace in a pattern: engine only
    await stores.append("events:order.shipped", {"n": 6})
    got = await take(sub, 3)
    assert [(d.subject, d.data["n"]) for d in got] == [
        ("events:order.placed", 1),
        ("topic:alerts.disk.full", 3),
        ("events:order.shipped", 6),
    ]
    assert [d.sequence for d in got] == sorted(d.sequence for d in got)
    assert all(d.delivery_attempt == 1 for d in got)


async def test_a_pattern_without_namespace_sees_engine_events_only(stores: Stores) -> None:
    engine = await stores.engine()
    sub = await engine.subscribe(SubscribeSpec(patterns=(">",)))
    await stores.append("events:a", {})
    await stores.append("topic:a", {})
    await stores.append("system.run.r1.step.charge:1.completed", {})
    [only] = await take(sub, 1)
    assert only.subject == "system.run.r1.step.charge:1.completed"


async def test_filter_delivers_only_matching_events_mixing_ints_and_doubles(stores: Stores) -> None:
    engine = await stores.engine()
    sub = await engine.subscribe(SubscribeSpec(patterns=("events:order.*",), filter="data.total > 100"))
    for total in (50, 150, 100, 100.5, "lots"):
        await stores.append("events:order.placed", {"total": total})
    await stores.append("events:order.placed", {"other": 1})  # missing field: no match, no error
    await stores.append("events:order.placed", {"total": 101})
    got = await take(sub, 3)
    assert [d.data["total"] for d in got] == [150, 100.5, 101]


async def test_filter_sees_subject_name_namespace_metadata_timestamp_and_event(stores: Stores) -> None:
    engine = await stores.engine()
    expression = (
        "namespace == 'topic' && name.startsWith('chat.') && subject == 'topic:' + name"
        " && metadata.region == 'eu' && event.data.ok && timestamp > timestamp('2020-01-01T00:00:00Z')"
    )
    sub = await engine.subscribe(SubscribeSpec(patterns=("topic:>",), filter=expression))
    await stores.append("topic:chat.room1", {"ok": True}, region="us")
    await stores.append("topic:other", {"ok": True}, region="eu")
    await stores.append("topic:chat.room2", {"ok": False}, region="eu")
    await stores.append("topic:chat.room3", {"ok": True}, region="eu")
    [match] = await take(sub, 1)
    assert match.subject == "topic:chat.room3"
    assert match.metadata == {"region": "eu"}


async def test_replay_gives_the_last_n_matching_messages_then_live_ones(stores: Stores) -> None:
    engine = await stores.engine()
    for i in range(30):
        await stores.append("topic:a" if i % 2 else "topic:b", {"i": i})
    sub = await engine.subscribe(SubscribeSpec(patterns=("topic:a",), replay=5))
    await stores.append("topic:a", {"i": 100})
    got = await take(sub, 6)
    assert [d.data["i"] for d in got] == [21, 23, 25, 27, 29, 100]


async def test_replay_of_more_than_there_is_gives_everything_there_is(stores: Stores) -> None:
    engine = await stores.engine()
    await stores.append("topic:x", {"i": 1})
    await stores.append("topic:y", {"i": 2})
    sub = await engine.subscribe(SubscribeSpec(patterns=("topic:x",), replay=1000))
    [first] = await take(sub, 1)
    assert first.data == {"i": 1}
    await nothing_more(sub, within=0.2)


async def test_start_after_sequence_resumes_exactly(stores: Stores) -> None:
    engine = await stores.engine()
    sequences = await stores.append_many("topic:r", [{"i": i} for i in range(10)])
    sub = await engine.subscribe(
        SubscribeSpec(patterns=("topic:r",), start_after_sequence=sequences[6], replay=3)
    )
    assert sub.start_after_sequence == sequences[6]
    got = await take(sub, 3)
    assert [d.sequence for d in got] == sequences[7:]
    await stores.append("topic:r", {"i": 10})
    [live] = await take(sub, 1)
    assert live.data == {"i": 10}


async def test_start_after_zero_delivers_everything_retained(stores: Stores) -> None:
    engine = await stores.engine()
    await stores.append_many("topic:z", [{"i": i} for i in range(5)])
    sub = await engine.subscribe(SubscribeSpec(patterns=("topic:z",), start_after_sequence=0))
    got = await take(sub, 5)
    assert [d.data["i"] for d in got] == [0, 1, 2, 3, 4]


async def test_catching_up_while_messages_keep_arriving_loses_and_repeats_nothing(stores: Stores) -> None:
    engine = await stores.engine()
    await stores.append_many("topic:busy", [{"i": i} for i in range(2000)])

    async def keep_appending() -> None:
        for i in range(2000, 2300):
            await stores.append("topic:busy", {"i": i})

    writer = asyncio.create_task(keep_appending())
    sub = await engine.subscribe(SubscribeSpec(patterns=("topic:busy",), start_after_sequence=0))
    got = await take(sub, 2300, within=30)
    await writer
    assert [d.data["i"] for d in got] == list(range(2300))


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (SubscribeSpec(patterns=()), "patterns"),
        (SubscribeSpec(patterns=("events:a.>.b",)), "patterns[0]"),
        (SubscribeSpec(patterns=("topic:ok", "nope:x")), "patterns[1]"),
        (SubscribeSpec(patterns=("topic:a",), filter="data.total >"), "filter"),
        (SubscribeSpec(patterns=("topic:a",), replay=1001), "replay"),
        (SubscribeSpec(patterns=("topic:a",), replay=-1), "replay"),
        (SubscribeSpec(patterns=("topic:a",), start_after_sequence=-5), "start_after_sequence"),
        (SubscribeSpec(patterns=("topic:a",), group="g", replay=3), "replay"),
        (SubscribeSpec(patterns=("topic:a",), group="bad name"), "group"),
    ],
)
async def test_bad_requests_are_invalid_argument_naming_the_field(
    stores: Stores, spec: SubscribeSpec, field: str
) -> None:
    engine = await stores.engine()
    with pytest.raises(ServiceError) as caught:
        await engine.subscribe(spec)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    assert caught.value.message.startswith(f"{field}:")


async def test_a_slow_subscriber_is_dropped_with_a_resume_point_and_others_carry_on(stores: Stores) -> None:
    engine = await stores.engine(buffer_size=10)
    slow = await engine.subscribe(SubscribeSpec(patterns=("topic:flood",)))
    fast = await engine.subscribe(SubscribeSpec(patterns=("topic:flood",)))
    await stores.append("topic:flood", {"i": -1})
    [first] = await take(slow, 1)  # the slow one reads one message, then stops reading

    async def drain_fast() -> list[int]:
        return [d.data["i"] for d in await take(fast, 50, within=20)]

    reader = asyncio.create_task(drain_fast())
    for i in range(49):
        await stores.append("topic:flood", {"i": i})
        await asyncio.sleep(0)  # let the fast reader keep up, as a healthy client would
    assert await reader == [-1, *range(49)]

    with pytest.raises(ServiceError) as caught:
        await take(slow, 20)
    assert caught.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert f"start_after_sequence={first.sequence}" in caught.value.message
    await engine.unsubscribe(slow)

    resumed = await engine.subscribe(
        SubscribeSpec(patterns=("topic:flood",), start_after_sequence=first.sequence)
    )
    assert [d.data["i"] for d in await take(resumed, 49)] == list(range(49))
    assert engine.hub.subscriptions
    assert all(s.id != slow.id for s in engine.hub.subscriptions)


async def test_unsubscribing_stops_delivery_and_unregisters(stores: Stores) -> None:
    engine = await stores.engine()
    sub = await engine.subscribe(SubscribeSpec(patterns=("topic:u",)))
    await stores.append("topic:u", {})
    await take(sub, 1)
    await engine.unsubscribe(sub)
    assert engine.hub.subscriptions == []
    assert engine.subscribers("topic:u") == 0
    with pytest.raises(ServiceError) as caught:
        await sub.next()
    assert caught.value.code is ErrorCode.CANCELLED


async def test_stopping_the_engine_ends_subscriptions_with_unavailable(stores: Stores) -> None:
    engine = await stores.engine()
    sub = await engine.subscribe(SubscribeSpec(patterns=("topic:s",)))
    engine.begin_shutdown()
    with pytest.raises(ServiceError) as caught:
        await take(sub, 1)
    assert caught.value.code is ErrorCode.UNAVAILABLE
    with pytest.raises(ServiceError):
        await engine.subscribe(SubscribeSpec(patterns=("topic:s",)))
