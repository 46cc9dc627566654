"""Emit-and-wait and direct invocation through the SDK: `emit_sync`, `invoke` and `resume_run`.

A pull worker runs the functions against a live server on both backends, over real sockets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import ironflow
from tests.conftest import unique_name
from tests.integration.conftest import LiveServer
from tests.integration.workers import running_worker, wait_for_run
from tests.support import eventually

TRANSPORT = "stream"


@pytest.fixture
async def client(live_server: LiveServer) -> AsyncIterator[ironflow.Client]:
    async with ironflow.Client(live_server.url) as client:
        yield client


def echo_function(event: str | None = None, *, tag: str = "echo") -> ironflow.Function:
    """A function returning its input (and its tag) from one step; triggered by `event` if given."""
    triggers = [ironflow.on_event(event)] if event else []

    @ironflow.function(id=unique_name(tag), triggers=triggers)
    async def handler(ctx: ironflow.Context) -> dict[str, Any]:
        doubled = await ctx.step.run("double", lambda n: n * 2, ctx.event.data.get("n", 0))
        return {"tag": tag, "doubled": doubled, "data": ctx.event.data}

    return handler


def gated_function(gate: asyncio.Event, event: str | None = None) -> ironflow.Function:
    """A function whose one step waits until the test sets `gate`."""
    triggers = [ironflow.on_event(event)] if event else []

    async def wait_for_gate() -> str:
        await gate.wait()
        return "released"

    @ironflow.function(id=unique_name("gated"), triggers=triggers)
    async def handler(ctx: ironflow.Context) -> str:
        return await ctx.step.run("gate", wait_for_gate)

    return handler


def failing_function(message: str = "card declined") -> ironflow.Function:
    async def refuse() -> None:
        raise ironflow.NonRetryableError(message)

    @ironflow.function(id=unique_name("failing"))
    async def handler(ctx: ironflow.Context) -> None:
        await ctx.step.run("charge", refuse)

    return handler


# -- emit_sync ----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["stream", "poll"])
async def test_emit_sync_returns_the_output_of_the_one_run(
    live_server: LiveServer, client: ironflow.Client, transport: str
) -> None:
    event = unique_name("order")
    function = echo_function(event)

    async with running_worker(live_server, [function], transport=transport):
        results = await client.emit_sync(event, {"n": 21}, timeout="20s")

    assert len(results) == 1
    [result] = results
    assert isinstance(result, ironflow.RunResult)
    assert result.function_id == function.id
    assert result.status == "completed"
    assert result.output == {"tag": "echo", "doubled": 42, "data": {"n": 21}}
    assert result.error is None
    assert result.timed_out is False
    run = await client.get_run(result.run_id)
    assert (run.status, run.output) == ("completed", result.output)


async def test_emit_sync_returns_one_result_per_function(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    event = unique_name("order")
    first, second = echo_function(event, tag="first"), echo_function(event, tag="second")

    async with running_worker(live_server, [first, second], transport=TRANSPORT):
        results = await client.emit_sync(event, {"n": 1}, timeout=20, idempotency_key=unique_name("k"))

    assert sorted((r.function_id, r.status, r.output["tag"]) for r in results) == sorted(
        [(first.id, "completed", "first"), (second.id, "completed", "second")]
    )
    assert len({r.run_id for r in results}) == 2
    assert not any(r.timed_out for r in results)


async def test_emit_sync_of_an_event_that_starts_nothing_returns_at_once(client: ironflow.Client) -> None:
    started = time.monotonic()
    assert await client.emit_sync(unique_name("nobody.listens"), {"n": 1}, timeout="60s") == []
    assert time.monotonic() - started < 10


async def test_emit_sync_marks_runs_still_going_at_the_timeout(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    event = unique_name("slow")
    gate = asyncio.Event()
    function = gated_function(gate, event)

    async with running_worker(live_server, [function], transport=TRANSPORT):
        [result] = await client.emit_sync(event, {}, timeout="300ms")
        assert result.timed_out is True
        assert result.status in ("queued", "running")
        assert result.output is None
        assert result.error is None
        assert result.function_id == function.id

        gate.set()
        run = await wait_for_run(client, result.run_id)
    assert (run.status, run.output) == ("completed", "released")


async def test_emit_sync_rejects_a_bad_timeout(client: ironflow.Client) -> None:
    # Well-formed but longer than the server waits (5 minutes): the server refuses it.
    with pytest.raises(ironflow.IronflowError) as info:
        await client.emit_sync("order.placed", {}, timeout="10m")
    assert info.value.code == "INVALID_ARGUMENT"
    assert "timeout" in info.value.message


@pytest.mark.parametrize("bad", ["soon", -1, "5 minutes", True])
async def test_a_malformed_timeout_fails_before_any_call(bad: Any) -> None:
    # Nothing listens on port 9: any call would fail with UNAVAILABLE.
    async with ironflow.Client("http://127.0.0.1:9") as client:
        with pytest.raises(ValueError, match=r"^timeout: "):
            await client.emit_sync("order.placed", {}, timeout=bad)
        with pytest.raises(ValueError, match=r"^timeout: "):
            await client.invoke("some-function", {}, timeout=bad)


# -- invoke ------------------------------------------------------------------------------------


async def test_invoke_returns_the_output_of_a_function_without_triggers(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    function = echo_function()

    async with running_worker(live_server, [function], transport=TRANSPORT):
        output = await client.invoke(function.id, {"n": 5}, timeout="20s")
        again = await client.invoke(function, {"n": 6})  # a Function object works too

    assert output == {"tag": "echo", "doubled": 10, "data": {"n": 5}}
    assert again["doubled"] == 12
    runs = list(await client.list_runs(function_id=function.id))
    assert len(runs) == 2
    run = await client.get_run(runs[-1].id)
    assert run.status == "completed"
    assert run.parent_run_id is None
    assert run.parent_step_id is None
    assert run.child_run_ids == []


async def test_invoke_with_the_same_idempotency_key_runs_once(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    calls: list[int] = []

    def count(n: int) -> int:
        calls.append(n)
        return n + 1

    @ironflow.function(id=unique_name("once"))
    async def handler(ctx: ironflow.Context) -> int:
        return await ctx.step.run("count", count, ctx.event.data["n"])

    key = unique_name("key")
    async with running_worker(live_server, [handler], transport=TRANSPORT):
        first = await client.invoke(handler.id, {"n": 1}, idempotency_key=key)
        second = await client.invoke(handler.id, {"n": 1}, idempotency_key=key)

    assert first == second == 2
    assert calls == [1]
    assert len(await client.list_runs(function_id=handler.id)) == 1


async def test_invoke_of_a_failing_function_raises_run_failed(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    function = failing_function("card declined")

    async with running_worker(live_server, [function], transport=TRANSPORT):
        with pytest.raises(ironflow.RunFailedError) as info:
            await client.invoke(function.id, {"n": 1})

    error = info.value
    assert isinstance(error, ironflow.IronflowError)
    assert error.code == "RUN_FAILED"
    assert error.function_id == function.id
    assert error.run_id in error.message
    assert error.error is not None
    assert error.error.code == "NonRetryableError"
    assert "card declined" in error.error.message
    run = await client.get_run(error.run_id)
    assert run.status == "failed"
    assert run.error is not None
    assert (run.error.code, run.error.message) == (error.error.code, error.error.message)
    assert run.parent_run_id is None


async def test_invoke_of_a_cancelled_run_raises_run_cancelled(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    gate = asyncio.Event()
    function = gated_function(gate)

    async def started_run() -> str | None:
        runs = list(await client.list_runs(function_id=function.id))
        return runs[0].id if runs else None

    async with running_worker(live_server, [function], transport=TRANSPORT):
        invoking = asyncio.create_task(client.invoke(function.id, {}, timeout="20s"))
        run_id = await eventually(started_run, what="the invoked run to exist")
        await client.cancel_run(run_id, reason="changed my mind")
        with pytest.raises(ironflow.RunCancelledError) as info:
            await invoking
        gate.set()

    assert info.value.code == "RUN_CANCELLED"
    assert info.value.run_id == run_id
    assert info.value.function_id == function.id
    assert info.value.error == ironflow.RunError("CANCELLED", "changed my mind")


async def test_invoke_gives_up_waiting_at_the_timeout_and_the_run_keeps_going(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    gate = asyncio.Event()
    function = gated_function(gate)

    async with running_worker(live_server, [function], transport=TRANSPORT):
        with pytest.raises(ironflow.IronflowError) as info:
            await client.invoke(function.id, {}, timeout=0.3)
        assert info.value.code == "DEADLINE_EXCEEDED"
        [run] = list(await client.list_runs(function_id=function.id))
        assert run.id in info.value.message
        assert "keeps going" in info.value.message

        gate.set()
        ended = await wait_for_run(client, run.id)
    assert (ended.status, ended.output) == ("completed", "released")


async def test_invoke_of_an_unknown_function_is_not_found(client: ironflow.Client) -> None:
    missing = unique_name("nobody")
    with pytest.raises(ironflow.IronflowError) as info:
        await client.invoke(missing, {})
    assert info.value.code == "NOT_FOUND"
    assert missing in info.value.message
    assert not isinstance(info.value, ironflow.RunFailedError)


# -- resume_run --------------------------------------------------------------------------------


class FlakyOnce:
    """Steps `first`, `second`, `third`; `third` fails non-retryably on its first call only."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {"first": 0, "second": 0, "third": 0}

        @ironflow.function(id=unique_name("resumable"))
        async def handler(ctx: ironflow.Context) -> dict[str, Any]:
            first = await ctx.step.run("first", self.step, "first")
            second = await ctx.step.run("second", self.step, "second")
            third = await ctx.step.run("third", self.step, "third")
            return {"first": first, "second": second, "third": third}

        self.function = handler

    def step(self, name: str) -> str:
        self.calls[name] += 1
        if name == "third" and self.calls[name] == 1:
            raise ironflow.NonRetryableError("not yet")
        return f"{name}#{self.calls[name]}"


