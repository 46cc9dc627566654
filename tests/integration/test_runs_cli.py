"""`ironflow runs list|get|steps|cancel`, run in-process against a live server.

The CLI calls `asyncio.run`, and the server lives on this test's event loop, so each invocation runs
on a worker thread.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from typer.testing import CliRunner, Result

import ironflow
from ironflow.cli import build_app
from ironflow.v1 import functions_pb2, functions_pb2_grpc
from tests.conftest import unique_name
from tests.integration.conftest import LiveServer

Cli = Callable[..., Awaitable[Result]]


@pytest.fixture
async def function_id(live_server: LiveServer) -> str:
    function_id = unique_name("fn")
    trigger = functions_pb2.Trigger(event=functions_pb2.EventTrigger(event="order.placed"))
    async with grpc.aio.insecure_channel(live_server.url.removeprefix("http://")) as channel:
        await functions_pb2_grpc.RegistryServiceStub(channel).RegisterFunctions(
            functions_pb2.RegisterFunctionsRequest(
                functions=[functions_pb2.FunctionDefinition(id=function_id, triggers=[trigger])]
            )
        )
    return function_id


@pytest.fixture
async def client(live_server: LiveServer) -> AsyncIterator[ironflow.Client]:
    async with ironflow.Client(live_server.url) as client:
        yield client


@pytest.fixture
def cli(live_server: LiveServer) -> Cli:
    app = build_app()
    runner = CliRunner(env={"NO_COLOR": "1"})

    async def invoke(*args: str) -> Result:
        return await asyncio.to_thread(runner.invoke, app, ["--server-url", live_server.url, *args])

    return invoke


async def test_runs_list_as_table_and_json(cli: Cli, client: ironflow.Client, function_id: str) -> None:
    first = await client.emit("order.placed", {"n": 1})
    second = await client.emit("order.placed", {"n": 2})
    older, newer = first.run_ids[0], second.run_ids[0]

    result = await cli("runs", "list", "--function", function_id)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "function" in line)
    for column in ("id", "status", "attempt", "created", "duration"):
        assert column in header
    rows = [line for line in lines if function_id in line]
    assert len(rows) == 2
    assert newer in rows[0]
    assert older in rows[1]
    assert all("queued" in row for row in rows)
    assert "more: --cursor" not in result.stdout

    result = await cli("--json", "runs", "list", "--function", function_id)
    assert result.exit_code == 0, result.output
    page = json.loads(result.stdout)
    assert page["next_cursor"] == ""
    assert [run["id"] for run in page["runs"]] == [newer, older]
    assert page["runs"][0]["status"] == "queued"
    assert page["runs"][0]["event_id"] == second.event_id
    assert page["runs"][0]["created_at"].endswith("Z")


async def test_runs_list_filters_and_pages(cli: Cli, client: ironflow.Client, function_id: str) -> None:
    emitted = [await client.emit("order.placed", {"n": n}) for n in range(3)]
    run_ids = [e.run_ids[0] for e in emitted]

    result = await cli("runs", "list", "--limit", "2", "--json")
    assert result.exit_code == 0, result.output
    page = json.loads(result.stdout)
    assert [run["id"] for run in page["runs"]] == run_ids[:0:-1]
    assert page["next_cursor"]

    result = await cli("runs", "list", "--limit", "2")
    assert result.exit_code == 0, result.output
    assert f"more: --cursor {page['next_cursor']}" in result.stdout

    result = await cli("runs", "list", "--limit", "2", "--cursor", page["next_cursor"], "--json")
    assert result.exit_code == 0, result.output
    rest = json.loads(result.stdout)
    assert [run["id"] for run in rest["runs"]] == run_ids[:1]
    assert rest["next_cursor"] == ""

    result = await cli("runs", "list", "--event", emitted[1].event_id, "--status", "queued", "--json")
    assert result.exit_code == 0, result.output
    assert [run["id"] for run in json.loads(result.stdout)["runs"]] == [run_ids[1]]

    result = await cli("runs", "list", "--status", "cancelled", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["runs"] == []


async def test_runs_get_shows_a_run(cli: Cli, client: ironflow.Client, function_id: str) -> None:
    emitted = await client.emit("order.placed", {"orderId": "ord_1"})
    run_id = emitted.run_ids[0]

    result = await cli("runs", "get", run_id)
    assert result.exit_code == 0, result.output
    pairs = (line.split(None, 1) for line in result.stdout.splitlines() if line.strip())
    fields = {key: value.strip() for key, value in pairs}
    assert fields["run"] == run_id
    assert fields["function"] == f"{function_id} (version 1)"
    assert fields["event"] == emitted.event_id
    assert fields["status"] == "queued"
    assert fields["started"] == "-"
    assert "output" not in fields
    assert "error" not in fields

    result = await cli("runs", "get", run_id, "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["id"] == run_id
    assert shown["function_id"] == function_id
    assert shown["status"] == "queued"
    assert shown["output"] is None
    assert shown["error"] is None
    assert shown["started_at"] is None


async def test_runs_steps_of_a_fresh_run(cli: Cli, client: ironflow.Client, function_id: str) -> None:
    run_id = (await client.emit("order.placed", {})).run_ids[0]

    result = await cli("runs", "steps", run_id)
    assert result.exit_code == 0, result.output
    assert "no steps yet" in result.stdout

    result = await cli("--json", "runs", "steps", run_id)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []


async def test_runs_cancel_then_cancel_again_fails(
    cli: Cli, client: ironflow.Client, function_id: str
) -> None:
    first, second = [(await client.emit("order.placed", {})).run_ids[0] for _ in range(2)]

    result = await cli("runs", "cancel", first, "--reason", "customer asked")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"run {first} cancelled"
    run = await client.get_run(first)
    assert run.status == "cancelled"
    assert run.error == ironflow.RunError("CANCELLED", "customer asked")

    result = await cli("runs", "get", first)
    assert result.exit_code == 0, result.output
    assert "CANCELLED: customer asked" in result.stdout

    result = await cli("runs", "cancel", second, "--json")
    assert result.exit_code == 0, result.output
    cancelled = json.loads(result.stdout)
    assert cancelled["status"] == "cancelled"
    assert cancelled["error"] == {"code": "CANCELLED", "message": "cancelled", "details": ""}
    assert cancelled["ended_at"] is not None

    result = await cli("runs", "cancel", first)
    assert result.exit_code == 1
    assert "FAILED_PRECONDITION" in result.stderr
    assert "already ended" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["runs", "get", "run_missing"], "NOT_FOUND"),
        (["runs", "steps", "run_missing"], "NOT_FOUND"),
        (["runs", "cancel", "run_missing"], "NOT_FOUND"),
        (["runs", "list", "--status", "exploded"], "INVALID_ARGUMENT"),
    ],
)
async def test_runs_errors_exit_non_zero(cli: Cli, args: list[str], code: str) -> None:
    result = await cli(*args)
    assert result.exit_code == 1
    assert code in result.stderr
    assert result.stdout == ""


# Steps and outputs need a worker to run the function; these render fixed results through the CLI.

STARTED = datetime(2025, 3, 1, 9, 0, 0, tzinfo=UTC)


def _invoke_offline(monkeypatch: pytest.MonkeyPatch, name: str, value: object, *args: str) -> Result:
    async def fake(self: ironflow.Client, *_: object, **__: object) -> object:
        return value

    monkeypatch.setattr(ironflow.Client, name, fake)
    return CliRunner(env={"NO_COLOR": "1"}).invoke(build_app(), ["--server-url", "http://127.0.0.1:9", *args])


def test_runs_steps_table_shows_outputs_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = [
        ironflow.Step(
            id="charge",
            name="charge",
            kind="run",
            status="completed",
            attempt=1,
            output={"chargeId": "ch_1", "amount": 30},
            error=None,
            started_at=STARTED,
            ended_at=STARTED + timedelta(milliseconds=250),
        ),
        ironflow.Step(
            id="ship",
            name="ship",
            kind="run",
            status="failed",
            attempt=3,
            output=None,
            error=ironflow.RunError("ValueError", "no [bold]address[/]"),
            started_at=STARTED,
            ended_at=STARTED + timedelta(minutes=2, seconds=5),
        ),
    ]
    result = _invoke_offline(monkeypatch, "get_run_steps", steps, "runs", "steps", "run_1")
    assert result.exit_code == 0, result.output
    charge = next(line for line in result.stdout.splitlines() if "charge" in line)
    assert "completed" in charge
    assert "250ms" in charge
    assert '{"chargeId": "ch_1", "amount": 30}' in charge
    ship = next(line for line in result.stdout.splitlines() if "ship" in line)
    assert "failed" in ship
    assert "2m05s" in ship
    assert "ValueError: no [bold]address[/]" in ship

    result = _invoke_offline(monkeypatch, "get_run_steps", steps, "--json", "runs", "steps", "run_1")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown[0]["output"] == {"chargeId": "ch_1", "amount": 30}
    assert shown[0]["started_at"] == "2025-03-01T09:00:00Z"
    assert shown[1]["error"] == {"code": "ValueError", "message": "no [bold]address[/]", "details": ""}


def test_runs_get_shows_the_output_of_a_completed_run(monkeypatch: pytest.MonkeyPatch) -> None:
    run = ironflow.Run(
        id="run_1",
        function_id="order-handler",
        function_version=2,
        event_id="evt_1",
        status="completed",
        attempt=1,
        output={"ok": True, "items": [1, 2]},
        error=None,
        parent_run_id="run_0",
        created_at=STARTED,
        started_at=STARTED,
        ended_at=STARTED + timedelta(seconds=1.5),
    )
    result = _invoke_offline(monkeypatch, "get_run", run, "runs", "get", "run_1")
    assert result.exit_code == 0, result.output
    assert "order-handler (version 2)" in result.stdout
    assert "parent run  run_0" in result.stdout
    assert "1.5s" in result.stdout
    output = result.stdout[result.stdout.index("output") :]
    assert json.loads(output.removeprefix("output")) == {"ok": True, "items": [1, 2]}
