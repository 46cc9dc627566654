"""Emit, publish and read events through every door: REST, gRPC (SDK), Connect, CLI and buf curl."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

import ironflow
from ironflow.services.core.firehose import FirehoseMessage
from tests.integration.conftest import LiveServer

BUF = Path(__file__).resolve().parents[2] / "node_modules" / ".bin" / "buf"

ORDER = {"orderId": "ord_123", "total": 99.99}


async def _firehose(server: LiveServer) -> list[FirehoseMessage]:
    stream = await server.stream()
    try:
        entries = await stream.read(server.firehose, after="0-0", count=10_000)
    finally:
        if stream is not server.server._stream:
            await stream.close()
    return [FirehoseMessage.decode(entry.fields) for entry in entries]


async def test_rest_emit_answers_with_the_event_id_and_the_event_is_readable_everywhere(
    live_server: LiveServer,
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        response = await http.post("/api/v1/events", json={"name": "order.placed", "data": ORDER})
        assert response.status_code == 200, response.text
        body = response.json()
        event_id = body["event_id"]
        assert event_id.startswith("evt_")
        assert body["run_ids"] == []

        fetched = (await http.get(f"/api/v1/events/{event_id}")).json()
        assert fetched["name"] == "order.placed"
        assert fetched["data"] == ORDER
        assert fetched["subject"] == "events:order.placed"

    async with ironflow.Client(live_server.url) as client:
        event = await client.get_event(event_id)
    assert (event.id, event.name, event.namespace, event.data) == (event_id, "order.placed", "events", ORDER)
    assert event.timestamp is not None
    assert event.timestamp.tzinfo is not None

    messages = await _firehose(live_server)
    assert [(m.subject, m.event_id, m.data) for m in messages] == [("events:order.placed", event_id, ORDER)]


async def test_sdk_emit_keeps_integers_and_nested_data(live_server: LiveServer) -> None:
    data = {"qty": 3, "price": 2.5, "tags": ["a", "b"], "nested": {"ok": True, "none": None}}
    async with ironflow.Client(live_server.url) as client:
        result = await client.emit("cart.updated", data, metadata={"source": "test"})
        event = await client.get_event(result.event_id)
    assert event.data == data
    assert isinstance(event.data["qty"], int)
    assert event.metadata == {"source": "test"}
    assert result.sequence > 0


async def test_repeated_idempotency_key_returns_the_original_and_streams_once(
    live_server: LiveServer,
) -> None:
    async with ironflow.Client(live_server.url) as client:
        first = await client.emit("order.placed", ORDER, idempotency_key="order-123")
        second = await client.emit("order.placed", {"different": True}, idempotency_key="order-123")
        page = await client.list_events(name="order.placed")
    assert second.event_id == first.event_id
    assert (first.duplicate, second.duplicate) == (False, True)
    assert [e.id for e in page.events] == [first.event_id]
    assert page.events[0].data == ORDER
    assert [m.event_id for m in await _firehose(live_server)] == [first.event_id]


async def test_publish_goes_to_the_topic_namespace_and_is_recorded(live_server: LiveServer) -> None:
    async with ironflow.Client(live_server.url) as client:
        published = await client.publish("notifications.email", {"to": "a@b.c"})
        topics = await client.list_events(namespace="topic")
        events = await client.list_events()
    assert published.sequence > 0
    assert [e.id for e in topics.events] == [published.event_id]
    assert topics.events[0].subject == "topic:notifications.email"
    assert events.events == []
    messages = await _firehose(live_server)
    assert [m.subject for m in messages] == ["topic:notifications.email"]


async def test_list_events_filters_by_name_and_pages_with_a_cursor(live_server: LiveServer) -> None:
    async with ironflow.Client(live_server.url) as client:
        ids = [(await client.emit("page.test", {"i": i})).event_id for i in range(5)]
        await client.emit("other.name", {})
        first = await client.list_events(name="page.test", limit=2)
        second = await client.list_events(name="page.test", limit=2, cursor=first.next_cursor)
        third = await client.list_events(name="page.test", limit=2, cursor=second.next_cursor)
        everything = await client.list_events(limit=100)
    newest_first = list(reversed(ids))
    assert [e.id for e in first.events + second.events + third.events] == newest_first
    assert third.next_cursor == ""
    assert len(everything.events) == 6

    async with httpx.AsyncClient(base_url=live_server.url) as http:
        body = (await http.get("/api/v1/events", params={"name": "page.test", "limit": 3})).json()
    assert [e["id"] for e in body["events"]] == newest_first[:3]
    assert body["next_cursor"]


async def test_get_unknown_event_is_not_found(live_server: LiveServer) -> None:
    async with ironflow.Client(live_server.url) as client:
        with pytest.raises(ironflow.IronflowError) as info:
            await client.get_event("evt_missing")
    assert info.value.code == "NOT_FOUND"
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        response = await http.get("/api/v1/events/evt_missing")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


BAD_REST_BODIES: list[tuple[str, Any, str]] = [
    ("empty name", {"name": "", "data": {}}, "name"),
    ("name with spaces", {"name": "order placed", "data": {}}, "name"),
    ("doubled dot", {"name": "a..b", "data": {}}, "name"),
    ("name over 256 bytes", {"name": "a" * 257, "data": {}}, "name"),
    ("wildcard in name", {"name": "order.*", "data": {}}, "name"),
    ("missing name", {"data": {}}, "name"),
    ("name not a string", {"name": 5, "data": {}}, "name"),
    ("data is a list", {"name": "a", "data": [1, 2]}, "data"),
    ("data is a string", {"name": "a", "data": "x"}, "data"),
    ("data is null", {"name": "a", "data": None}, "data"),
    ("unknown field", {"name": "a", "data": {}, "extra": 1}, "extra"),
    ("metadata not strings", {"name": "a", "data": {}, "metadata": {"k": 1}}, "metadata"),
    ("payload over 1 MiB", {"name": "a", "data": {"blob": "x" * (1024 * 1024)}}, "data"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_REST_BODIES, ids=[c[0] for c in BAD_REST_BODIES])
async def test_bad_rest_input_is_a_400_naming_the_field_and_stores_nothing(
    live_server: LiveServer, case: str, body: Any, field: str
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        response = await http.post("/api/v1/events", json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["code"] == "invalid_argument"
    assert error["message"].startswith(field), error["message"]
    assert await live_server.count_events() == 0
    assert await _firehose(live_server) == []


async def test_invalid_json_and_non_object_bodies_are_400(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        for raw in (b"{not json", b"[1, 2]", b"", b"\xff\xfe"):
            response = await http.post(
                "/api/v1/events", content=raw, headers={"content-type": "application/json"}
            )
            assert response.status_code == 400, raw
            assert response.json()["code"] == "invalid_argument"
            assert response.json()["message"].startswith("body")
    assert await live_server.count_events() == 0


async def test_bad_grpc_input_is_invalid_argument_and_stores_nothing(live_server: LiveServer) -> None:
    async with ironflow.Client(live_server.url) as client:
        for name in ("", "has space", "a..b", ".a", "a.", "x" * 300):
            with pytest.raises(ironflow.IronflowError) as info:
                await client.emit(name, {})
            assert info.value.code == "INVALID_ARGUMENT"
            assert info.value.message.startswith("name")
        with pytest.raises(ironflow.IronflowError) as info:
            await client.publish("topic with space", {})
        assert info.value.message.startswith("topic")
        with pytest.raises(ironflow.IronflowError) as info:
            await client.emit("big", {"blob": "x" * (1024 * 1024 + 1)})
        assert info.value.code == "INVALID_ARGUMENT"
        assert info.value.message.startswith("data")
        with pytest.raises(ironflow.IronflowError) as info:
            await client.list_events(name="bad name")
        assert info.value.code == "INVALID_ARGUMENT"
    assert await live_server.count_events() == 0
    assert await _firehose(live_server) == []


async def test_connect_json_protocol_speaks_to_ingest(live_server: LiveServer) -> None:
    """Connect's JSON mapping is what browsers and curl users send to /ironflow.v1.EventService/Emit."""
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        response = await http.post(
            "/ironflow.v1.EventService/Emit", json={"name": "order.placed", "data": ORDER}
        )
        assert response.status_code == 200, response.text
        event_id = response.json()["eventId"]
        got = await http.post("/ironflow.v1.EventService/GetEvent", json={"id": event_id})
        bad = await http.post("/ironflow.v1.EventService/Emit", json={"name": "a b"})
    assert got.json()["event"]["data"] == ORDER
    assert bad.status_code == 400
    assert bad.json()["code"] == "invalid_argument"


