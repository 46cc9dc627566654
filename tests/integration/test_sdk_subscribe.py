"""`ironflow.subscribe(...)` against a live server over real sockets, on both backends.

Delivery, replay, resuming after a sequence, filters, manual acks, consumer groups, the client-side
and server-side refusals, and reconnecting across a server restart without missing or repeating a
message the stream still holds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import ironflow
from ironflow._subscribe import backoff
from ironflow.services.core.errors import ErrorCode, ServiceError
from ironflow.services.server._embedded import EmbeddedServer
from ironflow.v1 import subscriptions_pb2
from tests.conftest import unique_name
from tests.integration.conftest import LiveServer, running_server, server_settings
from tests.support import eventually, free_port

WAIT = 15.0


@pytest.fixture
async def client(live_server: LiveServer) -> AsyncIterator[ironflow.Client]:
    async with ironflow.Client(server_url=live_server.url) as client:
        yield client


async def take(sub: ironflow.Subscription, count: int, *, within: float = WAIT) -> list[ironflow.Message]:
    """The next `count` messages, failing if they do not all arrive within `within` seconds."""
    got: list[ironflow.Message] = []
    async with asyncio.timeout(within):
        async for message in sub:
            got.append(message)
            if len(got) == count:
                break
    return got


async def nothing_more(sub: ironflow.Subscription, marker: Any, client: ironflow.Client, topic: str) -> None:
    """Publish a marker and check it is the very next message (so nothing else was pending)."""
    await client.publish(topic, {"marker": marker})
    [message] = await take(sub, 1)
    assert message.data == {"marker": marker}


async def test_live_messages_arrive_with_their_fields(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    topic = unique_name("orders")
    async with ironflow.subscribe(f"topic:{topic}", server_url=live_server.url) as sub:
        assert sub.subscription_id
        published = await client.publish(topic, {"n": 1, "total": 12.5, "tags": ["a"]}, metadata={"k": "v"})
        [message] = await take(sub, 1)
    assert message.subject == f"topic:{topic}"
    assert message.namespace == "topic"
    assert message.name == topic
    assert message.event_id == published.event_id
    assert message.sequence == published.sequence
    assert message.delivery_attempt == 1
    assert message.timestamp is not None
    assert message.timestamp.tzinfo is not None
    assert message.data == {"n": 1, "total": 12.5, "tags": ["a"]}
    assert isinstance(message.data["n"], int)
    assert message.metadata == {"k": "v"}


async def test_several_patterns_and_namespaces(live_server: LiveServer, client: ironflow.Client) -> None:
    topic, event = unique_name("t"), unique_name("e")
    async with ironflow.subscribe(f"topic:{topic}.*", [f"events:{event}"], server_url=live_server.url) as sub:
        await client.publish(f"{topic}.a", {"i": 1})
        await client.publish(f"{topic}.a.deeper", {"i": 2})  # `*` is one token: not matched
        await client.emit(event, {"i": 3})
        got = await take(sub, 2)
    assert [(m.subject, m.data["i"]) for m in got] == [(f"topic:{topic}.a", 1), (f"events:{event}", 3)]
    assert got[1].namespace == "events"


async def test_replay_delivers_the_last_n_matching_then_live(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    topic = unique_name("replay")
    sequences = [(await client.publish(topic, {"i": i})).sequence for i in range(15)]
    await client.publish(unique_name("other"), {"i": -1})  # not matching: not counted
    async with ironflow.subscribe(f"topic:{topic}", server_url=live_server.url, replay=10) as sub:
        replayed = await take(sub, 10)
        await client.publish(topic, {"i": 15})
        [live] = await take(sub, 1)
    assert [m.data["i"] for m in replayed] == list(range(5, 15))
    assert [m.sequence for m in replayed] == sequences[5:]
    assert live.data["i"] == 15


async def test_start_after_sequence_resumes_exactly(live_server: LiveServer, client: ironflow.Client) -> None:
    topic = unique_name("resume")
    sequences = [(await client.publish(topic, {"i": i})).sequence for i in range(6)]
    async with ironflow.subscribe(
        f"topic:{topic}", server_url=live_server.url, start_after_sequence=sequences[2], replay=1
    ) as sub:
        got = await take(sub, 3)
        assert sub.position == sequences[5]
    assert [m.data["i"] for m in got] == [3, 4, 5]


async def test_filter_selects_by_data(live_server: LiveServer, client: ironflow.Client) -> None:
    event = unique_name("order")
    async with ironflow.subscribe(
        f"events:{event}", server_url=live_server.url, filter="data.total > 100"
    ) as sub:
        for total in (50, 150, 100, 101):
            await client.emit(event, {"total": total})
        got = await take(sub, 2)
    assert [m.data["total"] for m in got] == [150, 101]


async def test_manual_nak_redelivers_and_ack_and_term_settle(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    topic = unique_name("manual")
    async with ironflow.subscribe(f"topic:{topic}", server_url=live_server.url, ack="manual") as sub:
        for i in range(3):
            await client.publish(topic, {"i": i})
        first = await take(sub, 3)
        assert [(m.data["i"], m.delivery_attempt) for m in first] == [(0, 1), (1, 1), (2, 1)]
        await first[0].ack()
        await first[1].nak(delay="200ms")
        await first[2].term()
        [again] = await take(sub, 1)
        assert (again.data["i"], again.delivery_attempt) == (1, 2)
        await again.in_progress()
        await again.nak()  # at once
        [third] = await take(sub, 1)
        assert (third.data["i"], third.delivery_attempt) == (1, 3)
        await third.ack()
        # The acked and termed messages do not come back: the next message is a new one.
        await nothing_more(sub, "end", client, topic)


async def test_settling_twice_or_in_auto_mode_is_refused(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    topic = unique_name("refused")
    async with ironflow.subscribe(f"topic:{topic}", server_url=live_server.url, ack="manual") as sub:
        await client.publish(topic, {})
        [message] = await take(sub, 1)
        await message.ack()
        with pytest.raises(ironflow.IronflowError, match="already settled") as caught:
            await message.ack()
        assert caught.value.code == "FAILED_PRECONDITION"
        with pytest.raises(ironflow.IronflowError, match="delay"):
            await message.nak(delay="soon")
    async with ironflow.subscribe(f"topic:{topic}", server_url=live_server.url) as sub:
        await client.publish(topic, {})
        [message] = await take(sub, 1)
        with pytest.raises(ironflow.IronflowError, match="ack='manual'") as caught:
            await message.ack()
        assert caught.value.code == "FAILED_PRECONDITION"


async def test_an_ack_the_server_refuses_is_raised_by_the_next_ack(
    live_server: LiveServer, client: ironflow.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Acks are fire-and-forget; the server reports only failures (`ack_failed`), which are logged
    and raised from the next ack call, whose own command has been sent."""
    topic = unique_name("acks")
    async with ironflow.subscribe(f"topic:{topic}", server_url=live_server.url, ack="manual") as sub:
        await sub._send(
            "evt_unknown", subscriptions_pb2.ACK_ACTION_ACK, None
        )  # the server holds no such message
        await client.publish(topic, {"i": 1})
        [message] = await take(sub, 1)
        with pytest.raises(ironflow.IronflowError, match="earlier ack of message evt_unknown") as caught:
            await message.ack()
        assert caught.value.code == "NOT_FOUND"
        await nothing_more(sub, "end", client, topic)  # and the subscription carries on
    assert "ack of message evt_unknown failed" in caplog.text


