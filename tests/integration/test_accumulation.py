"""Debounce and batching end to end: declared with the SDK decorator, registered, shown by
`ironflow functions get`, applied to emitted events, and run by a real pull worker or push endpoint
on both backends (real time here: the clock-driven edge cases are in tests/contract)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

import ironflow
from ironflow.v1 import functions_pb2, functions_pb2_grpc
from tests.conftest import unique_name
from tests.integration.conftest import LiveServer, running_server, server_settings
from tests.integration.push import SIGNING_KEY, push_functions
from tests.integration.workers import running_worker, wait_for_run


@pytest.fixture(params=["embedded", "postgres_redis"])
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LiveServer]:
    settings = server_settings(request.param, tmp_path).model_copy(update={"signing_key": SIGNING_KEY})
    async with running_server(settings) as live:
        yield live


@pytest.fixture(params=["pull", "push"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def client(server: LiveServer) -> AsyncIterator[ironflow.Client]:
    async with ironflow.Client(server.url) as client:
        yield client


@asynccontextmanager
async def deployed(
    server: LiveServer, mode: str, functions: Sequence[ironflow.Function]
) -> AsyncIterator[None]:
    if mode == "pull":
        async with running_worker(server, functions, transport="stream"):
            yield
    else:
        async with push_functions(server.url, functions):
            yield


async def test_a_batched_handler_gets_every_event_of_its_batch(
    server: LiveServer, client: ironflow.Client, mode: str
) -> None:
    """Three events fill a batch of three: one run, whose handler sees all three in `ctx.events` (in
    emit order, `ctx.event` the first), also in the segment after a sleep."""
    event = unique_name("row.inserted")

    @ironflow.function(
        id=unique_name("bulk-insert"),
        triggers=[ironflow.on_event(event)],
        batching=ironflow.Batching(max_size=3, timeout="1m"),
        mode=mode,
    )
    async def bulk(ctx: ironflow.Context) -> dict[str, Any]:
        await ctx.step.sleep("settle", "200ms")  # the next segment's job carries the batch again
        return {"first": ctx.event.data["n"], "all": [e.data["n"] for e in ctx.events]}

    async with deployed(server, mode, [bulk]):
        emitted = [await client.emit(event, {"n": n}) for n in range(3)]
        run_ids = {run_id for result in emitted for run_id in result.run_ids}
        assert len(run_ids) == 1
        run = await wait_for_run(client, run_ids.pop())

    assert run.status == "completed", run.error
    assert run.output == {"first": 0, "all": [0, 1, 2]}
    assert run.event_id == emitted[0].event_id
    assert [r.id for r in (await client.list_runs(function_id=bulk.id)).runs] == [run.id]


async def test_a_debounced_handler_runs_once_with_the_last_event(
    server: LiveServer, client: ironflow.Client, mode: str
) -> None:
    """Three quick events, period 2 s: one run, with the last event (`ctx.events` is just it)."""
    event = unique_name("profile.updated")

    @ironflow.function(
        id=unique_name("reindex"),
        triggers=[ironflow.on_event(event)],
        debounce=ironflow.Debounce(period="2s", key="event.data.userId"),
        mode=mode,
    )
    async def reindex(ctx: ironflow.Context) -> dict[str, Any]:
        return {"n": ctx.event.data["n"], "events": [e.id for e in ctx.events]}

    async with deployed(server, mode, [reindex]):
        emitted = [await client.emit(event, {"userId": "u1", "n": n}) for n in range(3)]
        run_ids = {run_id for result in emitted for run_id in result.run_ids}
        assert len(run_ids) == 1
        run = await wait_for_run(client, run_ids.pop())

    assert run.status == "completed", run.error
    assert run.output == {"n": 2, "events": [emitted[-1].event_id]}
    assert run.event_id == emitted[-1].event_id
    assert [r.id for r in (await client.list_runs(function_id=reindex.id)).runs] == [run.id]


async def test_get_function_and_the_cli_show_debounce_and_batching(
    server: LiveServer, client: ironflow.Client
) -> None:
    async def noop(ctx: ironflow.Context) -> None:
        return None

    debounced = ironflow.function(
        id="debounced",
        triggers=[ironflow.on_event("doc.saved")],
        debounce=ironflow.Debounce(period="30s", key="event.data.docId", max_wait="5m"),
    )(noop)
    batched = ironflow.function(
        id="batched",
        triggers=[ironflow.on_event("row.inserted")],
        batching=ironflow.Batching(max_size=100, timeout="10s"),
    )(noop)
    async with grpc.aio.insecure_channel(server.url.removeprefix("http://")) as channel:
        request = functions_pb2.RegisterFunctionsRequest(
            functions=[debounced.definition(), batched.definition()]
        )
        await functions_pb2_grpc.RegistryServiceStub(channel).RegisterFunctions(request)
    shown = await client.get_function("batched")
    assert shown.definition["batching"] == {"max_size": 100, "timeout": "10s"}
    cli = [sys.executable, "-m", "ironflow.services.server", "--server-url", server.url]
    process = await asyncio.create_subprocess_exec(
        *cli, "functions", "get", "debounced", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    definition = json.loads(out)["definition"]
    assert definition["debounce"] == {"period": "30s", "key": "event.data.docId", "max_wait": "300s"}
