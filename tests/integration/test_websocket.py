"""The `/ws` WebSocket endpoint over a real socket, against a live server on both backends.

Messages are published through the SDK client and read with the `websockets` client library, as a
browser or another language's client would. Answers to a socket's frames come back in the order the
frames were sent, so a deliberately bad frame works as a barrier: once its error arrives, every frame
sent before it has been handled (and would have been answered, had it failed).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

import ironflow
from tests.conftest import unique_name
from tests.integration.conftest import LiveServer, running_server, server_settings
from tests.integration.workers import running_worker, wait_for_run
from tests.support import eventually

Frame = dict[str, Any]
WITHIN = 10.0


class Socket:
    """A client socket that keeps frames it was not asked for yet, so tests can wait for one kind."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.inbox: list[Frame] = []
        self._barriers = itertools.count()

    async def send(self, **frame: Any) -> None:
        await self.ws.send(json.dumps(frame))

    async def take(self, wanted: Callable[[Frame], bool], *, within: float = WITHIN) -> Frame:
        """The first frame (kept or new) for which `wanted` is true; fails after `within` seconds."""
        deadline = time.monotonic() + within
        while True:
            for index, frame in enumerate(self.inbox):
                if wanted(frame):
                    return self.inbox.pop(index)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                kept = [(f["type"], f.get("id"), f.get("code")) for f in self.inbox]
                raise AssertionError(f"no wanted frame within {within}s; kept {len(kept)}: {kept[-20:]}")
            try:
                raw = await asyncio.wait_for(self.ws.recv(), remaining)
            except TimeoutError:
                continue
            self.inbox.append(json.loads(raw))

    async def answer(self, request_id: str) -> Frame:
        return await self.take(lambda f: f.get("id") == request_id)

    async def subscribe(self, request_id: str, **options: Any) -> Frame:
        await self.send(type="subscribe", id=request_id, **options)
        answer = await self.answer(request_id)
        assert answer["type"] == "subscribed", answer
        return answer

    async def events(self, subscription_id: str, count: int, *, within: float = WITHIN) -> list[Frame]:
        return [
            await self.take(
                lambda f: f["type"] == "event" and f["subscription_id"] == subscription_id, within=within
            )
            for _ in range(count)
        ]

    async def barrier(self) -> None:
        """Wait until every frame sent so far has been handled."""
        request_id = f"barrier-{next(self._barriers)}"
        await self.send(type="barrier", id=request_id)
        answer = await self.answer(request_id)
        assert answer["code"] == "invalid_argument", answer

    def errors(self) -> list[Frame]:
        return [frame for frame in self.inbox if frame["type"] == "error"]


@asynccontextmanager
async def websocket(server: LiveServer) -> AsyncIterator[Socket]:
    url = server.url.replace("http://", "ws://") + "/ws"
    async with connect(url, proxy=None, open_timeout=WITHIN) as ws:
        yield Socket(ws)


@pytest.fixture
async def client(live_server: LiveServer) -> AsyncIterator[ironflow.Client]:
    async with ironflow.Client(live_server.url) as client:
        yield client


async def hub_has_seen(server: LiveServer, sequence: int) -> None:
    """Wait for the server's live fan-out to reach `sequence` (replay counts back from there)."""
    engine = server.server._subscriptions
    assert engine is not None

    async def caught_up() -> bool:
        return engine.hub.position >= sequence

    await eventually(caught_up, what=f"the hub to reach sequence {sequence}")


