"""One behavioural suite, run in pull mode (a worker dials out over a stream) and in push mode
(the scheduler POSTs signed requests to an `ironflow.serve` app run by uvicorn), on both backends.

The same handler code must behave the same way whichever way its jobs arrive: steps run once and in
order, failed steps are retried with backoff, NonRetryableError fails at once, sleeps and event
waits suspend the run, and invoke returns a child's output or raises its failure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import ironflow
from tests.conftest import unique_name
from tests.integration.conftest import LiveServer, running_server, server_settings
from tests.integration.push import SIGNING_KEY, push_functions
from tests.integration.workers import running_worker, wait_for_run
from tests.support import eventually

FAST_RETRY = ironflow.Retry(max_attempts=3, initial_delay=0.05, factor=2.0, max_delay=1)


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
    """The functions, reachable the way their mode says."""
    if mode == "pull":
        async with running_worker(server, functions, transport="stream"):
            yield
    else:
        async with push_functions(server.url, functions):
            yield


async def test_steps_run_once_in_order_around_a_sleep(
    server: LiveServer, client: ironflow.Client, mode: str
) -> None:
    event = unique_name("order")
    calls: list[str] = []

    def step(name: str, value: int) -> int:
        calls.append(name)
        return value

    @ironflow.function(id=unique_name("orders"), triggers=[ironflow.on_event(event)], mode=mode)
    async def handler(ctx: ironflow.Context) -> dict[str, Any]:
        reserved = await ctx.step.run("reserve", step, "reserve", ctx.event.data["qty"])
        charged = await ctx.step.run("charge", step, "charge", reserved * 10)
        await ctx.step.sleep("cool-down", "1s")
        shipped = await ctx.step.run("ship", step, "ship", charged + 1)
        return {"reserved": reserved, "charged": charged, "shipped": shipped}

    async with deployed(server, mode, [handler]):
        run = await wait_for_run(client, (await client.emit(event, {"qty": 2})).run_ids[0])

    assert run.status == "completed", run.error
    assert run.output == {"reserved": 2, "charged": 20, "shipped": 21}
    assert calls == ["reserve", "charge", "ship"]
    steps = await client.get_run_steps(run.id)
    assert [(s.id, s.status, s.attempt) for s in steps] == [
        ("reserve", "completed", 1),
        ("charge", "completed", 1),
        ("cool-down", "completed", 1),
        ("ship", "completed", 1),
    ]
    assert steps[2].ended_at is not None
    assert steps[2].started_at is not None
    assert (steps[2].ended_at - steps[2].started_at).total_seconds() >= 0.9


async def test_a_failing_step_is_retried_until_it_succeeds(
    server: LiveServer, client: ironflow.Client, mode: str
) -> None:
    event = unique_name("flaky")
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(len(attempts) + 1)
        if len(attempts) < 3:
            raise ConnectionError(f"attempt {len(attempts)} failed")
        return "ok"

    @ironflow.function(
        id=unique_name("flaky"), triggers=[ironflow.on_event(event)], retry=FAST_RETRY, mode=mode
    )
    async def handler(ctx: ironflow.Context) -> str:
        return str(await ctx.step.run("call", flaky))

    async with deployed(server, mode, [handler]):
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])

    assert run.status == "completed", run.error
    assert run.output == "ok"
    assert attempts == [1, 2, 3]
    (step,) = await client.get_run_steps(run.id)
    assert (step.status, step.attempt) == ("completed", 3)


async def test_retries_run_out_and_the_step_error_fails_the_run(
    server: LiveServer, client: ironflow.Client, mode: str
) -> None:
    event = unique_name("broken")
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("the warehouse is on fire")

    retry = ironflow.Retry(max_attempts=2, initial_delay=0.05, factor=1.0, max_delay=1)

    @ironflow.function(id=unique_name("broken"), triggers=[ironflow.on_event(event)], retry=retry, mode=mode)
    async def handler(ctx: ironflow.Context) -> None:
        await ctx.step.run("call", broken)

    async with deployed(server, mode, [handler]):
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])

    assert run.status == "failed"
    assert run.error is not None
    assert "the warehouse is on fire" in run.error.message
    assert len(calls) == 2
    (step,) = await client.get_run_steps(run.id)
    assert (step.status, step.attempt) == ("failed", 2)


async def test_non_retryable_error_fails_the_run_at_once(
    server: LiveServer, client: ironflow.Client, mode: str
) -> None:
    event = unique_name("invalid")
    calls: list[int] = []

    def refuse() -> None:
        calls.append(1)
        raise ironflow.NonRetryableError("card number is invalid")

    @ironflow.function(
        id=unique_name("refuse"), triggers=[ironflow.on_event(event)], retry=FAST_RETRY, mode=mode
    )
    async def handler(ctx: ironflow.Context) -> None:
        await ctx.step.run("charge", refuse)

    async with deployed(server, mode, [handler]):
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])

    assert run.status == "failed"
    assert run.error is not None
    assert "card number is invalid" in run.error.message
    assert calls == [1]
    (step,) = await client.get_run_steps(run.id)
    assert (step.status, step.attempt) == ("failed", 1)


async def test_wait_for_event_resumes_with_the_matching_event_or_none_after_the_timeout(
    server: LiveServer, client: ironflow.Client, mode: str
) -> None:
    event, shipped = unique_name("placed"), unique_name("shipped")

    @ironflow.function(id=unique_name("waiter"), triggers=[ironflow.on_event(event)], mode=mode)
    async def handler(ctx: ironflow.Context) -> dict[str, Any]:
        timeout = ctx.event.data["timeout"]
        got = await ctx.step.wait_for_event(
            "shipment", event=shipped, match="async.data.orderId == event.data.orderId", timeout=timeout
        )
        return {"carrier": got.data["carrier"] if got is not None else None}

    async with deployed(server, mode, [handler]):
        waiting = (await client.emit(event, {"orderId": "o1", "timeout": "1m"})).run_ids[0]
        timing_out = (await client.emit(event, {"orderId": "o2", "timeout": "1s"})).run_ids[0]

        async def is_waiting() -> bool:
            return (await client.get_run(waiting)).status == "waiting"

        await eventually(is_waiting, what="the run to wait for its shipment")
        await client.emit(shipped, {"orderId": "other", "carrier": "wrong"})
        await client.emit(shipped, {"orderId": "o1", "carrier": "ups"})
        resumed = await wait_for_run(client, waiting)
        timed_out = await wait_for_run(client, timing_out)

    assert (resumed.status, resumed.output) == ("completed", {"carrier": "ups"})
    assert (timed_out.status, timed_out.output) == ("completed", {"carrier": None})


async def test_invoke_returns_the_child_output_and_raises_its_failure(
    server: LiveServer, client: ironflow.Client, mode: str
) -> None:
    event = unique_name("parent")

    @ironflow.function(id=unique_name("double"), mode=mode)
    async def double(ctx: ironflow.Context) -> int:
        if ctx.event.data["n"] < 0:
            raise ironflow.NonRetryableError("negative numbers are not allowed")
        return int(await ctx.step.run("double", lambda: ctx.event.data["n"] * 2))

    @ironflow.function(id=unique_name("parent"), triggers=[ironflow.on_event(event)], mode=mode)
    async def parent(ctx: ironflow.Context) -> dict[str, Any]:
        doubled = await ctx.step.invoke(double, {"n": 21}, name="good")
        try:
            await ctx.step.invoke(double, {"n": -1}, name="bad")
        except ironflow.InvokeError as exc:
            return {"doubled": doubled, "error": exc.cause.message, "child": exc.function_id}
        return {"doubled": doubled, "error": None}

    async with deployed(server, mode, [double, parent]):
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])

    assert run.status == "completed", run.error
    assert run.output["doubled"] == 42
    assert run.output["child"] == double.id
    assert "negative numbers are not allowed" in run.output["error"]