async def test_group_members_split_the_messages_without_loss_or_duplicates(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    topic, group = unique_name("work"), unique_name("workers")
    total = 1000
    received: dict[str, list[int]] = {"a": [], "b": []}

    async def consume(sub: ironflow.Subscription, into: list[int]) -> None:
        async for message in sub:
            into.append(message.data["i"])

    async with (
        ironflow.subscribe(f"topic:{topic}", server_url=live_server.url, group=group) as a,
        ironflow.subscribe(server_url=live_server.url, group=group) as b,
    ):
        consumers = [
            asyncio.create_task(consume(a, received["a"])),
            asyncio.create_task(consume(b, received["b"])),
        ]
        try:
            for i in range(total):
                await client.publish(topic, {"i": i})

            async def all_in() -> bool:
                return len(received["a"]) + len(received["b"]) >= total

            await eventually(all_in, within=60, what=f"{total} messages to reach the group")
            await nothing_more_in_group(client, topic, received)
        finally:
            for consumer in consumers:
                consumer.cancel()
            await asyncio.gather(*consumers, return_exceptions=True)
    everything = received["a"] + received["b"]
    assert sorted(everything) == list(range(total)), "every message exactly once"
    assert received["a"], "both members took a share"
    assert received["b"], "both members took a share"


async def nothing_more_in_group(client: ironflow.Client, topic: str, received: dict[str, list[int]]) -> None:
    """A last marker reaches one member; by then any stray duplicate would have arrived too."""
    await client.publish(topic, {"i": -1})

    async def marker_in() -> bool:
        return -1 in received["a"] + received["b"]

    await eventually(marker_in, within=WAIT, what="the marker")
    for share in received.values():
        if -1 in share:
            share.remove(-1)


async def test_client_side_checks_fail_before_connecting() -> None:
    unreachable = "http://127.0.0.1:9"  # nothing is contacted: these fail on the arguments
    cases: list[tuple[dict[str, Any], tuple[Any, ...], str]] = [
        ({"ack": "sometimes"}, ("system.>",), "ack"),
        ({"replay": 1001}, ("system.>",), "replay"),
        ({"replay": -1}, ("system.>",), "replay"),
        ({"start_after_sequence": -5}, ("system.>",), "start_after_sequence"),
        ({}, (), "patterns"),
        ({}, ("",), r"patterns\[0\]"),
        ({}, (["system.>", ""],), r"patterns\[1\]"),
        ({"group": "g", "replay": 3}, (), "replay"),
    ]
    for options, patterns, field in cases:
        with pytest.raises(ironflow.IronflowError, match=f"^INVALID_ARGUMENT: {field}") as caught:
            ironflow.subscribe(*patterns, server_url=unreachable, **options)
        assert caught.value.code == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("patterns", "options", "field"),
    [
        (("events:order.>.bad",), {}, "patterns"),
        (("nope:order.*",), {}, "patterns"),
        (("events:order.*",), {"filter": "data.total >"}, "filter"),
    ],
)
async def test_server_refusals_are_raised_on_enter(
    live_server: LiveServer, patterns: tuple[str, ...], options: dict[str, Any], field: str
) -> None:
    with pytest.raises(ironflow.IronflowError) as caught:
        async with (
            asyncio.timeout(WAIT),
            ironflow.subscribe(*patterns, server_url=live_server.url, **options),
        ):
            pytest.fail("entered a subscription the server should refuse")
    assert caught.value.code == "INVALID_ARGUMENT"
    assert field in caught.value.message


