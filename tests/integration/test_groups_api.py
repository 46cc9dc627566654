"""Consumer groups and topic statistics through the SDK and the CLI, against a live server.

The SDK's `Client` and `SyncClient` and `ironflow groups|topics ...` talk to the SubscriptionService
over real sockets, on both backends. Topic counts are folded from the stream in the background, so
every check of them polls with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import grpc
import pytest
from typer.testing import CliRunner, Result

import ironflow
from ironflow.cli import build_app
from ironflow.v1 import subscriptions_pb2, subscriptions_pb2_grpc
from tests.integration.conftest import LiveServer
from tests.support import eventually

Cli = Callable[..., Awaitable[Result]]


@pytest.fixture
async def client(live_server: LiveServer) -> AsyncIterator[ironflow.Client]:
    async with ironflow.Client(live_server.url) as client:
        yield client


@pytest.fixture
def cli(live_server: LiveServer) -> Cli:
    app = build_app()
    runner = CliRunner(env={"NO_COLOR": "1", "COLUMNS": "200"})

    # The CLI calls asyncio.run and the server lives on this test's loop: run it on a thread.
    async def invoke(*args: str) -> Result:
        return await asyncio.to_thread(runner.invoke, app, ["--server-url", live_server.url, *args])

    return invoke


# NUDGE: a server-streaming Subscribe whose client cancels (or drops the connection) stays
# registered until the server next writes to it, because the Connect server checks for the
# disconnect only between messages. Tests that check a subscriber leaves publish one more matching
# message first, so the server finds out.


@asynccontextmanager
async def subscribed(
    live_server: LiveServer, request: subscriptions_pb2.SubscribeRequest
) -> AsyncIterator[grpc.aio.UnaryStreamCall[Any, subscriptions_pb2.SubscribeResponse]]:
    """A raw Subscribe call, open once the server has answered `subscribed`; cancelled on exit."""
    async with grpc.aio.insecure_channel(live_server.url.removeprefix("http://")) as channel:
        call = subscriptions_pb2_grpc.SubscriptionServiceStub(channel).Subscribe(request)
        try:
            async with asyncio.timeout(10):
                first: subscriptions_pb2.SubscribeResponse = await call.read()  # type: ignore[assignment]
            assert first.WhichOneof("message") == "subscribed", first
            yield call
        finally:
            call.cancel()


async def next_event(
    call: grpc.aio.UnaryStreamCall[Any, subscriptions_pb2.SubscribeResponse],
) -> subscriptions_pb2.StreamMessage:
    async with asyncio.timeout(10):
        response: subscriptions_pb2.SubscribeResponse = await call.read()  # type: ignore[assignment]
    assert response.WhichOneof("message") == "event", response
    return response.event


def grid(output: str) -> dict[str, str]:
    """The key/value rows of a `get`-style grid (keys may hold single spaces; columns are 2 apart)."""
    rows = (re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in output.splitlines() if line.strip())
    return {row[0]: row[1] for row in rows if len(row) == 2}


async def refused(code: str, call: Awaitable[object]) -> ironflow.IronflowError:
    with pytest.raises(ironflow.IronflowError) as info:
        await call
    assert info.value.code == code, info.value
    return info.value


# -- consumer groups ------------------------------------------------------------------------------


async def test_group_round_trip_with_defaults_and_custom_values(client: ironflow.Client) -> None:
    plain = await client.create_consumer_group("orders", "events:order.*")
    assert plain.name == "orders"
    assert plain.pattern == "events:order.*"
    assert plain.filter == ""
    assert plain.start == "new"
    assert plain.ack_wait == timedelta(seconds=30)
    assert plain.max_deliver == 5
    assert plain.max_in_flight == 1000
    assert plain.created_at is not None
    assert plain.created_at.tzinfo is not None
    assert plain.pending == 0
    assert plain.members == 0
    assert plain.dead_letter_subject == "system.consumer.orders.dead_letter"

    custom = await client.create_consumer_group(
        "big_spenders-1",
        "events:order.placed",
        filter="data.total > 100",
        start="earliest",
        ack_wait="1m30s",
        max_deliver=3,
        max_in_flight=10,
    )
    assert (custom.filter, custom.start, custom.ack_wait) == (
        "data.total > 100",
        "earliest",
        timedelta(seconds=90),
    )
    assert (custom.max_deliver, custom.max_in_flight) == (3, 10)
    # A sequence to start after, as a number; ack_wait in plain seconds.
    from_sequence = await client.create_consumer_group("audit", "topic:>", start=42, ack_wait=0.5)
    assert from_sequence.start == "42"
    assert from_sequence.ack_wait == timedelta(milliseconds=500)

    assert await client.get_consumer_group("orders") == plain
    assert await client.get_consumer_group("big_spenders-1") == custom
    listed = await client.list_consumer_groups()
    assert [group.name for group in listed] == ["audit", "big_spenders-1", "orders"]
    assert listed == [from_sequence, custom, plain]

    await client.delete_consumer_group("orders")
    await refused("NOT_FOUND", client.get_consumer_group("orders"))
    assert [group.name for group in await client.list_consumer_groups()] == ["audit", "big_spenders-1"]
    # The name is free again, for a different group.
    again = await client.create_consumer_group("orders", "events:order.shipped")
    assert again.pattern == "events:order.shipped"


async def test_sync_client_mirrors_the_group_and_topic_calls(live_server: LiveServer) -> None:
    def work() -> None:
        with ironflow.SyncClient(live_server.url) as sync:
            group = sync.create_consumer_group("sync-group", "topic:sync.>", ack_wait="2s", max_deliver=2)
            assert group.ack_wait == timedelta(seconds=2)
            assert (
                sync.create_consumer_group("sync-group", "topic:sync.>", ack_wait=2, max_deliver=2) == group
            )
            assert sync.get_consumer_group("sync-group") == group
            assert sync.list_consumer_groups() == [group]
            assert sync.replay_dead_letters("sync-group", limit=5) == 0
            sync.delete_consumer_group("sync-group")
            assert sync.list_consumer_groups() == []
            with pytest.raises(ironflow.IronflowError) as info:
                sync.get_topic_stats("topic:sync.never")
            assert info.value.code == "NOT_FOUND"
            published = sync.publish("sync.ping", {"n": 1})
            # Counting happens in the background: poll (on this thread) until it shows.
            deadline = time.monotonic() + 10
            page = sync.list_topics("topic:sync.>", limit=10)
            while not page.topics and time.monotonic() < deadline:
                time.sleep(0.02)
                page = sync.list_topics("topic:sync.>", limit=10)
            assert [(t.subject, t.messages, t.first_sequence) for t in page] == [
                ("topic:sync.ping", 1, published.sequence)
            ]
            assert sync.get_topic_stats("topic:sync.ping") == page.topics[0]

    await asyncio.to_thread(work)


async def test_creating_the_same_group_again_returns_it(client: ironflow.Client) -> None:
    first = await client.create_consumer_group("billing", "events:invoice.>", filter="data.amount > 0")
    again = await client.create_consumer_group("billing", "events:invoice.>", filter="data.amount > 0")
    assert again == first
    # The server's defaults and the SDK's explicit ones are the same settings.
    async with grpc.aio.insecure_channel(client.server_url.removeprefix("http://")) as channel:
        stub = subscriptions_pb2_grpc.SubscriptionServiceStub(channel)
        await stub.CreateConsumerGroup(
            subscriptions_pb2.CreateConsumerGroupRequest(
                group=subscriptions_pb2.ConsumerGroup(name="bare", pattern="topic:bare")
            )
        )
    bare = await client.get_consumer_group("bare")
    assert await client.create_consumer_group("bare", "topic:bare") == bare
    assert len(await client.list_consumer_groups()) == 2


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"pattern": "events:invoice.paid"}, "pattern"),
        ({"filter": "data.amount > 10"}, "filter"),
        ({"start": "earliest"}, "start"),
        ({"ack_wait": "31s"}, "ack_wait"),
        ({"max_deliver": 6}, "max_deliver"),
        ({"max_in_flight": 999}, "max_in_flight"),
    ],
)
async def test_a_different_group_of_the_same_name_already_exists(
    client: ironflow.Client, change: dict[str, Any], named: str
) -> None:
    settings: dict[str, Any] = {"filter": "data.amount > 0"}
    original = await client.create_consumer_group("billing", "events:invoice.>", **settings)
    arguments = {"pattern": "events:invoice.>", **settings, **change}
    pattern = arguments.pop("pattern")
    error = await refused("ALREADY_EXISTS", client.create_consumer_group("billing", pattern, **arguments))
    assert named in error.message
    assert "billing" in error.message
    assert await client.get_consumer_group("billing") == original


async def test_bad_group_settings_are_refused_naming_the_field(client: ironflow.Client) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": ""}, "group.name"),
        ({"name": "has space"}, "group.name"),
        ({"name": "dots.are.tokens"}, "group.name"),
        ({"name": "x" * 65}, "group.name"),
        ({"pattern": ""}, "group.pattern"),
        ({"pattern": "events:order.>.placed"}, "group.pattern"),
        ({"pattern": "events:order..placed"}, "group.pattern"),
        ({"filter": "data.total >"}, "group.filter"),
        ({"start": "yesterday"}, "group.start"),
        ({"start": "-3"}, "group.start"),
        ({"ack_wait": "50ms"}, "group.ack_wait"),
        ({"ack_wait": "13h"}, "group.ack_wait"),
        ({"max_deliver": -1}, "group.max_deliver"),
        ({"max_deliver": 1001}, "group.max_deliver"),
        ({"max_in_flight": -1}, "group.max_in_flight"),
        ({"max_in_flight": 100_001}, "group.max_in_flight"),
    ]
    for change, field in cases:
        arguments: dict[str, Any] = {"name": "ok", "pattern": "events:order.*", **change}
        name, pattern = arguments.pop("name"), arguments.pop("pattern")
        error = await refused("INVALID_ARGUMENT", client.create_consumer_group(name, pattern, **arguments))
        assert field in error.message, (change, error.message)
    assert await client.list_consumer_groups() == []

    # A duration the SDK cannot read never reaches the server.
    with pytest.raises(ValueError, match=r"^ack_wait: "):
        await client.create_consumer_group("ok", "events:order.*", ack_wait="soon")
    with pytest.raises(ValueError, match=r"^ack_wait: "):
        await client.create_consumer_group("ok", "events:order.*", ack_wait=-1)


async def test_unknown_groups_are_not_found(client: ironflow.Client) -> None:
    for call in (
        client.get_consumer_group("nope"),
        client.delete_consumer_group("nope"),
        client.replay_dead_letters("nope"),
    ):
        error = await refused("NOT_FOUND", call)
        assert "nope" in error.message
    await refused("INVALID_ARGUMENT", client.get_consumer_group("no such name"))
    await refused("INVALID_ARGUMENT", client.delete_consumer_group(""))
    await client.create_consumer_group("gone", "topic:x")
    await client.delete_consumer_group("gone")
    await refused("NOT_FOUND", client.delete_consumer_group("gone"))


async def test_members_and_pending_show_on_the_group(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    await client.create_consumer_group("workers", "topic:jobs.>", ack_wait="30s")
    member = subscriptions_pb2.SubscribeRequest(group="workers", ack=subscriptions_pb2.ACK_MODE_MANUAL)
    async with subscribed(live_server, member) as call:

        async def one_member() -> bool:
            return (await client.get_consumer_group("workers")).members == 1

        await eventually(one_member, what="the member to count")
        published = await client.publish("jobs.resize", {"id": 1})
        delivered = await next_event(call)
        assert delivered.event_id == published.event_id

        async def one_pending() -> bool:
            return (await client.get_consumer_group("workers")).pending == 1

        await eventually(one_pending, what="the unacked message to count as pending")
        assert [g.members for g in await client.list_consumer_groups()] == [1]


async def test_dead_letters_are_replayed(live_server: LiveServer, client: ironflow.Client) -> None:
    group = await client.create_consumer_group("flaky", "topic:flaky.>", ack_wait="100ms", max_deliver=1)
    assert await client.replay_dead_letters("flaky") == 0
    watch = subscriptions_pb2.SubscribeRequest(patterns=[group.dead_letter_subject])
    member = subscriptions_pb2.SubscribeRequest(group="flaky", ack=subscriptions_pb2.ACK_MODE_MANUAL)
    async with subscribed(live_server, watch) as dead_letters, subscribed(live_server, member) as call:
        sent = [await client.publish("flaky.job", {"n": n}) for n in range(2)]
        # Never acked: each is delivered once, then dead-lettered after ack_wait.
        first_deliveries = {(await next_event(call)).event_id for _ in sent}
        assert first_deliveries == {p.event_id for p in sent}
        announced = [await next_event(dead_letters) for _ in sent]
        assert {a.data["event_id"] for a in announced} == {p.event_id for p in sent}
        assert all(a.subject == "system.consumer.flaky.dead_letter" for a in announced)

        assert await client.replay_dead_letters("flaky", limit=1) == 1
        assert await client.replay_dead_letters("flaky") == 1
        assert await client.replay_dead_letters("flaky") == 0
        replayed = {(await next_event(call)).event_id for _ in sent}
        assert replayed == {p.event_id for p in sent}


# -- topics -------------------------------------------------------------------------------------


async def published_topics(client: ironflow.Client) -> dict[str, Any]:
    """Three messages on one topic, one on another, two emitted events; waits until all are counted."""
    emails = [await client.publish("notifications.email", {"n": n}) for n in range(3)]
    sms = await client.publish("notifications.sms", {"n": 0})
    events = [await client.emit("order.placed", {"n": n}) for n in range(2)]

    async def counted() -> ironflow.TopicPage | None:
        page = await client.list_topics()
        counts = {topic.subject: topic.messages for topic in page}
        expected = {"events:order.placed": 2, "topic:notifications.email": 3, "topic:notifications.sms": 1}
        return page if counts == expected else None

    page = await eventually(counted, what="the topic counts")
    return {"emails": emails, "sms": sms, "events": events, "page": page}


async def test_topics_are_listed_with_counts_and_sequences(client: ironflow.Client) -> None:
    sent = await published_topics(client)
    page: ironflow.TopicPage = sent["page"]
    assert [topic.subject for topic in page] == [
        "events:order.placed",
        "topic:notifications.email",
        "topic:notifications.sms",
    ]
    assert page.next_cursor == ""
    orders, email, sms = page.topics
    assert email.first_sequence == sent["emails"][0].sequence
    assert email.last_sequence == sent["emails"][-1].sequence
    assert email.first_sequence < email.last_sequence
    assert sms.first_sequence == sms.last_sequence == sent["sms"].sequence
    assert email.last_sequence < sms.first_sequence < orders.first_sequence < orders.last_sequence
    for topic in page:
        assert topic.first_message_at is not None
        assert topic.last_message_at is not None
        assert topic.first_message_at <= topic.last_message_at
        assert topic.subscribers == 0

    # Stats of one subject agree with the list.
    assert await client.get_topic_stats("topic:notifications.email") == email
    assert await client.get_topic_stats("events:order.placed") == orders


async def test_topic_patterns_narrow_the_list(client: ironflow.Client) -> None:
    await published_topics(client)

    async def subjects(pattern: str) -> list[str]:
        return [topic.subject for topic in await client.list_topics(pattern)]

    assert await subjects("topic:>") == ["topic:notifications.email", "topic:notifications.sms"]
    assert await subjects("topic:notifications.*") == ["topic:notifications.email", "topic:notifications.sms"]
    assert await subjects("events:>") == ["events:order.placed"]
    assert await subjects("events:order.*") == ["events:order.placed"]
    assert await subjects("topic:notifications.sms") == ["topic:notifications.sms"]
    assert await subjects("events:invoice.>") == []
    # Without a namespace a pattern means engine subjects, which are not counted.
    assert await subjects("system.>") == []

    error = await refused("INVALID_ARGUMENT", client.list_topics("events:order.>.x"))
    assert "pattern" in error.message
    error = await refused("INVALID_ARGUMENT", client.list_topics(limit=1001))
    assert "limit" in error.message


async def test_topics_page_with_limit_and_cursor(client: ironflow.Client) -> None:
    sent = await published_topics(client)
    every = [topic.subject for topic in sent["page"]]

    first = await client.list_topics(limit=1)
    assert [topic.subject for topic in first] == every[:1]
    assert first.next_cursor
    seen = list(every[:1])
    cursor = first.next_cursor
    for _ in range(10):
        page = await client.list_topics(limit=1, cursor=cursor)
        seen += [topic.subject for topic in page]
        cursor = page.next_cursor
        if not cursor:
            break
    assert seen == every

    two = await client.list_topics(limit=2)
    assert [topic.subject for topic in two] == every[:2]
    rest = await client.list_topics(limit=2, cursor=two.next_cursor)
    assert [topic.subject for topic in rest] == every[2:]
    assert rest.next_cursor == ""

    narrowed = await client.list_topics("topic:>", limit=1)
    assert [topic.subject for topic in narrowed] == ["topic:notifications.email"]
    following = await client.list_topics("topic:>", limit=1, cursor=narrowed.next_cursor)
    assert [topic.subject for topic in following] == ["topic:notifications.sms"]


async def test_topic_stats_refuses_unknown_and_engine_subjects(client: ironflow.Client) -> None:
    error = await refused("NOT_FOUND", client.get_topic_stats("topic:never.used"))
    assert "topic:never.used" in error.message
    await refused("NOT_FOUND", client.get_topic_stats("events:never.emitted"))
    for subject in ("system.run.run_123.created", "", "not-a-subject:x"):
        error = await refused("INVALID_ARGUMENT", client.get_topic_stats(subject))
        assert "subject" in error.message


async def test_subscribers_are_counted_per_subject(live_server: LiveServer, client: ironflow.Client) -> None:
    await published_topics(client)
    listen = subscriptions_pb2.SubscribeRequest(patterns=["topic:notifications.>"])
    async with subscribed(live_server, listen):

        async def one_subscriber() -> bool:
            return (await client.get_topic_stats("topic:notifications.email")).subscribers == 1

        await eventually(one_subscriber, what="the subscription to count")
        assert (await client.get_topic_stats("events:order.placed")).subscribers == 0
        page = await client.list_topics()
        assert {topic.subject: topic.subscribers for topic in page} == {
            "events:order.placed": 0,
            "topic:notifications.email": 1,
            "topic:notifications.sms": 1,
        }

    await client.publish("notifications.nudge", {})  # see NUDGE

    async def none_left() -> bool:
        return (await client.get_topic_stats("topic:notifications.email")).subscribers == 0

    await eventually(none_left, what="the subscription to end")


# -- the CLI ------------------------------------------------------------------------------------


async def test_groups_cli_create_list_get_delete(cli: Cli) -> None:
    result = await cli(
        "groups", "create", "orders", "--pattern", "events:order.*", "--filter", "data.total > 100",
        "--start", "earliest", "--ack-wait", "1m", "--max-deliver", "3", "--max-in-flight", "50", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)
    assert created["name"] == "orders"
    assert created["pattern"] == "events:order.*"
    assert created["filter"] == "data.total > 100"
    assert created["start"] == "earliest"
    assert created["ack_wait"] == 60.0
    assert (created["max_deliver"], created["max_in_flight"]) == (3, 50)
    assert (created["pending"], created["members"]) == (0, 0)
    assert created["dead_letter_subject"] == "system.consumer.orders.dead_letter"
    assert created["created_at"].endswith("Z")

    # The same again: no change. Defaults for another; human output shows the settings.
    result = await cli(
        "--json", "groups", "create", "orders", "--pattern", "events:order.*", "--filter",
        "data.total > 100", "--start", "earliest", "--ack-wait", "60s", "--max-deliver", "3",
        "--max-in-flight", "50",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == created
    result = await cli("groups", "create", "emails", "--pattern", "topic:email.>")
    assert result.exit_code == 0, result.output
    shown = grid(result.stdout)
    assert shown["group"] == "emails"
    assert shown["pattern"] == "topic:email.>"
    assert shown["filter"] == "-"
    assert shown["start"] == "new"
    assert shown["ack wait"] == "30s"
    assert shown["max deliver"] == "5"
    assert shown["max in flight"] == "1000"

    result = await cli("groups", "list", "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [group["name"] for group in listed] == ["emails", "orders"]
    assert listed[1] == created

    result = await cli("groups", "list")
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "pattern" in line)
    for column in ("name", "filter", "start", "ack wait", "max deliver", "pending", "members"):
        assert column in header
    rows = [
        line for line in result.stdout.splitlines() if "events:order.*" in line or "topic:email.>" in line
    ]
    assert len(rows) == 2
    assert "emails" in rows[0]
    assert "orders" in rows[1]
    assert "1m" in rows[1]

    result = await cli("groups", "get", "orders", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == created
    result = await cli("groups", "get", "orders")
    assert result.exit_code == 0, result.output
    assert "data.total > 100" in result.stdout
    assert "system.consumer.orders.dead_letter" in result.stdout

    result = await cli("groups", "replay-dead-letters", "orders", "--limit", "10", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"group": "orders", "replayed": 0}
    result = await cli("groups", "replay-dead-letters", "orders")
    assert result.exit_code == 0, result.output
    assert "replayed 0" in result.stdout

    result = await cli("groups", "delete", "orders", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"name": "orders", "deleted": True}
    result = await cli("groups", "delete", "emails")
    assert result.exit_code == 0, result.output
    assert "emails deleted" in result.stdout
    result = await cli("groups", "list", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []
    result = await cli("groups", "list")
    assert result.exit_code == 0, result.output
    assert "no consumer groups" in result.stdout


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["groups", "get", "missing"], "NOT_FOUND"),
        (["groups", "delete", "missing"], "NOT_FOUND"),
        (["groups", "replay-dead-letters", "missing"], "NOT_FOUND"),
        (["groups", "create", "bad name", "--pattern", "topic:x"], "group.name"),
        (["groups", "create", "g", "--pattern", "events:a.>.b"], "group.pattern"),
        (["groups", "create", "g", "--pattern", "topic:x", "--ack-wait", "10ms"], "group.ack_wait"),
        (["topics", "stats", "topic:never.used"], "NOT_FOUND"),
        (["topics", "stats", "system.run.run_1.created"], "INVALID_ARGUMENT"),
        (["topics", "list", "events:a.>.b"], "INVALID_ARGUMENT"),
    ],
)
async def test_groups_and_topics_cli_errors_exit_one(cli: Cli, args: list[str], code: str) -> None:
    result = await cli(*args)
    assert result.exit_code == 1, result.output
    assert code in result.stderr
    assert result.stdout == ""


async def test_groups_cli_refuses_bad_usage_before_calling(cli: Cli) -> None:
    result = await cli("groups", "create", "g", "--pattern", "topic:x", "--ack-wait", "soon")
    assert result.exit_code == 2
    assert "not a duration" in result.stderr
    result = await cli("groups", "create", "g")
    assert result.exit_code == 2
    assert "--pattern" in result.stderr
    result = await cli("groups", "create", "g", "--pattern", "topic:x", "--max-deliver", "0")
    assert result.exit_code == 2


async def test_topics_cli_list_and_stats(cli: Cli, client: ironflow.Client) -> None:
    sent = await published_topics(client)
    page: ironflow.TopicPage = sent["page"]

    result = await cli("topics", "list", "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert listed["next_cursor"] == ""
    assert [(t["subject"], t["messages"]) for t in listed["topics"]] == [
        (t.subject, t.messages) for t in page
    ]
    assert listed["topics"][1]["first_sequence"] == sent["emails"][0].sequence
    assert listed["topics"][1]["last_message_at"].endswith("Z")

    result = await cli("--json", "topics", "list", "topic:>", "--limit", "1")
    assert result.exit_code == 0, result.output
    first = json.loads(result.stdout)
    assert [t["subject"] for t in first["topics"]] == ["topic:notifications.email"]
    assert first["next_cursor"]

    result = await cli("topics", "list", "topic:>", "--limit", "1")
    assert result.exit_code == 0, result.output
    assert f"more: --cursor {first['next_cursor']}" in result.stdout

    result = await cli("topics", "list")
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "subject" in line)
    for column in ("messages", "first seq", "last seq", "subscribers"):
        assert column in header
    row = next(line for line in result.stdout.splitlines() if "topic:notifications.email" in line)
    cells = [cell.strip() for cell in row.split("│") if cell.strip()]
    assert cells[:4] == [
        "topic:notifications.email",
        "3",
        str(sent["emails"][0].sequence),
        str(sent["emails"][-1].sequence),
    ]
    assert cells[-1] == "0"

    result = await cli("topics", "stats", "events:order.placed", "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["subject"] == "events:order.placed"
    assert stats["messages"] == 2
    assert stats["subscribers"] == 0

    result = await cli("topics", "stats", "topic:notifications.sms")
    assert result.exit_code == 0, result.output
    shown = grid(result.stdout)
    assert shown["subject"] == "topic:notifications.sms"
    assert shown["messages"] == "1"
    assert shown["first sequence"] == shown["last sequence"] == str(sent["sms"].sequence)
    assert shown["subscribers"] == "0"
