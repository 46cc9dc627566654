"""Runs through the SDK: get, list (filters, pagination), steps and cancel, async and blocking clients.

With no worker connected, a run an event starts stays `queued`, which is all these tests need.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import struct_pb2

import ironflow
from ironflow._convert import from_value
from ironflow.v1 import functions_pb2, functions_pb2_grpc
from tests.conftest import unique_name
from tests.integration.conftest import LiveServer


@pytest.fixture
async def registry(live_server: LiveServer) -> AsyncIterator[functions_pb2_grpc.RegistryServiceStub]:
    async with grpc.aio.insecure_channel(live_server.url.removeprefix("http://")) as channel:
        yield functions_pb2_grpc.RegistryServiceStub(channel)


@pytest.fixture
async def client(live_server: LiveServer) -> AsyncIterator[ironflow.Client]:
    async with ironflow.Client(live_server.url) as client:
        yield client


async def register(
    registry: functions_pb2_grpc.RegistryServiceStub, *function_ids: str, event: str = "order.placed"
) -> None:
    trigger = functions_pb2.Trigger(event=functions_pb2.EventTrigger(event=event))
    definitions = [functions_pb2.FunctionDefinition(id=f, triggers=[trigger]) for f in function_ids]
    await registry.RegisterFunctions(functions_pb2.RegisterFunctionsRequest(functions=definitions))


async def test_an_emitted_event_starts_a_queued_run(
    registry: functions_pb2_grpc.RegistryServiceStub, client: ironflow.Client
) -> None:
    function_id = unique_name("fn")
    await register(registry, function_id)
    before = datetime.now(UTC)
    emitted = await client.emit("order.placed", {"orderId": "ord_1"})
    assert len(emitted.run_ids) == 1

    run = await client.get_run(emitted.run_ids[0])

    assert isinstance(run, ironflow.Run)
    assert run.id == emitted.run_ids[0]
    assert run.function_id == function_id
    assert run.function_version == 1
    assert run.event_id == emitted.event_id
    assert run.status == "queued"
    assert run.output is None
    assert run.error is None
    assert run.parent_run_id is None
    assert run.created_at is not None
    assert run.created_at.tzinfo is not None
    assert before - timedelta(seconds=5) <= run.created_at <= datetime.now(UTC) + timedelta(seconds=5)
    assert run.started_at is None
    assert run.ended_at is None


async def test_list_runs_filters_by_function_event_and_status(
    registry: functions_pb2_grpc.RegistryServiceStub, client: ironflow.Client
) -> None:
    first_fn, second_fn = unique_name("fn_a"), unique_name("fn_b")
    await register(registry, first_fn, second_fn)
    first = await client.emit("order.placed", {"n": 1})
    second = await client.emit("order.placed", {"n": 2})
    runs = {run.id: run for run in await client.list_runs()}
    assert set(runs) == {*first.run_ids, *second.run_ids}
    assert len(runs) == 4

    everything = await client.list_runs()
    assert isinstance(everything, ironflow.RunPage)
    assert len(everything) == 4
    assert everything.next_cursor == ""
    # Newest first: the second event's runs come before the first's.
    assert {run.id for run in list(everything)[:2]} == set(second.run_ids)

    by_function = await client.list_runs(function_id=first_fn)
    assert [run.function_id for run in by_function] == [first_fn, first_fn]
    assert [run.event_id for run in by_function] == [second.event_id, first.event_id]

    by_event = await client.list_runs(event_id=first.event_id)
    assert sorted(run.id for run in by_event) == sorted(first.run_ids)
    assert {run.function_id for run in by_event} == {first_fn, second_fn}

    cancelled = await client.cancel_run(first.run_ids[0])
    assert [run.id for run in await client.list_runs(status="cancelled")] == [cancelled.id]
    assert len(await client.list_runs(status="queued")) == 3
    assert len(await client.list_runs(status="failed")) == 0

    combined = await client.list_runs(function_id=cancelled.function_id, status="queued")
    expected = [r for r in second.run_ids if runs[r].function_id == cancelled.function_id]
    assert [run.id for run in combined] == expected
    assert await client.list_runs(function_id=unique_name("nobody")) == ironflow.RunPage(
        runs=[], next_cursor=""
    )


async def test_list_runs_pages_with_a_cursor(
    registry: functions_pb2_grpc.RegistryServiceStub, client: ironflow.Client
) -> None:
    # Three functions on one event: their runs share a creation time, so pages must break ties too.
    function_ids = [unique_name("fn") for _ in range(3)]
    await register(registry, *function_ids)
    emitted = [await client.emit("order.placed", {"n": n}) for n in range(3)]
    all_ids = {run_id for e in emitted for run_id in e.run_ids}
    assert len(all_ids) == 9

    seen: list[ironflow.Run] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await client.list_runs(limit=2, cursor=cursor)
        pages += 1
        assert len(page) <= 2
        seen.extend(page)
        if not page.next_cursor:
            break
        cursor = page.next_cursor
        assert pages < 10, "pagination does not end"

    assert pages == 5
    assert [run.id for run in seen] == [run.id for run in await client.list_runs(limit=100)]
    assert len({run.id for run in seen}) == 9
    assert {run.id for run in seen} == all_ids
    # Newest event first.
    assert [run.event_id for run in seen[::3]] == [e.event_id for e in reversed(emitted)]

    function_page = await client.list_runs(function_id=function_ids[0], limit=2)
    rest = await client.list_runs(function_id=function_ids[0], limit=2, cursor=function_page.next_cursor)
    assert [run.event_id for run in [*function_page, *rest]] == [e.event_id for e in reversed(emitted)]
    assert rest.next_cursor == ""


async def test_list_runs_rejects_bad_arguments(client: ironflow.Client) -> None:
    with pytest.raises(ironflow.IronflowError) as info:
        await client.list_runs(limit=5000)
    assert info.value.code == "INVALID_ARGUMENT"
    assert "limit" in info.value.message
    with pytest.raises(ironflow.IronflowError) as info:
        await client.list_runs(cursor="not-a-cursor")
    assert info.value.code == "INVALID_ARGUMENT"
    assert "cursor" in info.value.message


async def test_an_unknown_status_is_rejected_without_calling_the_server() -> None:
    # Nothing listens on port 9: any call would fail with UNAVAILABLE.
    async with ironflow.Client("http://127.0.0.1:9") as client:
        with pytest.raises(ironflow.IronflowError) as info:
            await client.list_runs(status="exploded")
    assert info.value.code == "INVALID_ARGUMENT"
    assert info.value.message.startswith("status: must be one of queued, running, sleeping, waiting,")
    assert "'exploded'" in info.value.message


async def test_unknown_runs_are_not_found(client: ironflow.Client) -> None:
    missing = unique_name("run")
    for call in (client.get_run(missing), client.get_run_steps(missing), client.cancel_run(missing)):
        with pytest.raises(ironflow.IronflowError) as info:
            await call
        assert info.value.code == "NOT_FOUND"
        assert missing in info.value.message


async def test_a_fresh_run_has_no_steps(
    registry: functions_pb2_grpc.RegistryServiceStub, client: ironflow.Client
) -> None:
    await register(registry, unique_name("fn"))
    emitted = await client.emit("order.placed", {})
    assert await client.get_run_steps(emitted.run_ids[0]) == []


async def test_cancel_ends_a_run_once(
    registry: functions_pb2_grpc.RegistryServiceStub, client: ironflow.Client
) -> None:
    await register(registry, unique_name("fn"))
    emitted = await client.emit("order.placed", {})
    run_id = emitted.run_ids[0]

    cancelled = await client.cancel_run(run_id, reason="customer asked")

    assert cancelled.id == run_id
    assert cancelled.status == "cancelled"
    assert cancelled.error == ironflow.RunError(code="CANCELLED", message="customer asked")
    assert cancelled.ended_at is not None
    assert await client.get_run(run_id) == cancelled

    with pytest.raises(ironflow.IronflowError) as info:
        await client.cancel_run(run_id, reason="again")
    assert info.value.code == "FAILED_PRECONDITION"
    assert "already ended" in info.value.message
    assert (await client.get_run(run_id)).error == cancelled.error


async def test_cancel_without_a_reason(
    registry: functions_pb2_grpc.RegistryServiceStub, client: ironflow.Client
) -> None:
    await register(registry, unique_name("fn"))
    emitted = await client.emit("order.placed", {})
    cancelled = await client.cancel_run(emitted.run_ids[0])
    assert cancelled.status == "cancelled"
    assert cancelled.error is not None
    assert cancelled.error.code == "CANCELLED"
    assert cancelled.error.message == "cancelled"


async def test_sync_client_offers_the_same_run_methods(
    registry: functions_pb2_grpc.RegistryServiceStub, live_server: LiveServer
) -> None:
    function_id = unique_name("fn")
    await register(registry, function_id)

    # The server runs on this test's event loop: the blocking client must run on another thread.
    def script() -> None:
        with ironflow.SyncClient(live_server.url) as client:
            emitted = client.emit("order.placed", {"orderId": "ord_1"})
            run_id = emitted.run_ids[0]
            run = client.get_run(run_id)
            assert (run.status, run.function_id, run.event_id) == ("queued", function_id, emitted.event_id)
            page = client.list_runs(function_id=function_id, status="queued", event_id=emitted.event_id)
            assert [r.id for r in page] == [run_id]
            assert page.next_cursor == ""
            assert client.get_run_steps(run_id) == []
            cancelled = client.cancel_run(run_id, reason="done here")
            assert cancelled.status == "cancelled"
            assert cancelled.error == ironflow.RunError("CANCELLED", "done here")
            assert [r.id for r in client.list_runs(status="cancelled", limit=1)] == [run_id]
            with pytest.raises(ironflow.IronflowError) as info:
                client.cancel_run(run_id)
            assert info.value.code == "FAILED_PRECONDITION"
            with pytest.raises(ironflow.IronflowError) as info:
                client.list_runs(status="nope")
            assert info.value.code == "INVALID_ARGUMENT"

    await asyncio.to_thread(script)


def test_from_value_gives_plain_json_with_integral_numbers_as_int() -> None:
    value = struct_pb2.Value()
    value.struct_value.update({"qty": 3, "price": 2.5, "tags": ["a", 1, None, True], "nested": {"n": 7}})
    assert from_value(value) == {"qty": 3, "price": 2.5, "tags": ["a", 1, None, True], "nested": {"n": 7}}
    assert isinstance(from_value(value)["qty"], int)
    assert from_value(struct_pb2.Value(number_value=4.0)) == 4
    assert from_value(struct_pb2.Value(string_value="x")) == "x"
    assert from_value(struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)) is None
    assert from_value(struct_pb2.Value()) is None


def test_a_run_page_iterates_over_its_runs() -> None:
    run = ironflow.Run(
        id="run_1",
        function_id="f",
        function_version=1,
        event_id="evt_1",
        status="queued",
        attempt=0,
        output=None,
        error=None,
        parent_run_id=None,
        created_at=None,
        started_at=None,
        ended_at=None,
    )
    page = ironflow.RunPage(runs=[run, run], next_cursor="")
    assert list(page) == [run, run]
    assert len(page) == 2