async def fail_once(client: ironflow.Client, flaky: FlakyOnce) -> str:
    with pytest.raises(ironflow.RunFailedError) as info:
        await client.invoke(flaky.function.id, {}, timeout="20s")
    run = await client.get_run(info.value.run_id)
    assert run.status == "failed"
    assert flaky.calls == {"first": 1, "second": 1, "third": 1}
    return run.id


async def test_resume_completes_a_failed_run_without_repeating_completed_steps(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    flaky = FlakyOnce()

    async with running_worker(live_server, [flaky.function], transport=TRANSPORT):
        run_id = await fail_once(client, flaky)
        resumed = await client.resume_run(run_id)
        assert isinstance(resumed, ironflow.Run)
        assert resumed.id == run_id
        assert resumed.status in ("queued", "running", "completed")
        run = await wait_for_run(client, run_id)

    assert run.status == "completed", run.error
    assert run.output == {"first": "first#1", "second": "second#1", "third": "third#2"}
    assert run.error is None
    assert flaky.calls == {"first": 1, "second": 1, "third": 2}

    with pytest.raises(ironflow.IronflowError) as info:
        await client.resume_run(run_id)
    assert info.value.code == "FAILED_PRECONDITION"


async def test_resume_from_a_step_runs_it_and_the_later_ones_again(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    flaky = FlakyOnce()

    async with running_worker(live_server, [flaky.function], transport=TRANSPORT):
        run_id = await fail_once(client, flaky)
        await client.resume_run(run_id, from_step="second")
        run = await wait_for_run(client, run_id)

    assert run.status == "completed", run.error
    assert run.output == {"first": "first#1", "second": "second#2", "third": "third#2"}
    assert flaky.calls == {"first": 1, "second": 2, "third": 2}


async def test_resume_rejects_unknown_runs_and_steps(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    missing = unique_name("run")
    with pytest.raises(ironflow.IronflowError) as info:
        await client.resume_run(missing)
    assert info.value.code == "NOT_FOUND"
    assert missing in info.value.message

    flaky = FlakyOnce()
    async with running_worker(live_server, [flaky.function], transport=TRANSPORT):
        run_id = await fail_once(client, flaky)
        with pytest.raises(ironflow.IronflowError) as info:
            await client.resume_run(run_id, from_step="no-such-step")
    assert info.value.code == "INVALID_ARGUMENT"
    assert "from_step" in info.value.message
    assert (await client.get_run(run_id)).status == "failed"


# -- the blocking twin -------------------------------------------------------------------------


async def test_sync_client_offers_emit_sync_invoke_and_resume(live_server: LiveServer) -> None:
    event = unique_name("order")
    echo = echo_function(event)
    flaky = FlakyOnce()

    # The server and the worker run on this test's event loop: the blocking client runs on a thread.
    def script() -> None:
        with ironflow.SyncClient(live_server.url) as client:
            [result] = client.emit_sync(event, {"n": 2}, timeout="20s")
            assert (result.function_id, result.status, result.output["doubled"]) == (echo.id, "completed", 4)
            assert client.emit_sync(unique_name("nothing"), {}) == []
            assert client.invoke(echo.id, {"n": 3})["doubled"] == 6
            with pytest.raises(ironflow.RunFailedError) as info:
                client.invoke(flaky.function, {})
            resumed = client.resume_run(info.value.run_id)
            assert resumed.id == info.value.run_id
            with pytest.raises(ValueError, match="timeout"):
                client.invoke(echo.id, {}, timeout="never")

    async with running_worker(live_server, [echo, flaky.function], transport=TRANSPORT):
        await asyncio.to_thread(script)
        async with ironflow.Client(live_server.url) as client:
            runs = list(await client.list_runs(function_id=flaky.function.id))
            run = await wait_for_run(client, runs[0].id)
    assert run.status == "completed", run.error
    assert flaky.calls["third"] == 2