async def _run(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_cli_emits_and_reads_events(live_server: LiveServer) -> None:
    cli = [sys.executable, "-m", "ironflow.services.server", "--server-url", live_server.url]
    code, out, err = await _run(*cli, "emit", "order.placed", "--data", json.dumps(ORDER), "--json")
    assert code == 0, err
    event_id = json.loads(out)["event_id"]

    code, out, err = await _run(*cli, "events", "get", event_id)
    assert code == 0, err
    assert json.loads(out)["data"] == ORDER

    code, out, err = await _run(*cli, "--json", "events", "list", "--name", "order.placed")
    assert code == 0, err
    assert [e["id"] for e in json.loads(out)["events"]] == [event_id]

    code, out, err = await _run(*cli, "emit", "bad name")
    assert code == 1
    assert "INVALID_ARGUMENT" in err

    code, out, err = await _run(*cli, "emit", "x", "--data", "[1]")
    assert code == 2
    assert "JSON object" in err


async def test_buf_curl_gets_the_event_over_grpc_with_reflection(live_server: LiveServer) -> None:
    assert BUF.exists(), "the buf CLI is missing: run `npm ci` in the repository root"
    async with ironflow.Client(live_server.url) as client:
        event_id = (await client.emit("order.placed", ORDER)).event_id
    code, out, err = await _run(
        str(BUF),
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "--reflect",
        "--data",
        json.dumps({"id": event_id}),
        f"{live_server.url}/ironflow.v1.EventService/GetEvent",
    )
    assert code == 0, err
    assert json.loads(out)["event"]["data"] == ORDER


async def test_concurrent_emits_with_one_idempotency_key_store_and_stream_one_event(
    live_server: LiveServer,
) -> None:
    async with ironflow.Client(live_server.url) as client:
        results = await asyncio.gather(
            *(client.emit("order.placed", {"n": i}, idempotency_key="same-key") for i in range(10))
        )
    assert len({r.event_id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    assert await live_server.count_events() == 1
    assert [m.event_id for m in await _firehose(live_server)] == [results[0].event_id]
