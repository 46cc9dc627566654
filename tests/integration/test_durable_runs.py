"""Durable execution end to end: emit -> run -> a pull worker runs the steps -> outcome.

One behavioural suite for both transports (a Connect stream, HTTP long-poll) on both backends
(SQLite + memory stream, Postgres + Redis), over real sockets.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

import ironflow
from ironflow.v1 import functions_pb2, functions_pb2_grpc, runs_pb2, workers_pb2, workers_pb2_grpc
from tests.conftest import unique_name
from tests.integration.conftest import LiveServer
from tests.integration.workers import lifecycle, running_worker, system_events, wait_for_run
from tests.support import eventually

FAST_RETRY = ironflow.Retry(max_attempts=3, initial_delay=0.05, factor=2.0, max_delay=1)


@pytest.fixture(params=["stream", "poll"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def client(live_server: LiveServer) -> Any:
    async with ironflow.Client(live_server.url) as client:
        yield client


async def test_an_emitted_event_runs_every_step_and_completes_in_order(
    live_server: LiveServer, client: ironflow.Client, transport: str
) -> None:
    event = unique_name("order")
    calls: list[str] = []

    def reserve(order_id: str) -> dict[str, str]:  # a sync step runs in a thread
        calls.append("reserve")
        return {"reservation": f"r-{order_id}"}

    async def charge(amount: float) -> float:
        calls.append("charge")
        return amount * 2

    @ironflow.function(id=unique_name("orders"), triggers=[ironflow.on_event(event)])
    async def handler(ctx: ironflow.Context) -> dict[str, Any]:
        reservation = await ctx.step.run("reserve", reserve, ctx.event.data["orderId"])
        charged = await ctx.step.run("charge", charge, 10.5)
        again = await ctx.step.run("charge", charge, 1)
        return {"reservation": reservation, "charged": charged, "again": again, "event": ctx.event.name}

    async with running_worker(live_server, [handler], transport=transport):
        emitted = await client.emit(event, {"orderId": "o1"})
        assert len(emitted.run_ids) == 1
        run = await wait_for_run(client, emitted.run_ids[0])

    assert run.status == "completed", run.error
    assert run.output == {"reservation": {"reservation": "r-o1"}, "charged": 21, "again": 2, "event": event}
    assert run.function_id == handler.id
    assert run.event_id == emitted.event_id
    assert run.started_at is not None
    assert run.ended_at is not None
    assert calls == ["reserve", "charge", "charge"]
    steps = await client.get_run_steps(run.id)
    assert [(s.id, s.name, s.status, s.attempt) for s in steps] == [
        ("reserve", "reserve", "completed", 1),
        ("charge", "charge", "completed", 1),
        ("charge:1", "charge", "completed", 1),
    ]
    assert steps[1].output == 21

    async def all_events() -> list[str] | None:
        subjects = lifecycle(await system_events(live_server, run.id), run.id)
        return subjects if subjects and subjects[-1] == "completed" else None

    assert await eventually(all_events, what="the lifecycle events") == [
        "created",
        "started",
        "step.reserve.started",
        "step.reserve.completed",
        "step.charge.started",
        "step.charge.completed",
        "step.charge:1.started",
        "step.charge:1.completed",
        "completed",
    ]


async def test_a_step_that_fails_twice_then_succeeds_completes_on_attempt_three(
    live_server: LiveServer, client: ironflow.Client, transport: str
) -> None:
    event = unique_name("flaky")
    attempts: list[int] = []

    async def flaky() -> str:
        attempts.append(len(attempts) + 1)
        if len(attempts) < 3:
            raise ConnectionError(f"try {len(attempts)} failed")
        return "ok"

    @ironflow.function(id=unique_name("flaky"), triggers=[ironflow.on_event(event)], retry=FAST_RETRY)
    async def handler(ctx: ironflow.Context) -> dict[str, Any]:
        result = await ctx.step.run("call", flaky)
        return {"result": result, "attempt": ctx.attempt}

    async with running_worker(live_server, [handler], transport=transport):
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])

    assert run.status == "completed", run.error
    assert run.output == {"result": "ok", "attempt": 3}
    assert run.attempt == 3
    assert attempts == [1, 2, 3]
    [step] = await client.get_run_steps(run.id)
    assert (step.status, step.attempt, step.output) == ("completed", 3, "ok")
    subjects = lifecycle(await system_events(live_server, run.id), run.id)
    assert subjects.count("step.call.retrying") == 2
    assert subjects.count("step.call.started") == 3


async def test_non_retryable_error_fails_the_run_after_one_attempt(
    live_server: LiveServer, client: ironflow.Client, transport: str
) -> None:
    event = unique_name("card")
    attempts: list[int] = []

    async def charge() -> None:
        attempts.append(1)
        raise ironflow.NonRetryableError("card declined")

    @ironflow.function(id=unique_name("card"), triggers=[ironflow.on_event(event)], retry=FAST_RETRY)
    async def handler(ctx: ironflow.Context) -> None:
        await ctx.step.run("charge", charge)

    async with running_worker(live_server, [handler], transport=transport):
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])

    assert run.status == "failed"
    assert run.error is not None
    assert run.error.message == "card declined"
    assert attempts == [1]
    [step] = await client.get_run_steps(run.id)
    assert (step.status, step.attempt) == ("failed", 1)
    subjects = lifecycle(await system_events(live_server, run.id), run.id)
    assert "step.charge.failed" in subjects
    assert subjects[-1] == "failed"


async def test_exhausted_retries_fail_the_run_with_the_error_recorded(
    live_server: LiveServer, client: ironflow.Client, transport: str
) -> None:
    event = unique_name("down")
    attempts: list[int] = []

    def call_api() -> None:
        attempts.append(1)
        raise TimeoutError("upstream timed out")

    @ironflow.function(id=unique_name("down"), triggers=[ironflow.on_event(event)], retry=FAST_RETRY)
    async def handler(ctx: ironflow.Context) -> None:
        await ctx.step.run("call-api", call_api)

    async with running_worker(live_server, [handler], transport=transport):
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])

    assert run.status == "failed"
    assert run.error is not None
    assert (run.error.code, run.error.message) == ("TimeoutError", "upstream timed out")
    assert len(attempts) == 3
    [step] = await client.get_run_steps(run.id)
    assert (step.status, step.attempt) == ("failed", 3)
    assert step.error is not None
    assert step.error.message == "upstream timed out"


async def test_a_handler_can_catch_a_step_that_failed_for_good(
    live_server: LiveServer, client: ironflow.Client, transport: str
) -> None:
    event = unique_name("caught")

    def broken() -> None:
        raise ironflow.NonRetryableError("no such customer")

    @ironflow.function(id=unique_name("caught"), triggers=[ironflow.on_event(event)], retry=FAST_RETRY)
    async def handler(ctx: ironflow.Context) -> dict[str, str]:
        try:
            await ctx.step.run("lookup", broken)
        except ironflow.StepError as exc:
            return {"fallback": exc.message}
        return {"fallback": ""}

    async with running_worker(live_server, [handler], transport=transport):
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])

    assert run.status == "completed", run.error
    assert run.output == {"fallback": "no such customer"}


async def test_errors_outside_steps_follow_the_retry_policy(
    live_server: LiveServer, client: ironflow.Client, transport: str
) -> None:
    event = unique_name("outside")
    seen: list[int] = []

    @ironflow.function(id=unique_name("outside"), triggers=[ironflow.on_event(event)], retry=FAST_RETRY)
    async def handler(ctx: ironflow.Context) -> int:
        seen.append(ctx.attempt)
        if ctx.attempt < 2:
            raise ironflow.RetryAfterError("not yet", retry_after="50ms")
        return ctx.attempt

    async with running_worker(live_server, [handler], transport=transport):
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])

    assert (run.status, run.output, run.attempt) == ("completed", 2, 2)
    assert seen == [1, 2]


async def test_a_step_output_that_is_not_json_fails_with_a_clear_error(
    live_server: LiveServer, client: ironflow.Client, transport: str
) -> None:
    event = unique_name("bad-output")
    attempts: list[int] = []

    def make_set() -> set[int]:
        attempts.append(1)
        return {1, 2}

    @ironflow.function(id=unique_name("bad-output"), triggers=[ironflow.on_event(event)], retry=FAST_RETRY)
    async def handler(ctx: ironflow.Context) -> None:
        await ctx.step.run("make-set", make_set)

    async with running_worker(live_server, [handler], transport=transport):
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])

    assert run.status == "failed"
    assert run.error is not None
    assert "not JSON-serialisable" in run.error.message
    assert "make-set" in run.error.message
    assert attempts == [1]  # not retried


async def test_cancelling_a_running_run_stops_the_worker_and_ends_cancelled(
    live_server: LiveServer, client: ironflow.Client, transport: str
) -> None:
    event = unique_name("long")
    started = threading.Event()
    stopped: list[str] = []

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopped.append("cancelled")
            raise

    @ironflow.function(id=unique_name("long"), triggers=[ironflow.on_event(event)])
    async def handler(ctx: ironflow.Context) -> None:
        try:
            await ctx.step.run("wait", forever)
        except Exception:  # noqa: BLE001 - proves user code cannot swallow the cancellation
            stopped.append("swallowed")

    async with running_worker(live_server, [handler], transport=transport) as worker:
        run_id = (await client.emit(event, {})).run_ids[0]
        await eventually(lambda: _is_set(started), what="the step to start")
        cancelled = await client.cancel_run(run_id, reason="customer gave up")
        assert cancelled.status == "cancelled"
        await eventually(lambda: _equals(stopped, ["cancelled"]), what="the worker to stop the step")
        await eventually(lambda: _equals(worker.running_jobs, 0), what="the job slot to free")

    run = await client.get_run(run_id)
    assert run.status == "cancelled"
    assert run.error is not None
    assert run.error.message == "customer gave up"
    assert lifecycle(await system_events(live_server, run_id), run_id)[-1] == "cancelled"


async def test_a_run_past_its_timeout_fails(
    live_server: LiveServer, client: ironflow.Client, transport: str
) -> None:
    event = unique_name("slow")

    async def forever() -> None:
        await asyncio.Event().wait()

    @ironflow.function(id=unique_name("slow"), triggers=[ironflow.on_event(event)], timeout="500ms")
    async def handler(ctx: ironflow.Context) -> None:
        await ctx.step.run("wait", forever)

    async with running_worker(live_server, [handler], transport=transport) as worker:
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])
        await eventually(lambda: _equals(worker.running_jobs, 0), what="the worker to stop the job")

    assert run.status == "failed"
    assert run.error is not None
    assert run.error.code == "TIMEOUT"


async def test_trigger_conditions_compare_numbers_and_skip_missing_fields(
    live_server: LiveServer, client: ironflow.Client, transport: str
) -> None:
    event = unique_name("big")

    @ironflow.function(
        id=unique_name("big"), triggers=[ironflow.on_event(event, if_="event.data.total > 100")]
    )
    async def handler(ctx: ironflow.Context) -> Any:
        return ctx.event.data["total"]

    async with running_worker(live_server, [handler], transport=transport):
        started = [await client.emit(event, {"total": total}) for total in (120, 120.5)]
        skipped = [await client.emit(event, data) for data in ({"total": 99.5}, {"other": 1}, {"total": "x"})]
        runs = [await wait_for_run(client, emitted.run_ids[0]) for emitted in started]

    assert [len(emitted.run_ids) for emitted in started] == [1, 1]
    assert [emitted.run_ids for emitted in skipped] == [[], [], []]
    assert [run.output for run in runs] == [120, 120.5]


async def test_wildcard_triggers_and_idempotent_emits_share_runs(
    live_server: LiveServer, client: ironflow.Client, transport: str
) -> None:
    prefix = unique_name("shop")

    @ironflow.function(id=unique_name("any-order"), triggers=[ironflow.on_event(f"{prefix}.order.*")])
    async def handler(ctx: ironflow.Context) -> str:
        return ctx.event.name

    async with running_worker(live_server, [handler], transport=transport):
        first = await client.emit(f"{prefix}.order.placed", {}, idempotency_key="k1")
        again = await client.emit(f"{prefix}.order.placed", {}, idempotency_key="k1")
        run = await wait_for_run(client, first.run_ids[0])

    assert again.duplicate
    assert again.run_ids == first.run_ids
    assert run.output == f"{prefix}.order.placed"


async def test_a_report_for_a_job_the_worker_does_not_hold_is_rejected(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    event = unique_name("fenced")

    @ironflow.function(id=unique_name("fenced"), triggers=[ironflow.on_event(event)])
    async def handler(ctx: ironflow.Context) -> None:
        return None

    # Register the function with no worker running, so the run stays queued.
    target = live_server.url.removeprefix("http://")
    async with grpc.aio.insecure_channel(target) as channel:
        registry = functions_pb2_grpc.RegistryServiceStub(channel)
        request = functions_pb2.RegisterFunctionsRequest(functions=[handler.definition()])
        await registry.RegisterFunctions(request)
    run_id = (await client.emit(event, {})).run_ids[0]
    async with grpc.aio.insecure_channel(target) as channel:
        stub = workers_pb2_grpc.WorkerServiceStub(channel)
        forged = runs_pb2.JobReport(
            run_id=run_id,
            lease_token="lse_forged",
            execution_sequence=1,
            completed=struct_pb2.Value(string_value="stolen"),
        )
        response = await stub.Report(workers_pb2.ReportRequest(worker_id="intruder", reports=[forged]))
        assert list(response.accepted) == [False]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Report(
                workers_pb2.ReportRequest(worker_id="intruder", reports=[runs_pb2.JobReport(run_id=run_id)])
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "reports[0].lease_token" in (refused.value.details() or "")
    run = await client.get_run(run_id)
    assert (run.status, run.output) == ("queued", None)
    assert await client.get_run_steps(run_id) == []


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"triggers": [ironflow.on_event("order.placed", if_="event.data.total >")]}, "triggers[0].if"),
        ({"triggers": [ironflow.on_event("order..placed")]}, "triggers[0].event"),
    ],
)
async def test_a_worker_with_a_bad_definition_is_refused_naming_the_field(
    live_server: LiveServer, transport: str, options: dict[str, Any], field: str
) -> None:
    @ironflow.function(id=unique_name("bad"), **options)
    async def handler(ctx: ironflow.Context) -> None:
        return None

    worker = ironflow.Worker(live_server.url, [handler], transport=transport)  # type: ignore[arg-type]
    with pytest.raises(ironflow.IronflowError) as refused:
        await asyncio.wait_for(worker.run(), timeout=10)
    assert refused.value.code == "INVALID_ARGUMENT"
    assert field in refused.value.message


async def _is_set(flag: threading.Event) -> bool:
    return flag.is_set()


async def _equals(value: object, expected: object) -> bool:
    return value == expected


async def test_a_worker_with_more_slots_than_one_lease_can_carry_still_gets_jobs(
    live_server: LiveServer, client: ironflow.Client, transport: str
) -> None:
    """A worker may hold up to 1000 jobs, but the scheduler leases at most 500 runs per call: the
    gateway asks in batches it can grant, so a 1000-slot worker gets jobs on either transport."""
    event = unique_name("wide")

    @ironflow.function(id=unique_name("wide"), triggers=[ironflow.on_event(event)])
    async def handler(ctx: ironflow.Context) -> int:
        return await ctx.step.run("one", lambda: 1)

    async with running_worker(live_server, [handler], transport=transport, max_concurrent_jobs=1000):
        run_id = (await client.emit(event, {})).run_ids[0]
        run = await wait_for_run(client, run_id)
    assert run.status == "completed", run.error
