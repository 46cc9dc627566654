"""Steps that compose: invoke / invoke_async, parallel / map, publish and compensate (sagas)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

import ironflow
from tests.conftest import unique_name
from tests.integration.conftest import LiveServer
from tests.integration.workers import running_worker, wait_for_run

FAST_RETRY = ironflow.Retry(max_attempts=3, initial_delay=0.05, factor=2.0, max_delay=1)


@pytest.fixture
async def client(live_server: LiveServer) -> AsyncIterator[ironflow.Client]:
    async with ironflow.Client(live_server.url) as client:
        yield client


# -- invoke -----------------------------------------------------------------------------------


async def test_invoke_returns_the_child_output_and_records_parent_and_child(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    event = unique_name("parent")

    @ironflow.function(id=unique_name("pdf"))  # no triggers: only invoked
    async def pdf(ctx: ironflow.Context) -> dict[str, Any]:
        return await ctx.step.run("render", lambda: {"url": f"/pdf/{ctx.event.data['id']}"})

    @ironflow.function(id=unique_name("parent"), triggers=[ironflow.on_event(event)])
    async def parent(ctx: ironflow.Context) -> dict[str, Any]:
        rendered = await ctx.step.invoke(pdf.id, {"id": "123"}, timeout="20s")
        handle = await ctx.step.invoke_async(pdf, {"id": "456"})
        return {"rendered": rendered, "async_run": handle.run_id}

    async with running_worker(live_server, [pdf, parent], transport="stream"):
        parent_id = (await client.emit(event, {})).run_ids[0]
        run = await wait_for_run(client, parent_id)
        assert run.status == "completed", run.error
        detached = await wait_for_run(client, run.output["async_run"])

    assert run.output["rendered"] == {"url": "/pdf/123"}
    assert detached.status == "completed"
    assert detached.output == {"url": "/pdf/456"}
    assert detached.parent_run_id == parent_id
    parent_run = await client.get_run(parent_id)
    assert detached.id in parent_run.child_run_ids
    assert len(parent_run.child_run_ids) == 2
    steps = {step.id: step for step in await client.get_run_steps(parent_id)}
    assert steps[pdf.id].kind == "invoke"
    assert steps[pdf.id].status == "completed"
    assert steps[f"{pdf.id}:1"].output == {"function_id": pdf.id, "run_id": detached.id}


async def test_a_failing_child_raises_invoke_error_which_the_parent_can_catch(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    event = unique_name("parent")

    @ironflow.function(id=unique_name("broken"))
    async def broken(ctx: ironflow.Context) -> None:
        raise ironflow.NonRetryableError("printer on fire")

    @ironflow.function(id=unique_name("parent"), triggers=[ironflow.on_event(event)])
    async def parent(ctx: ironflow.Context) -> dict[str, Any]:
        try:
            await ctx.step.invoke(broken.id, {})
        except ironflow.InvokeError as exc:
            return {
                "function": exc.function_id,
                "child": exc.run_id,
                "cause": exc.cause.code,
                "msg": exc.message,
            }
        return {"caught": False}

    async with running_worker(live_server, [broken, parent], transport="poll"):
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])

    assert run.status == "completed", run.error
    assert run.output["function"] == broken.id
    assert run.output["cause"] == "NonRetryableError"
    assert "printer on fire" in run.output["msg"]
    child = await client.get_run(run.output["child"])
    assert child.status == "failed"
    assert child.parent_run_id == run.id


async def test_invoke_times_out_with_invoke_error_while_the_child_keeps_running(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    event = unique_name("parent")
    release = threading.Event()

    @ironflow.function(id=unique_name("slow"))
    async def slow(ctx: ironflow.Context) -> str:
        return await ctx.step.run("wait", lambda: release.wait(20) and "finally")

    @ironflow.function(id=unique_name("parent"), triggers=[ironflow.on_event(event)])
    async def parent(ctx: ironflow.Context) -> dict[str, Any]:
        try:
            await ctx.step.invoke(slow.id, {}, timeout="1s")
        except ironflow.InvokeError as exc:
            return {"code": exc.code, "child": exc.run_id}
        return {"code": None}

    async with running_worker(live_server, [slow, parent], transport="stream"):
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])
        assert run.status == "completed", run.error
        assert run.output["code"] == "TIMEOUT"
        assert (await client.get_run(run.output["child"])).status == "running"
        release.set()
        child = await wait_for_run(client, run.output["child"])
    assert child.status == "completed"
    assert child.output == "finally"


async def test_invoking_an_unknown_function_is_an_invoke_error(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    event = unique_name("parent")

    @ironflow.function(id=unique_name("parent"), triggers=[ironflow.on_event(event)])
    async def parent(ctx: ironflow.Context) -> str:
        try:
            await ctx.step.invoke("no-such-function", {})
        except ironflow.InvokeError as exc:
            return exc.code
        return "invoked?"

    async with running_worker(live_server, [parent], transport="stream"):
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])
    assert run.status == "completed", run.error
    assert run.output == "NOT_FOUND"


# -- parallel and map ---------------------------------------------------------------------------


async def test_parallel_and_map_return_results_in_input_order_with_scoped_step_ids(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    event = unique_name("fan")

    async def slow_double(x: int) -> int:
        await asyncio.sleep(0.05 * (5 - x))  # later items finish first
        return x * 2

    @ironflow.function(id=unique_name("fan"), triggers=[ironflow.on_event(event)])
    async def fan(ctx: ironflow.Context) -> dict[str, Any]:
        doubled = await ctx.step.map("double", [1, 2, 3, 4], slow_double)
        a, b = await ctx.step.parallel(
            "both",
            [lambda: ctx.step.run("fetch", lambda: "a"), lambda: ctx.step.run("fetch", lambda: "b")],
        )
        empty = await ctx.step.map("none", [], slow_double)
        return {"doubled": doubled, "pair": [a, b], "empty": empty}

    async with running_worker(live_server, [fan], transport="stream"):
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])

    assert run.status == "completed", run.error
    assert run.output == {"doubled": [2, 4, 6, 8], "pair": ["a", "b"], "empty": []}
    ids = {step.id for step in await client.get_run_steps(run.id)}
    assert {"double/0", "double/3", "both/0", "both/1", "both/0/fetch", "both/1/fetch"} <= ids


async def test_concurrency_caps_branches_in_flight(live_server: LiveServer, client: ironflow.Client) -> None:
    event = unique_name("capped")
    in_flight = 0
    peak = 0

    async def work(x: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return x

    @ironflow.function(id=unique_name("capped"), triggers=[ironflow.on_event(event)])
    async def capped(ctx: ironflow.Context) -> list[int]:
        result: list[int] = await ctx.step.map("work", list(range(8)), work, concurrency=2)
        return result

    async with running_worker(live_server, [capped], transport="stream"):
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])
    assert run.status == "completed", run.error
    assert run.output == list(range(8))
    assert peak == 2


async def test_a_failing_branch_is_retried_alone_then_fail_fast_raises_and_collect_collects(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    event = unique_name("branches")
    calls: dict[int, int] = {}

    def flaky(x: int) -> int:
        calls[x] = calls.get(x, 0) + 1
        if x == 1:
            raise RuntimeError(f"item {x} always fails")
        return x * 10

    @ironflow.function(id=unique_name("branches"), triggers=[ironflow.on_event(event)], retry=FAST_RETRY)
    async def branches(ctx: ironflow.Context) -> dict[str, Any]:
        collected = await ctx.step.map("collect", [0, 1, 2], flaky, on_error="collect")
        try:
            await ctx.step.map("fast", [0, 1, 2], flaky)
        except ironflow.StepError as exc:
            fast = exc.step_id
        return {"collected": [c if isinstance(c, int) else type(c).__name__ for c in collected], "fast": fast}

    async with running_worker(live_server, [branches], transport="stream"):
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])

    assert run.status == "completed", run.error
    assert run.output == {"collected": [0, "StepError", 20], "fast": "fast/1"}
    # Each good item ran once per map; the failing one used all three attempts in each map.
    assert calls == {0: 2, 1: 6, 2: 2}


# -- publish ------------------------------------------------------------------------------------


async def test_publish_happens_once_per_step_even_when_the_run_is_replayed(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    event, topic = unique_name("notify"), unique_name("emails")
    attempts = 0

    def fail_once() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("transient")
        return "ok"

    @ironflow.function(id=unique_name("notify"), triggers=[ironflow.on_event(event)], retry=FAST_RETRY)
    async def notify(ctx: ironflow.Context) -> dict[str, Any]:
        published = await ctx.step.publish(topic, {"to": "a@b.c"})
        again = await ctx.step.publish(topic, {"to": "d@e.f"})
        await ctx.step.run("after", fail_once)  # forces a second execution that replays both publishes
        return {"first": published.event_id, "second": again.event_id}

    async with running_worker(live_server, [notify], transport="stream"):
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])

    assert run.status == "completed", run.error
    assert attempts == 2
    page = await client.list_events(namespace="topic", name=topic)
    assert sorted(e.data["to"] for e in page.events) == ["a@b.c", "d@e.f"]
    assert {e.id for e in page.events} == {run.output["first"], run.output["second"]}


# -- compensate ---------------------------------------------------------------------------------


async def test_a_saga_failing_at_the_third_step_undoes_the_second_then_the_first(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    event = unique_name("trip")
    undone: list[str] = []

    def undo(what: str) -> str:
        undone.append(what)
        return f"undid {what}"

    def refuse() -> None:
        raise ironflow.NonRetryableError("no rooms left")

    @ironflow.function(id=unique_name("trip"), triggers=[ironflow.on_event(event)], retry=FAST_RETRY)
    async def trip(ctx: ironflow.Context) -> None:
        flight = await ctx.step.run("flight", lambda: "F-1")
        ctx.step.compensate("flight", undo, flight)
        car = await ctx.step.run("car", lambda: "C-2")
        ctx.step.compensate("car", undo, car)
        await ctx.step.run("hotel", refuse)

    async with running_worker(live_server, [trip], transport="stream"):
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])

    assert run.status == "failed"
    assert undone == ["C-2", "F-1"]
    steps = {step.id: step for step in await client.get_run_steps(run.id)}
    assert steps["car/undo"].kind == "compensate"
    assert steps["car/undo"].status == "completed"
    assert steps["car/undo"].output == "undid C-2"
    assert steps["flight/undo"].status == "completed"
    assert steps["car/undo"].started_at <= steps["flight/undo"].started_at  # type: ignore[operator]
    assert steps["hotel"].status == "failed"


async def test_a_failing_undo_is_recorded_and_the_others_still_run_only_when_the_run_fails_for_good(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    event = unique_name("saga")
    undone: list[str] = []
    attempts = 0

    def broken_undo() -> None:
        raise RuntimeError("refund service down")

    def handler_error() -> None:
        nonlocal attempts
        attempts += 1
        raise RuntimeError(f"attempt {attempts}")

    @ironflow.function(id=unique_name("saga"), triggers=[ironflow.on_event(event)], retry=FAST_RETRY)
    async def saga(ctx: ironflow.Context) -> None:
        await ctx.step.run("one", lambda: 1)
        ctx.step.compensate("one", undone.append, "one")
        await ctx.step.run("two", lambda: 2)
        ctx.step.compensate("two", broken_undo)
        handler_error()  # outside any step: retried per policy, compensated on the last attempt

    async with running_worker(live_server, [saga], transport="stream"):
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])

    assert run.status == "failed"
    assert attempts == 3
    assert undone == ["one"]  # once, after the third attempt; not after the first two
    steps = {step.id: step for step in await client.get_run_steps(run.id)}
    assert steps["two/undo"].status == "failed"
    assert steps["two/undo"].error is not None
    assert "refund service down" in steps["two/undo"].error.message
    assert steps["one/undo"].status == "completed"


async def test_compensate_names_a_completed_step(live_server: LiveServer, client: ironflow.Client) -> None:
    event = unique_name("bad-saga")

    @ironflow.function(id=unique_name("bad-saga"), triggers=[ironflow.on_event(event)])
    async def bad(ctx: ironflow.Context) -> str:
        try:
            ctx.step.compensate("never-ran", lambda: None)
        except ValueError as exc:
            return str(exc)
        return "accepted?"

    async with running_worker(live_server, [bad], transport="stream"):
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])
    assert run.status == "completed"
    assert "no completed step" in run.output


async def test_a_paused_run_resumes_from_its_failed_step_keeping_the_earlier_ones(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    event = unique_name("pausing")
    calls: list[str] = []
    broken = {"charge": True}

    def charge() -> str:
        calls.append("charge")
        if broken["charge"]:
            raise RuntimeError("card service down")
        return "charged"

    @ironflow.function(
        id=unique_name("pausing"),
        triggers=[ironflow.on_event(event)],
        retry=ironflow.Retry(max_attempts=1, on_exhausted="pause"),
    )
    async def pausing(ctx: ironflow.Context) -> list[str]:
        reserved = await ctx.step.run("reserve", lambda: calls.append("reserve") or "reserved")
        return [reserved, await ctx.step.run("charge", charge)]

    async with running_worker(live_server, [pausing], transport="stream"):
        run_id = (await client.emit(event, {})).run_ids[0]
        paused = await wait_for_run(client, run_id, statuses=["paused"])
        assert paused.status == "paused"
        broken["charge"] = False
        await client.resume_run(run_id)
        run = await wait_for_run(client, run_id)

    assert run.status == "completed", run.error
    assert run.output == ["reserved", "charged"]
    assert calls == ["reserve", "charge", "charge"]  # the completed step did not run again
