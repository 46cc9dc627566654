"""Steps that suspend a run: sleep, sleep_until and wait_for_event, end to end on both backends and
both worker transports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import ironflow
from tests.conftest import unique_name
from tests.integration.conftest import LiveServer
from tests.integration.workers import lifecycle, running_worker, system_events, wait_for_run
from tests.support import eventually


@pytest.fixture(params=["stream", "poll"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def client(live_server: LiveServer) -> AsyncIterator[ironflow.Client]:
    async with ironflow.Client(live_server.url) as client:
        yield client


async def _status(client: ironflow.Client, run_id: str, status: str) -> bool:
    return (await client.get_run(run_id)).status == status


async def test_a_sleep_suspends_the_run_and_resumes_it_after_the_duration(
    live_server: LiveServer, client: ironflow.Client, transport: str
) -> None:
    event = unique_name("nap")
    calls: list[str] = []

    @ironflow.function(id=unique_name("napper"), triggers=[ironflow.on_event(event)])
    async def napper(ctx: ironflow.Context) -> str:
        await ctx.step.run("before", calls.append, "before")
        await ctx.step.sleep("nap", "2s")
        await ctx.step.run("after", calls.append, "after")
        return "rested"

    async with running_worker(live_server, [napper], transport=transport):
        run_id = (await client.emit(event, {})).run_ids[0]
        await eventually(lambda: _status(client, run_id, "sleeping"), what="the run to sleep")
        steps = {step.id: step for step in await client.get_run_steps(run_id)}
        assert steps["nap"].status == "sleeping"
        assert steps["nap"].kind == "sleep"
        run = await wait_for_run(client, run_id)

    assert run.status == "completed", run.error
    assert run.output == "rested"
    assert calls == ["before", "after"]  # the first step is not run again after the sleep
    steps = {step.id: step for step in await client.get_run_steps(run_id)}
    assert steps["nap"].status == "completed"
    assert steps["nap"].started_at is not None
    assert steps["nap"].ended_at is not None
    assert steps["nap"].ended_at - steps["nap"].started_at >= timedelta(seconds=2)
    assert run.created_at is not None
    assert run.ended_at is not None
    assert run.ended_at - run.created_at >= timedelta(seconds=2)
    subjects = lifecycle(await system_events(live_server, run_id), run_id)
    assert (
        subjects.index("step.nap.sleeping")
        < subjects.index("sleeping")
        < subjects.index("step.nap.completed")
    )
    assert subjects.count("completed") == 1


async def test_sleep_until_a_past_time_resumes_at_once_and_a_naive_time_fails_clearly(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    event = unique_name("until")

    @ironflow.function(id=unique_name("until"), triggers=[ironflow.on_event(event)])
    async def until(ctx: ironflow.Context) -> str:
        when = datetime.now(UTC) - timedelta(hours=1)
        await ctx.step.sleep_until("past", when)
        await ctx.step.sleep_until("iso", when.isoformat())
        if ctx.event.data.get("naive"):
            await ctx.step.sleep_until("naive", datetime(2030, 1, 1))  # naive on purpose
        return "done"

    async with running_worker(live_server, [until], transport="stream"):
        good = (await client.emit(event, {})).run_ids[0]
        naive = (await client.emit(event, {"naive": True})).run_ids[0]
        done = await wait_for_run(client, good)
        failed = await wait_for_run(client, naive)

    assert done.status == "completed", done.error
    assert failed.status == "failed"
    assert failed.attempt == 1  # a mistake in the handler is not retried
    assert failed.error is not None
    assert "has no time zone" in failed.error.message


@pytest.mark.parametrize("duration", [-1, "-5s", "soon", "10 minutes"])
async def test_a_negative_or_unparsable_duration_fails_the_run_with_a_clear_error(
    live_server: LiveServer, client: ironflow.Client, duration: Any
) -> None:
    event = unique_name("bad")

    @ironflow.function(id=unique_name("bad-sleep"), triggers=[ironflow.on_event(event)])
    async def bad_sleep(ctx: ironflow.Context) -> None:
        await ctx.step.sleep("nap", duration)

    async with running_worker(live_server, [bad_sleep], transport="stream"):
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])

    assert run.status == "failed"
    assert run.attempt == 1
    assert run.error is not None
    assert run.error.code == "StepArgumentError"
    assert "step.sleep('nap')" in run.error.message
    assert "duration" in run.error.message


def _waiting_function(event: str, reply: str, seen: list[Any]) -> ironflow.Function:
    @ironflow.function(id=unique_name("waiter"), triggers=[ironflow.on_event(event)])
    async def waiter(ctx: ironflow.Context) -> dict[str, Any]:
        got = await ctx.step.wait_for_event(
            "reply",
            event=reply,
            match="async.data.orderId == event.data.orderId",
            timeout=ctx.event.data.get("timeout", "30s"),
        )
        seen.append(got)
        if got is None:
            return {"timed_out": True}
        return {"data": got.data, "name": got.name, "id": got.id}

    return waiter


async def test_wait_for_event_resumes_with_the_matching_event_only(
    live_server: LiveServer, client: ironflow.Client, transport: str
) -> None:
    event, reply = unique_name("order"), unique_name("shipment")
    seen: list[Any] = []
    waiter = _waiting_function(event, reply, seen)

    async with running_worker(live_server, [waiter], transport=transport):
        run_id = (await client.emit(event, {"orderId": "o-1"})).run_ids[0]
        await eventually(lambda: _status(client, run_id, "waiting"), what="the run to wait")
        steps = {step.id: step for step in await client.get_run_steps(run_id)}
        assert steps["reply"].status == "waiting"

        await client.emit(reply, {"orderId": "o-2"})  # the wrong key: no match
        await client.emit(unique_name("other"), {"orderId": "o-1"})  # the wrong name: no match
        assert (await client.get_run(run_id)).status == "waiting"

        matching = await client.emit(reply, {"orderId": "o-1", "carrier": "ups"})
        run = await wait_for_run(client, run_id)

    assert run.status == "completed", run.error
    assert run.output == {
        "data": {"orderId": "o-1", "carrier": "ups"},
        "name": reply,
        "id": matching.event_id,
    }
    assert len(seen) == 1
    assert isinstance(seen[0], ironflow.Event)
    subjects = lifecycle(await system_events(live_server, run_id), run_id)
    assert "step.reply.waiting" in subjects
    assert subjects.index("waiting") < subjects.index("step.reply.completed")


async def test_a_timed_out_wait_returns_none_and_the_run_completes(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    event, reply = unique_name("order"), unique_name("shipment")
    seen: list[Any] = []
    waiter = _waiting_function(event, reply, seen)

    async with running_worker(live_server, [waiter], transport="stream"):
        run = await wait_for_run(
            client, (await client.emit(event, {"orderId": "o-9", "timeout": "1s"})).run_ids[0]
        )

    assert run.status == "completed", run.error
    assert run.output == {"timed_out": True}
    assert seen == [None]
    [step] = [step for step in await client.get_run_steps(run.id) if step.id == "reply"]
    assert step.status == "completed"
    assert step.output is None


async def test_one_event_resumes_every_run_it_matches_and_none_other(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    event, reply = unique_name("order"), unique_name("shipment")
    seen: list[Any] = []
    waiter = _waiting_function(event, reply, seen)

    async with running_worker(live_server, [waiter], transport="stream"):
        shared = [(await client.emit(event, {"orderId": "same"})).run_ids[0] for _ in range(3)]
        other = (await client.emit(event, {"orderId": "different"})).run_ids[0]
        for run_id in [*shared, other]:
            await eventually(lambda run_id=run_id: _status(client, run_id, "waiting"), what="runs to wait")
        await client.emit(reply, {"orderId": "same"})
        for run_id in shared:
            assert (await wait_for_run(client, run_id)).status == "completed"
        assert (await client.get_run(other)).status == "waiting"
        await client.cancel_run(other)


async def test_a_wait_without_match_takes_the_next_event_of_that_name_and_bad_cel_is_a_step_error(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    event, reply = unique_name("order"), unique_name("ping")

    @ironflow.function(id=unique_name("plain"), triggers=[ironflow.on_event(event)])
    async def plain(ctx: ironflow.Context) -> Any:
        try:
            await ctx.step.wait_for_event("broken", event=reply, match="async.data.x ==", timeout="5s")
        except ironflow.StepError as exc:
            broken = exc.code
        got = await ctx.step.wait_for_event("any", event=reply, timeout="30s")
        return {"broken": broken, "got": got.data if got else None}

    async with running_worker(live_server, [plain], transport="stream"):
        run_id = (await client.emit(event, {})).run_ids[0]

        async def waiting_on_any() -> bool:
            steps = {step.id: step.status for step in await client.get_run_steps(run_id)}
            return steps.get("any") == "waiting"

        await eventually(waiting_on_any, what="the run to wait for any ping")
        await client.emit(reply, {"n": 1})
        run = await wait_for_run(client, run_id)

    assert run.status == "completed", run.error
    assert run.output == {"broken": "INVALID_ARGUMENT", "got": {"n": 1}}


async def test_cancel_on_cancels_the_matching_running_instance_only(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    event, cancel = unique_name("order"), unique_name("order-cancelled")

    @ironflow.function(
        id=unique_name("cancellable"),
        triggers=[ironflow.on_event(event)],
        cancel_on=[ironflow.on_event(cancel, if_="async.data.orderId == event.data.orderId")],
    )
    async def cancellable(ctx: ironflow.Context) -> str:
        await ctx.step.sleep("long", "1h")
        return "never"

    async with running_worker(live_server, [cancellable], transport="stream"):
        doomed = (await client.emit(event, {"orderId": "a"})).run_ids[0]
        spared = (await client.emit(event, {"orderId": "b"})).run_ids[0]
        for run_id in (doomed, spared):
            await eventually(lambda run_id=run_id: _status(client, run_id, "sleeping"), what="runs to sleep")
        await client.emit(cancel, {"orderId": "a"})
        run = await wait_for_run(client, doomed)
        assert (await client.get_run(spared)).status == "sleeping"
        await client.cancel_run(spared)

    assert run.status == "cancelled"
    assert run.error is not None
    assert cancel in run.error.message