async def test_a_subscription_gets_live_events_with_every_field(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    topic = unique_name("live")
    async with websocket(live_server) as ws:
        subscribed = await ws.subscribe("c1", patterns=[f"topic:{topic}.>"])
        assert subscribed["subscription_id"]
        assert isinstance(subscribed["start_after_sequence"], int)
        published = [await client.publish(f"{topic}.n{i}", {"i": i}) for i in range(3)]
        events = await ws.events(subscribed["subscription_id"], 3)

    assert [e["subject"] for e in events] == [f"topic:{topic}.n{i}" for i in range(3)]
    assert [e["event_id"] for e in events] == [p.event_id for p in published]
    assert [e["sequence"] for e in events] == [p.sequence for p in published]
    assert [e["data"] for e in events] == [{"i": i} for i in range(3)]
    assert all(e["delivery_attempt"] == 1 for e in events)
    assert all(e["metadata"] == {} for e in events)
    assert all(e["timestamp"].endswith("Z") for e in events)
    assert datetime.fromisoformat(events[0]["timestamp"]).utcoffset() is not None


async def test_replay_delivers_the_last_n_matching_messages_then_live_ones(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    topic = unique_name("replay")
    published = [await client.publish(f"{topic}.m", {"i": i}) for i in range(5)]
    await client.publish(f"{unique_name('other')}.m", {"ignored": True})
    await hub_has_seen(live_server, published[-1].sequence + 1)
    async with websocket(live_server) as ws:
        subscribed = await ws.subscribe("r", patterns=[f"topic:{topic}.>"], replay=3)
        sub = subscribed["subscription_id"]
        replayed = await ws.events(sub, 3)
        live = await client.publish(f"{topic}.m", {"i": 5})
        (last,) = await ws.events(sub, 1)

    assert subscribed["start_after_sequence"] == published[2].sequence - 1
    assert [e["data"]["i"] for e in replayed] == [2, 3, 4]
    assert last["sequence"] == live.sequence


async def test_start_after_sequence_resumes_after_that_message(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    topic = unique_name("resume")
    published = [await client.publish(f"{topic}.m", {"i": i}) for i in range(3)]
    async with websocket(live_server) as ws:
        subscribed = await ws.subscribe(
            "s", patterns=[f"topic:{topic}.>"], start_after_sequence=published[0].sequence
        )
        events = await ws.events(subscribed["subscription_id"], 2)

    assert subscribed["start_after_sequence"] == published[0].sequence
    assert [e["data"]["i"] for e in events] == [1, 2]


async def test_a_filter_delivers_only_matching_messages(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    topic = unique_name("orders")
    async with websocket(live_server) as ws:
        subscribed = await ws.subscribe("f", patterns=[f"topic:{topic}"], filter="data.total > 100")
        for total in (50, 150, 99, 200):
            await client.publish(topic, {"total": total})
        events = await ws.events(subscribed["subscription_id"], 2)

    # Stream order: had 50 or 99 been delivered, they would have come before 200.
    assert [e["data"]["total"] for e in events] == [150, 200]


async def test_two_subscriptions_share_one_socket(live_server: LiveServer, client: ironflow.Client) -> None:
    topic = unique_name("pair")
    async with websocket(live_server) as ws:
        everything = (await ws.subscribe("all", patterns=[f"topic:{topic}.>"]))["subscription_id"]
        only_b = (await ws.subscribe("b", patterns=[f"topic:{topic}.b"]))["subscription_id"]
        assert everything != only_b
        await client.publish(f"{topic}.a", {"n": 1})
        await client.publish(f"{topic}.b", {"n": 2})
        all_events = await ws.events(everything, 2)
        b_events = await ws.events(only_b, 1)

    assert [e["data"]["n"] for e in all_events] == [1, 2]
    assert [e["data"]["n"] for e in b_events] == [2]


async def test_manual_ack_nak_with_delay_redelivers_and_term_and_ack_settle(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    topic = unique_name("manual")
    async with websocket(live_server) as ws:
        subscribed = await ws.subscribe("m", patterns=[f"topic:{topic}"], ack="manual")
        sub = subscribed["subscription_id"]
        for name in ("acked", "termed", "naked"):
            await client.publish(topic, {"name": name})
        acked, termed, naked = await ws.events(sub, 3)
        assert [e["delivery_attempt"] for e in (acked, termed, naked)] == [1, 1, 1]

        await ws.send(type="ack", subscription_id=sub, event_id=acked["event_id"])
        await ws.send(type="term", subscription_id=sub, event_id=termed["event_id"])
        await ws.send(type="nak", subscription_id=sub, event_id=naked["event_id"], delay_ms=200)
        await ws.barrier()
        assert ws.errors() == []

        (again,) = await ws.events(sub, 1)
        assert again["event_id"] == naked["event_id"]
        assert again["delivery_attempt"] == 2
        await ws.send(type="in_progress", subscription_id=sub, event_id=again["event_id"])
        await ws.send(type="ack", subscription_id=sub, event_id=again["event_id"])
        await ws.barrier()
        assert ws.errors() == []

        # Settled messages are no longer held: settling them again names them as not found.
        for kind, event in (("ack", acked), ("term", termed), ("ack", again)):
            await ws.send(type=kind, id=f"again-{kind}", subscription_id=sub, event_id=event["event_id"])
            error = await ws.answer(f"again-{kind}")
            assert error["type"] == "error"
            assert error["code"] == "not_found"
            assert error["event_id"] == event["event_id"]
        assert not [f for f in ws.inbox if f["type"] == "event"]


async def test_acks_on_an_auto_ack_subscription_are_refused(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    topic = unique_name("auto")
    async with websocket(live_server) as ws:
        sub = (await ws.subscribe("a", patterns=[f"topic:{topic}"]))["subscription_id"]
        await client.publish(topic, {})
        (event,) = await ws.events(sub, 1)
        await ws.send(type="ack", id="x", subscription_id=sub, event_id=event["event_id"])
        error = await ws.answer("x")

    assert error["code"] == "failed_precondition"
    assert error["subscription_id"] == sub


async def test_a_group_shared_by_two_sockets_delivers_each_message_to_exactly_one(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    topic = unique_name("work")
    group = unique_name("workers")
    async with websocket(live_server) as first, websocket(live_server) as second:
        sub1 = (await first.subscribe("g", patterns=[f"topic:{topic}"], group=group))["subscription_id"]
        sub2 = (await second.subscribe("g", patterns=[f"topic:{topic}"], group=group))["subscription_id"]
        published = {(await client.publish(topic, {"i": i})).event_id for i in range(20)}
        seen: list[str] = []

        async def collect(ws: Socket, sub: str) -> None:
            while True:
                seen.append((await ws.events(sub, 1, within=WITHIN * 2))[0]["event_id"])

        readers = [asyncio.create_task(collect(first, sub1)), asyncio.create_task(collect(second, sub2))]
        try:

            async def all_seen() -> bool:
                assert not any(r.done() for r in readers), [r.exception() for r in readers if r.done()]
                return len(seen) >= len(published)

            await eventually(all_seen, within=WITHIN * 2, what="every message to reach one member")
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    assert sorted(seen) == sorted(published)


async def test_invalid_subscriptions_are_answered_with_an_error_naming_the_field(
    live_server: LiveServer,
) -> None:
    cases = {
        "pattern": ({"patterns": ["topic:a.>.b"]}, "patterns"),
        "namespace": ({"patterns": ["nowhere:a"]}, "patterns"),
        "filter": ({"patterns": ["topic:a"], "filter": "data.total >"}, "filter"),
        "replay": ({"patterns": ["topic:a"], "replay": 1001}, "replay"),
        "negative": ({"patterns": ["topic:a"], "start_after_sequence": -1}, "start_after_sequence"),
        "ack": ({"patterns": ["topic:a"], "ack": "sometimes"}, "ack"),
        "types": ({"patterns": "topic:a"}, "patterns"),
        "replay-type": ({"patterns": ["topic:a"], "replay": "3"}, "replay"),
        "unknown": ({"patterns": ["topic:a"], "colour": "red"}, "colour"),
    }
    async with websocket(live_server) as ws:
        for request_id, (options, field) in cases.items():
            await ws.send(type="subscribe", id=request_id, **options)
            error = await ws.answer(request_id)
            assert error["type"] == "error", (request_id, error)
            assert error["code"] == "invalid_argument", (request_id, error)
            assert error["message"].startswith((f"{field}:", f"{field}[")), (request_id, error)
            assert "subscription_id" not in error


async def test_bad_frames_get_errors_and_the_socket_stays_usable(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    topic = unique_name("still")
    async with websocket(live_server) as ws:
        for raw, field in (
            ("not json", "frame"),
            ("[1, 2]", "frame"),
            ('"subscribe"', "frame"),
            ("{}", "type"),
            (b"\xff\xfe", "frame"),
            ('{"type": 7}', "type"),
        ):
            await ws.ws.send(raw)
            error = await ws.take(lambda f: f["type"] == "error")
            assert error["code"] == "invalid_argument", (raw, error)
            assert error["message"].startswith(f"{field}:"), (raw, error)

        await ws.send(type="dance", id="d1")
        error = await ws.answer("d1")
        assert (error["code"], error["message"].split(":")[0]) == ("invalid_argument", "type")
        await ws.send(type="ack", id="a1", subscription_id=5, event_id="e")
        error = await ws.answer("a1")
        assert error["message"].startswith("subscription_id:")
        await ws.send(type="ack", id="a2", subscription_id="s", event_id="e", delay_ms=10)
        assert (await ws.answer("a2"))["message"].startswith("delay_ms:")
        await ws.send(type="nak", id="a3", subscription_id="s")
        assert (await ws.answer("a3"))["message"].startswith("event_id:")

        sub = (await ws.subscribe("ok", patterns=[f"topic:{topic}"]))["subscription_id"]
        await client.publish(topic, {"still": "here"})
        (event,) = await ws.events(sub, 1)
    assert event["data"] == {"still": "here"}


async def test_unsubscribe_stops_delivery_and_is_confirmed(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    topic = unique_name("leave")
    engine = live_server.server._subscriptions
    assert engine is not None
    async with websocket(live_server) as ws:
        leaving = (await ws.subscribe("l", patterns=[f"topic:{topic}"]))["subscription_id"]
        staying = (await ws.subscribe("s", patterns=[f"topic:{topic}"]))["subscription_id"]
        assert engine.subscribers(f"topic:{topic}") == 2

        await ws.send(type="unsubscribe", id="u", subscription_id=leaving)
        answer = await ws.answer("u")
        assert answer == {"type": "unsubscribed", "id": "u", "subscription_id": leaving}
        assert engine.subscribers(f"topic:{topic}") == 1

        await client.publish(topic, {"after": True})
        await ws.events(staying, 1)
        await ws.barrier()
        assert not [f for f in ws.inbox if f.get("subscription_id") == leaving]

        await ws.send(type="unsubscribe", id="again", subscription_id=leaving)
        assert (await ws.answer("again"))["code"] == "not_found"

    async def all_gone() -> bool:
        return engine.subscribers(f"topic:{topic}") == 0

    await eventually(all_gone, what="the closed socket's subscriptions to end")


async def test_acks_for_unknown_subscriptions_are_not_found(live_server: LiveServer) -> None:
    async with websocket(live_server) as ws:
        await ws.send(type="ack", id="k", subscription_id="sub_nope", event_id="evt_1")
        error = await ws.answer("k")
    assert error == {
        "type": "error",
        "id": "k",
        "subscription_id": "sub_nope",
        "event_id": "evt_1",
        "code": "not_found",
        "message": error["message"],
    }


async def test_plain_http_on_the_websocket_path_is_told_to_upgrade(live_server: LiveServer) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{live_server.url}/ws")
    assert response.status_code == 426
    assert response.json()["code"] == "failed_precondition"


async def test_a_slow_socket_is_dropped_alone_while_a_fast_one_keeps_up(tmp_path: Path) -> None:
    """A client that stops reading fills the socket, its connection's queue, then its subscription's
    buffer: that subscription ends with resource_exhausted (told once the client reads again), while
    another socket on the same server gets every message."""
    settings = server_settings("embedded", tmp_path).model_copy(update={"subscriber_buffer": 10})
    topic = unique_name("flood")
    payload = "x" * 16_000
    count = 400
    async with running_server(settings) as server, ironflow.Client(server.url) as client:
        url = server.url.replace("http://", "ws://") + "/ws"
        async with (
            connect(url, proxy=None, max_queue=1, compression=None) as slow_ws,
            websocket(server) as fast,
        ):
            slow = Socket(slow_ws)
            slow_sub = (await slow.subscribe("s", patterns=[f"topic:{topic}"]))["subscription_id"]
            fast_sub = (await fast.subscribe("f", patterns=[f"topic:{topic}"]))["subscription_id"]
            received: list[int] = []

            async def read_fast() -> None:
                while True:
                    received.append((await fast.events(fast_sub, 1, within=WITHIN * 3))[0]["data"]["i"])

            reader = asyncio.create_task(read_fast())
            try:
                for i in range(count):
                    await client.publish(topic, {"i": i, "pad": payload})

                async def fast_has_all() -> bool:
                    assert not reader.done(), reader
                    return len(received) == count

                await eventually(fast_has_all, within=WITHIN * 3, what="the fast socket to get everything")
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            assert received == list(range(count))

            ended = await slow.take(lambda f: f["type"] == "error", within=WITHIN * 3)
            assert ended["code"] == "resource_exhausted"
            assert ended["subscription_id"] == slow_sub
            assert "start_after_sequence=" in ended["message"]
            slow_events = [f["data"]["i"] for f in slow.inbox if f["type"] == "event"]
            assert len(slow_events) < count


@pytest.mark.parametrize("backend", ["embedded", "postgres_redis"])
async def test_server_shutdown_ends_subscriptions_and_closes_sockets_promptly(
    backend: str, tmp_path: Path
) -> None:
    settings = server_settings(backend, tmp_path)
    async with AsyncExitStack() as cleanup:
        serving = running_server(settings)
        server = await serving.__aenter__()
        stopped = False

        async def stop_server() -> None:
            if not stopped:
                await serving.__aexit__(None, None, None)

        cleanup.push_async_callback(stop_server)
        url = server.url.replace("http://", "ws://") + "/ws"
        busy = Socket(await cleanup.enter_async_context(connect(url, proxy=None)))
        idle = Socket(await cleanup.enter_async_context(connect(url, proxy=None)))
        sub = (await busy.subscribe("b", patterns=["topic:anything.>"]))["subscription_id"]

        started = time.monotonic()
        stopped = True
        await serving.__aexit__(None, None, None)  # with both sockets still open
        elapsed = time.monotonic() - started

        assert elapsed < settings.graceful_timeout / 2
        ended = await busy.take(lambda f: f["type"] == "error")
        assert (ended["code"], ended["subscription_id"]) == ("unavailable", sub)
        for ws in (busy, idle):
            with pytest.raises(ConnectionClosed):
                await ws.ws.recv()
            assert ws.ws.close_code == 1012


async def test_run_events_of_a_running_workflow_with_replay(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    """The acceptance case: `system.run.>` with replay 10 shows a run's past and then its progress."""
    event = unique_name("order")
    entered = asyncio.Event()
    release = asyncio.Event()

    async def gated() -> int:
        entered.set()
        await release.wait()
        return 2

    @ironflow.function(id=unique_name("orders"), triggers=[ironflow.on_event(event)])
    async def handler(ctx: ironflow.Context) -> int:
        one = await ctx.step.run("reserve", lambda: 1)
        two = await ctx.step.run("charge", gated)
        return one + two

    async with running_worker(live_server, [handler], transport="stream"):
        run_id = (await client.emit(event, {"total": 3})).run_ids[0]
        await asyncio.wait_for(entered.wait(), WITHIN)
        async with websocket(live_server) as ws:
            sub = (await ws.subscribe("runs", patterns=["system.run.>"], replay=10))["subscription_id"]
            subjects = [(await ws.events(sub, 1))[0]["subject"]]
            release.set()
            while subjects[-1] != f"system.run.{run_id}.completed":
                subjects.append((await ws.events(sub, 1))[0]["subject"])

    assert (await wait_for_run(client, run_id)).status == "completed"
    # `created` and `started` happened before the socket subscribed: replay brought them.
    assert [subject.removeprefix(f"system.run.{run_id}.") for subject in subjects] == [
        "created",
        "started",
        "step.reserve.started",
        "step.reserve.completed",
        "step.charge.started",
        "step.charge.completed",
        "completed",
    ]
