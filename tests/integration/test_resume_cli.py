"""`ironflow emit --wait` and `ironflow runs resume`, run in-process against a live server and a worker.

The CLI calls `asyncio.run`, and the server and worker live on this test's event loop, so each
invocation runs on a worker thread.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import ironflow
from ironflow.cli import build_app
from tests.conftest import unique_name
from tests.integration.conftest import LiveServer
from tests.integration.workers import running_worker, wait_for_run

Cli = Callable[..., Awaitable[Result]]
TRANSPORT = "stream"


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


class Functions:
    """On one event: `ok` completes, `refuse` fails on its first run only, `gated` waits for `gate`."""

    def __init__(self, event: str) -> None:
        self.gate = asyncio.Event()
        self.calls: dict[str, int] = {"prepare": 0, "refuse": 0}

        @ironflow.function(id=unique_name("ok"), triggers=[ironflow.on_event(f"{event}.ok")])
        async def ok(ctx: ironflow.Context) -> dict[str, Any]:
            return {"total": await ctx.step.run("add", lambda: ctx.event.data["a"] + ctx.event.data["b"])}

        @ironflow.function(id=unique_name("refuse"), triggers=[ironflow.on_event(f"{event}.refuse")])
        async def refuse(ctx: ironflow.Context) -> str:
            prepared = await ctx.step.run("prepare", self.count, "prepare")
            checked = await ctx.step.run("check", self.count, "refuse")
            return f"{prepared}+{checked}"

        async def wait_for_gate() -> str:
            await self.gate.wait()
            return "released"

        @ironflow.function(id=unique_name("gated"), triggers=[ironflow.on_event(f"{event}.gated")])
        async def gated(ctx: ironflow.Context) -> str:
            return await ctx.step.run("gate", wait_for_gate)

        self.ok, self.refuse, self.gated = ok, refuse, gated
        self.all = [ok, refuse, gated]

    def count(self, name: str) -> str:
        self.calls[name] += 1
        if name == "refuse" and self.calls[name] == 1:
            raise ironflow.NonRetryableError("out of stock")
        return f"{name}#{self.calls[name]}"


@pytest.fixture
async def functions(live_server: LiveServer) -> AsyncIterator[tuple[str, Functions]]:
    event = unique_name("cli")
    functions = Functions(event)
    async with running_worker(live_server, functions.all, transport=TRANSPORT):
        yield event, functions
        functions.gate.set()


async def test_emit_wait_prints_each_run_and_exits_zero_when_all_completed(
    cli: Cli, functions: tuple[str, Functions]
) -> None:
    event, fns = functions
    result = await cli("emit", f"{event}.ok", "--data", '{"a": 2, "b": 3}', "--wait", "--timeout", "20s")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("event evt_")
    [row] = [line for line in lines if fns.ok.id in line]
    assert "completed" in row
    assert '{"total": 5}' in row
    assert "run_" in row
    assert "timed out" not in result.stdout

    result = await cli("--json", "emit", f"{event}.ok", "--data", '{"a": 1, "b": 1}', "--wait")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["event_id"].startswith("evt_")
    [run] = shown["results"]
    assert run["function_id"] == fns.ok.id
    assert run["status"] == "completed"
    assert run["output"] == {"total": 2}
    assert run["error"] is None
    assert run["timed_out"] is False


async def test_emit_wait_exits_one_when_a_run_failed(cli: Cli, functions: tuple[str, Functions]) -> None:
    event, fns = functions
    result = await cli("emit", f"{event}.refuse", "--wait")
    assert result.exit_code == 1, result.output
    [row] = [line for line in result.stdout.splitlines() if fns.refuse.id in line]
    assert "failed" in row
    assert "NonRetryableError: out of stock" in row

    # The second run gets past `refuse` (it only fails the first time).
    result = await cli("emit", f"{event}.refuse", "--wait", "--json")
    assert result.exit_code == 0, result.output
    [run] = json.loads(result.stdout)["results"]
    assert run["status"] == "completed"
    assert fns.calls == {"prepare": 2, "refuse": 2}


async def test_emit_wait_exits_one_when_a_run_is_still_going(
    cli: Cli, client: ironflow.Client, functions: tuple[str, Functions]
) -> None:
    event, fns = functions
    result = await cli("emit", f"{event}.gated", "--wait", "--timeout", "300ms")
    assert result.exit_code == 1, result.output
    [row] = [line for line in result.stdout.splitlines() if fns.gated.id in line]
    assert "timed out" in row
    assert "keep going" in result.stderr

    result = await cli("emit", f"{event}.gated", "--wait", "--timeout", "0.2", "--json")
    assert result.exit_code == 1, result.output
    [run] = json.loads(result.stdout)["results"]
    assert run["timed_out"] is True
    assert run["status"] in ("queued", "running")

    fns.gate.set()
    assert (await wait_for_run(client, run["run_id"])).status == "completed"


async def test_emit_wait_with_no_matching_function(cli: Cli) -> None:
    result = await cli("emit", unique_name("nobody"), "--wait")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("event evt_")
    assert "no runs started" in result.stdout

    result = await cli("emit", unique_name("nobody"), "--wait", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"] == []


def test_timeout_needs_wait_and_a_duration() -> None:
    # Usage errors: nothing is sent (nothing listens on port 9 anyway).
    runner = CliRunner(env={"NO_COLOR": "1"})
    app = build_app()
    result = runner.invoke(app, ["--server-url", "http://127.0.0.1:9", "emit", "x", "--timeout", "5s"])
    assert result.exit_code == 2
    assert "--timeout" in result.stderr
    assert "--wait" in result.stderr

    result = runner.invoke(
        app, ["--server-url", "http://127.0.0.1:9", "emit", "x", "--wait", "--timeout", "soon"]
    )
    assert result.exit_code == 2
    assert "not a duration" in result.stderr

    result = runner.invoke(app, ["emit", "--help"])
    assert result.exit_code == 0
    help_text = " ".join(result.stdout.split())
    assert "--wait" in help_text
    assert "Exit code 0 when every run completed; 1 when any failed" in help_text


async def test_emit_wait_reports_a_timeout_the_server_refuses(cli: Cli) -> None:
    result = await cli("emit", unique_name("x"), "--wait", "--timeout", "1h")
    assert result.exit_code == 1
    assert "INVALID_ARGUMENT" in result.stderr
    assert "timeout" in result.stderr


async def test_runs_resume_requeues_a_failed_run(
    cli: Cli, client: ironflow.Client, functions: tuple[str, Functions]
) -> None:
    event, fns = functions
    [failed] = await client.emit_sync(f"{event}.refuse", {}, timeout="20s")
    assert failed.status == "failed"
    assert fns.calls == {"prepare": 1, "refuse": 1}

    result = await cli("runs", "resume", failed.run_id)
    assert result.exit_code == 0, result.output
    pairs = (line.split(None, 1) for line in result.stdout.splitlines() if line.strip())
    fields = {key: value.strip() for key, value in pairs}
    assert fields["run"] == failed.run_id
    assert fields["function"].startswith(fns.refuse.id)
    assert fields["status"] in ("queued", "running", "completed")

    run = await wait_for_run(client, failed.run_id)
    assert (run.status, run.output) == ("completed", "prepare#1+refuse#2")
    assert fns.calls == {"prepare": 1, "refuse": 2}

    result = await cli("runs", "resume", failed.run_id)
    assert result.exit_code == 1
    assert "FAILED_PRECONDITION" in result.stderr
    assert result.stdout == ""


async def test_runs_resume_from_a_step(
    cli: Cli, client: ironflow.Client, functions: tuple[str, Functions]
) -> None:
    event, fns = functions
    [failed] = await client.emit_sync(f"{event}.refuse", {}, timeout="20s")
    assert failed.status == "failed"

    result = await cli("runs", "resume", failed.run_id, "--from-step", "prepare", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["id"] == failed.run_id
    assert shown["status"] in ("queued", "running", "completed")
    assert shown["child_run_ids"] == []

    run = await wait_for_run(client, failed.run_id)
    assert (run.status, run.output) == ("completed", "prepare#2+refuse#2")
    assert fns.calls == {"prepare": 2, "refuse": 2}

    result = await cli("runs", "resume", unique_name("run_missing"))
    assert result.exit_code == 1
    assert "NOT_FOUND" in result.stderr