async def test_an_unreachable_server_is_reported_on_enter() -> None:
    with pytest.raises(ironflow.IronflowError) as caught:
        async with (
            asyncio.timeout(WAIT),
            ironflow.subscribe("system.>", server_url=f"http://127.0.0.1:{free_port()}"),
        ):
            pytest.fail("connected to nothing")
    assert caught.value.code == "UNAVAILABLE"


def test_backoff_doubles_from_a_tenth_of_a_second_to_five_with_jitter() -> None:
    for attempt, ceiling in [(0, 0.1), (1, 0.2), (2, 0.4), (5, 3.2), (6, 5.0), (50, 5.0)]:
        delays = [backoff(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


# -- reconnecting --------------------------------------------------------------------------------


class Collector:
    """Reads a subscription in the background, keeping every message's `i`.

    In manual mode it acks each message, except (once) those whose `i` is in `hold`, kept in `held`.
    """

    def __init__(self, sub: ironflow.Subscription, *, hold: frozenset[int] = frozenset()) -> None:
        self.sub = sub
        self.seen: list[int] = []
        self.hold = set(hold)
        self.held: list[ironflow.Message] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for message in self.sub:
            i = message.data["i"]
            self.seen.append(i)
            if self.sub.ack_mode != "manual":
                continue
            if i in self.hold:
                self.hold.discard(i)
                self.held.append(message)
            else:
                await message.ack()

    async def wait_for(self, count: int, *, within: float = WAIT) -> None:
        async def enough() -> bool:
            if self.task.done():
                self.task.result()  # raise what ended the subscription
            return len(self.seen) >= count

        await eventually(enough, within=within, what=f"{count} messages")

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.sub.close()


async def test_a_subscriber_dropped_for_falling_behind_resumes_where_it_left_off(
    live_server: LiveServer, client: ironflow.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """The server drops a live subscriber that falls behind by ending its subscription with
    RESOURCE_EXHAUSTED (and discarding what it had buffered). The SDK resumes after the last sequence
    it received, so it still sees every message exactly once, in order.

    The drop is forced here the way the hub does it: over real sockets, grpc's flow-control windows
    absorb tens of megabytes before the server's buffer fills, which makes a poor test.
    """
    topic = unique_name("slow")
    async with ironflow.subscribe(f"topic:{topic}", server_url=live_server.url) as sub:
        for i in range(100):
            await client.publish(topic, {"i": i})
        got = [message.data["i"] for message in await take(sub, 30)]
        engine = live_server.server._subscriptions
        assert engine is not None
        [live] = [one for one in engine.hub.subscriptions if one.id == sub.subscription_id]
        live.end(ServiceError(ErrorCode.RESOURCE_EXHAUSTED, "subscriber fell behind and was dropped"))
        engine.hub.remove(live.id)
        for i in range(100, 200):
            await client.publish(topic, {"i": i})
        got += [message.data["i"] for message in await take(sub, 170)]
        await nothing_more(sub, "end", client, topic)
    assert got == list(range(200))
    assert "RESOURCE_EXHAUSTED" in caplog.text


async def test_reconnects_across_a_restart_without_missing_or_repeating(tmp_path: Path) -> None:
    """Postgres + Redis keep the stream across a restart (the embedded memory stream would not).

    Two subscribers read one topic, one in auto and one in manual ack mode; the manual one leaves
    message 10 unacked. 50 messages are published and read, 50 more right before the server stops
    (some still in flight when it goes), then a new server starts on the same port and storage and
    50 more are published. Both subscribers reconnect by themselves. The auto one sees all of them
    exactly once, in order. The manual one cannot ack message 10 from the lost connection any more,
    gets it again, and sees nothing else twice.
    """
    settings = server_settings("postgres_redis", tmp_path)
    topic = unique_name("restart")
    url = f"http://127.0.0.1:{settings.port}"
    first: EmbeddedServer | None = EmbeddedServer(settings)
    assert first is not None
    await first.start()
    try:
        async with serving(first):
            await eventually(lambda: _healthy(url), what="the first server")
            async with asyncio.timeout(WAIT):
                auto = Collector(await _opened(ironflow.subscribe(f"topic:{topic}", server_url=url)))
                manual = Collector(
                    await _opened(ironflow.subscribe(f"topic:{topic}", server_url=url, ack="manual")),
                    hold=frozenset({10}),
                )
            async with ironflow.Client(server_url=url) as client:
                for i in range(50):
                    await client.publish(topic, {"i": i})
                await auto.wait_for(50)
                await manual.wait_for(50)
                for i in range(50, 100):
                    await client.publish(topic, {"i": i})
        await first.stop()
        first = None
        # The first server is gone; the subscribers keep trying the port until the second answers.
        async with running_server(settings) as live, ironflow.Client(server_url=live.url) as client:
            for i in range(100, 150):
                await client.publish(topic, {"i": i})
            await auto.wait_for(150, within=30)
            await manual.wait_for(151, within=30)
            # A last marker: anything repeated would have arrived before it.
            await client.publish(topic, {"i": 150})
            await auto.wait_for(151)
            await manual.wait_for(152)
            [stale] = manual.held
            with pytest.raises(ironflow.IronflowError, match="lost") as caught:
                await stale.ack()
            assert caught.value.code == "FAILED_PRECONDITION"
            await auto.stop()
            await manual.stop()
    finally:
        if first is not None:
            await first.stop()
    assert auto.seen == list(range(151))
    assert sorted(manual.seen) == sorted([*range(151), 10])
    assert manual.seen[:11] == list(range(11))


@contextlib.asynccontextmanager
async def serving(server: EmbeddedServer) -> AsyncIterator[None]:
    """Answer on the server's port until the block ends (`stop()` is left to the caller)."""
    shutdown = asyncio.Event()
    task = asyncio.create_task(server.serve(shutdown))
    try:
        yield
    finally:
        shutdown.set()
        await task


async def _opened(sub: ironflow.Subscription) -> ironflow.Subscription:
    await sub.open()
    return sub


async def _healthy(url: str) -> bool:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{url}/health")).status_code == 200
