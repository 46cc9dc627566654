"""Rate limit and idempotency end to end: declared with the SDK decorator, registered, shown by
GetFunction and `ironflow functions get`, and applied to emitted events (the emit response lists only
the runs that started; the skipped ones are announced on the firehose)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator

import grpc
import pytest

import ironflow
from ironflow.services.core.firehose import FirehoseMessage
from ironflow.v1 import functions_pb2, functions_pb2_grpc
from tests.conftest import unique_name
from tests.integration.conftest import LiveServer
from tests.support import eventually


async def _noop(ctx: ironflow.Context) -> None:
    return None


@pytest.fixture
async def registry(live_server: LiveServer) -> AsyncIterator[functions_pb2_grpc.RegistryServiceStub]:
    async with grpc.aio.insecure_channel(live_server.url.removeprefix("http://")) as channel:
        yield functions_pb2_grpc.RegistryServiceStub(channel)


async def test_emit_lists_only_the_runs_admission_lets_start(
    registry: functions_pb2_grpc.RegistryServiceStub, live_server: LiveServer
) -> None:
    """Two functions on one event: `once` runs once per order, `limited` twice an hour. No worker is
    needed: runs are created (queued) by the emit itself."""
    name = unique_name("order.placed")
    once = ironflow.function(id="once", triggers=[ironflow.on_event(name)], idempotency="event.data.orderId")(
        _noop
    )
    limited = ironflow.function(
        id="limited",
        triggers=[ironflow.on_event(name)],
        rate_limit=ironflow.RateLimit(limit=2, period="1h"),
    )(_noop)
    await registry.RegisterFunctions(
        functions_pb2.RegisterFunctionsRequest(functions=[once.definition(), limited.definition()])
    )

    async with ironflow.Client(live_server.url) as client:

        async def started_by(data: dict[str, str]) -> tuple[str, list[str]]:
            result = await client.emit(name, data)
            functions = [(await client.get_run(run_id)).function_id for run_id in result.run_ids]
            return result.event_id, sorted(functions)

        _, first = await started_by({"orderId": "a"})
        repeat_id, repeat = await started_by({"orderId": "a"})
        other_id, other = await started_by({"orderId": "b"})
        assert first == ["limited", "once"]
        assert repeat == ["limited"]  # order a ran already
        assert other == ["once"]  # two runs of `limited` this hour already

        shown = await client.get_function("once")
        assert shown.definition["idempotency"] == {"key": "event.data.orderId", "window": "86400s"}
        shown = await client.get_function("limited")
        assert shown.definition["rate_limit"] == {"limit": 2, "period": "3600s"}

    stream = await live_server.stream()

    async def skipped() -> dict[str, tuple[str, str]]:
        entries = await stream.read(live_server.firehose, after="0-0", count=10_000)
        messages = [FirehoseMessage.decode(entry.fields) for entry in entries]
        found = {
            m.data["event_id"]: (m.data["function_id"], m.data["reason"])
            for m in messages
            if m.subject.startswith("system.function.") and m.subject.endswith(".skipped")
        }
        return found if len(found) == 2 else {}

    try:
        assert await eventually(skipped, what="the skipped events on the firehose") == {
            repeat_id: ("once", "idempotent"),
            other_id: ("limited", "rate_limited"),
        }
    finally:
        if stream is not live_server.server._stream:
            await stream.close()


async def test_functions_get_shows_the_controls(
    registry: functions_pb2_grpc.RegistryServiceStub, live_server: LiveServer
) -> None:
    """`ironflow functions get` prints the rate limit and idempotency as registered (window made
    explicit)."""
    handler = ironflow.function(
        id="guarded",
        triggers=[ironflow.on_event("order.placed")],
        rate_limit=ironflow.RateLimit(limit=10, period="1m", key="event.data.userId"),
        idempotency=ironflow.Idempotency(key="event.data.orderId", window="2h"),
    )(_noop)
    await registry.RegisterFunctions(functions_pb2.RegisterFunctionsRequest(functions=[handler.definition()]))
    cli = [sys.executable, "-m", "ironflow.services.server", "--server-url", live_server.url]
    process = await asyncio.create_subprocess_exec(
        *cli, "functions", "get", "guarded", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    definition = json.loads(out)["definition"]
    assert definition["rate_limit"] == {"limit": 10, "period": "60s", "key": "event.data.userId"}
    assert definition["idempotency"] == {"key": "event.data.orderId", "window": "7200s"}
