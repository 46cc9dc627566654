"""RegistryService: versioned definitions, validation at registration, reads through the SDK and CLI."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

import ironflow
from ironflow.v1 import functions_pb2, functions_pb2_grpc
from tests.integration.conftest import LiveServer


@pytest.fixture
async def registry(live_server: LiveServer) -> AsyncIterator[functions_pb2_grpc.RegistryServiceStub]:
    async with grpc.aio.insecure_channel(live_server.url.removeprefix("http://")) as channel:
        yield functions_pb2_grpc.RegistryServiceStub(channel)


def _definition(
    function_id: str = "order-handler", *, condition: str = ""
) -> functions_pb2.FunctionDefinition:
    trigger = functions_pb2.Trigger(event=functions_pb2.EventTrigger(event="order.placed"))
    if condition:
        setattr(trigger.event, "if", condition)
    return functions_pb2.FunctionDefinition(id=function_id, triggers=[trigger])


def _admission_definition(**controls: dict[str, Any]) -> functions_pb2.FunctionDefinition:
    """A function with flow control (throttle, rate limit, idempotency) given as its JSON form."""
    definition = json_format.ParseDict({"id": "f", **controls}, functions_pb2.FunctionDefinition())
    definition.triggers.append(functions_pb2.Trigger(event=functions_pb2.EventTrigger(event="order.placed")))
    return definition


def _cron_definition(
    schedule: str, *, timezone: str = "", catch_up: bool = False, function_id: str = "f"
) -> functions_pb2.FunctionDefinition:
    """A function started by an event and by a cron schedule (its second trigger)."""
    cron = functions_pb2.CronTrigger(schedule=schedule, timezone=timezone, catch_up=catch_up)
    return functions_pb2.FunctionDefinition(
        id=function_id,
        triggers=[
            functions_pb2.Trigger(event=functions_pb2.EventTrigger(event="report.requested")),
            functions_pb2.Trigger(cron=cron),
        ],
    )


async def test_versions_increase_only_on_change(
    registry: functions_pb2_grpc.RegistryServiceStub, live_server: LiveServer
) -> None:
    request = functions_pb2.RegisterFunctionsRequest
    first = await registry.RegisterFunctions(request(functions=[_definition()]))
    again = await registry.RegisterFunctions(request(functions=[_definition()]))
    changed = await registry.RegisterFunctions(
        request(functions=[_definition(condition="event.data.total > 100")])
    )
    assert [first.functions[0].version, again.functions[0].version, changed.functions[0].version] == [1, 1, 2]

    async with ironflow.Client(live_server.url) as client:
        current = await client.get_function("order-handler")
        original = await client.get_function("order-handler", version=1)
        listed = await client.list_functions()
    assert current.version == 2
    assert current.triggers == [{"event": {"event": "order.placed", "if": "event.data.total > 100"}}]
    assert original.version == 1
    assert original.triggers == [{"event": {"event": "order.placed"}}]
    assert [(f.id, f.version, f.status, f.mode) for f in listed] == [("order-handler", 2, "active", "pull")]


async def test_invalid_cel_is_rejected_naming_the_expression_and_nothing_is_stored(
    registry: functions_pb2_grpc.RegistryServiceStub, live_server: LiveServer
) -> None:
    request = functions_pb2.RegisterFunctionsRequest(
        functions=[_definition("good"), _definition("bad", condition="event.data.total >")]
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await registry.RegisterFunctions(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "functions[1].triggers[0].if" in (info.value.details() or "")
    assert "event.data.total >" in (info.value.details() or "")
    async with ironflow.Client(live_server.url) as client:
        assert await client.list_functions() == []


def _flow_definition(
    *, concurrency: list[tuple[int, str]] | None = None, priority: str = ""
) -> functions_pb2.FunctionDefinition:
    return functions_pb2.FunctionDefinition(
        id="f",
        concurrency=[
            functions_pb2.ConcurrencyLimit(limit=limit, key=key) for limit, key in concurrency or []
        ],
        priority=priority,
    )


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        (functions_pb2.FunctionDefinition(id=""), "functions[0].id"),
        (functions_pb2.FunctionDefinition(id="has space"), "functions[0].id"),
        (
            functions_pb2.FunctionDefinition(
                id="f", triggers=[functions_pb2.Trigger(event=functions_pb2.EventTrigger(event="a..b"))]
            ),
            "functions[0].triggers[0].event",
        ),
        (
            functions_pb2.FunctionDefinition(id="f", mode=functions_pb2.FUNCTION_MODE_PUSH),
            "functions[0].endpoint_url",
        ),
        (
            functions_pb2.FunctionDefinition(id="f", retry=functions_pb2.RetryPolicy(on_exhausted="explode")),
            "functions[0].retry.on_exhausted",
        ),
        (_cron_definition("61 * * * *"), "functions[0].triggers[1].cron.schedule"),
        (_cron_definition("0 9 * *"), "functions[0].triggers[1].cron.schedule"),
        (_cron_definition("0 9 * * *", timezone="Europe/Atlantis"), "functions[0].triggers[1].cron.timezone"),
        (_admission_definition(rate_limit={"limit": 0, "period": "60s"}), "functions[0].rate_limit.limit"),
        (_admission_definition(rate_limit={"limit": -2, "period": "60s"}), "functions[0].rate_limit.limit"),
        (_admission_definition(rate_limit={"limit": 3}), "functions[0].rate_limit.period"),
        (_admission_definition(rate_limit={"limit": 3, "period": "0s"}), "functions[0].rate_limit.period"),
        (
            _admission_definition(rate_limit={"limit": 3, "period": "60s", "key": "event.data.("}),
            "functions[0].rate_limit.key",
        ),
        (_admission_definition(throttle={"limit": 0, "period": "1s"}), "functions[0].throttle.limit"),
        (_admission_definition(throttle={"limit": 2}), "functions[0].throttle.period"),
        (_admission_definition(throttle={"limit": 2, "period": "604801s"}), "functions[0].throttle.period"),
        (
            _admission_definition(throttle={"limit": 2, "period": "1s", "burst": -1}),
            "functions[0].throttle.burst",
        ),
        (
            _admission_definition(throttle={"limit": 2, "period": "1s", "key": "event.data.("}),
            "functions[0].throttle.key",
        ),
        (_admission_definition(idempotency={"key": "event.data.id +"}), "functions[0].idempotency.key"),
        (_admission_definition(idempotency={"window": "60s"}), "functions[0].idempotency.key"),
        (
            _admission_definition(idempotency={"key": "event.data.id", "window": "-5s"}),
            "functions[0].idempotency.window",
        ),
        (_flow_definition(concurrency=[(0, "")]), "functions[0].concurrency[0].limit"),
        (_flow_definition(concurrency=[(2, ""), (1, "event.data.(")]), "functions[0].concurrency[1].key"),
        (_flow_definition(concurrency=[(1, "")] * 11), "functions[0].concurrency"),
        (_flow_definition(priority="601"), "functions[0].priority"),
        (_flow_definition(priority="-1000"), "functions[0].priority"),
        (_flow_definition(priority="event.data.tier == "), "functions[0].priority"),
        (_admission_definition(debounce={}), "functions[0].debounce.period"),
        (_admission_definition(debounce={"period": "0s"}), "functions[0].debounce.period"),
        (_admission_definition(debounce={"period": "691201s"}), "functions[0].debounce.period"),
        (
            _admission_definition(debounce={"period": "60s", "max_wait": "30s"}),
            "functions[0].debounce.max_wait",
        ),
        (
            _admission_definition(debounce={"period": "60s", "key": "event.data.("}),
            "functions[0].debounce.key",
        ),
        (_admission_definition(batching={"max_size": 0, "timeout": "10s"}), "functions[0].batching.max_size"),
        (
            _admission_definition(batching={"max_size": 1001, "timeout": "10s"}),
            "functions[0].batching.max_size",
        ),
        (_admission_definition(batching={"max_size": 10}), "functions[0].batching.timeout"),
        (
            _admission_definition(batching={"max_size": 10, "timeout": "604801s"}),
            "functions[0].batching.timeout",
        ),
        (
            _admission_definition(batching={"max_size": 10, "timeout": "10s", "key": "event.("}),
            "functions[0].batching.key",
        ),
        (
            _admission_definition(debounce={"period": "5s"}, batching={"max_size": 10, "timeout": "10s"}),
            "functions[0].batching",
        ),
        (
            _admission_definition(debounce={"period": "5s"}, throttle={"limit": 1, "period": "60s"}),
            "functions[0].throttle",
        ),
    ],
)
async def test_bad_definitions_are_invalid_argument_naming_the_field(
    registry: functions_pb2_grpc.RegistryServiceStub, definition: functions_pb2.FunctionDefinition, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await registry.RegisterFunctions(functions_pb2.RegisterFunctionsRequest(functions=[definition]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(field)


async def test_switching_mode_needs_takeover(registry: functions_pb2_grpc.RegistryServiceStub) -> None:
    await registry.RegisterFunctions(functions_pb2.RegisterFunctionsRequest(functions=[_definition("f")]))
    push = functions_pb2.FunctionDefinition(id="f", mode=functions_pb2.FUNCTION_MODE_PUSH)
    request = functions_pb2.RegisterFunctionsRequest(functions=[push], endpoint_url="http://127.0.0.1:9/api")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await registry.RegisterFunctions(request)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "pull mode" in (info.value.details() or "")
    assert "push mode" in (info.value.details() or "")
    request.takeover = True
    taken = await registry.RegisterFunctions(request)
    assert taken.functions[0].version == 2
    assert taken.functions[0].definition.endpoint_url == "http://127.0.0.1:9/api"


async def test_pause_delete_and_not_found(
    registry: functions_pb2_grpc.RegistryServiceStub, live_server: LiveServer
) -> None:
    await registry.RegisterFunctions(functions_pb2.RegisterFunctionsRequest(functions=[_definition("f")]))
    paused = await registry.SetFunctionStatus(
        functions_pb2.SetFunctionStatusRequest(id="f", status=functions_pb2.FUNCTION_STATUS_PAUSED)
    )
    assert paused.function.status == functions_pb2.FUNCTION_STATUS_PAUSED
    await registry.DeleteFunction(functions_pb2.DeleteFunctionRequest(id="f"))
    async with ironflow.Client(live_server.url) as client:
        with pytest.raises(ironflow.IronflowError) as info:
            await client.get_function("f")
        assert info.value.code == "NOT_FOUND"
        assert await client.list_functions() == []
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await registry.DeleteFunction(functions_pb2.DeleteFunctionRequest(id="never-registered"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_cli_lists_and_shows_functions(
    registry: functions_pb2_grpc.RegistryServiceStub, live_server: LiveServer
) -> None:
    await registry.RegisterFunctions(
        functions_pb2.RegisterFunctionsRequest(functions=[_definition(condition="event.data.total > 100")])
    )
    cli = [sys.executable, "-m", "ironflow.services.server", "--server-url", live_server.url]

    process = await asyncio.create_subprocess_exec(
        *cli, "--json", "functions", "list", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    assert [(f["id"], f["version"], f["status"]) for f in json.loads(out)] == [("order-handler", 1, "active")]

    process = await asyncio.create_subprocess_exec(
        *cli,
        "functions",
        "get",
        "order-handler",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    shown = json.loads(out)
    assert shown["triggers"] == [{"event": {"event": "order.placed", "if": "event.data.total > 100"}}]

    process = await asyncio.create_subprocess_exec(
        *cli, "functions", "get", "missing", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 1
    assert "NOT_FOUND" in err.decode()


async def test_a_cron_trigger_is_normalised_and_shown_by_get_function_and_the_cli(
    registry: functions_pb2_grpc.RegistryServiceStub, live_server: LiveServer
) -> None:
    """The zone defaults to UTC and the schedule's spacing is tidied, so the same schedule written two
    ways is one version; GetFunction, the SDK and `ironflow functions get` show the trigger."""
    request = functions_pb2.RegisterFunctionsRequest
    first = await registry.RegisterFunctions(
        request(functions=[_cron_definition("0  9 * * mon-fri", function_id="report")])
    )
    again = await registry.RegisterFunctions(
        request(functions=[_cron_definition("0 9 * * mon-fri", timezone="UTC", function_id="report")])
    )
    berlin = await registry.RegisterFunctions(
        request(
            functions=[
                _cron_definition(
                    "0 9 * * mon-fri", timezone="Europe/Berlin", catch_up=True, function_id="report"
                )
            ]
        )
    )
    assert [first.functions[0].version, again.functions[0].version, berlin.functions[0].version] == [1, 1, 2]
    shown = await registry.GetFunction(functions_pb2.GetFunctionRequest(id="report"))
    cron = shown.function.definition.triggers[1].cron
    assert (cron.schedule, cron.timezone, cron.catch_up) == ("0 9 * * mon-fri", "Europe/Berlin", True)

    async with ironflow.Client(live_server.url) as client:
        info = await client.get_function("report")
    expected = {"cron": {"schedule": "0 9 * * mon-fri", "timezone": "Europe/Berlin", "catch_up": True}}
    assert info.triggers[1] == expected

    cli = [sys.executable, "-m", "ironflow.services.server", "--server-url", live_server.url]
    process = await asyncio.create_subprocess_exec(
        *cli, "functions", "get", "report", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    assert json.loads(out)["triggers"][1] == expected


async def test_concurrency_and_priority_are_shown_by_get_function_and_the_cli(
    live_server: LiveServer,
) -> None:
    """Declared with the SDK, the limits and the priority come back from GetFunction, the SDK's
    FunctionInfo and `ironflow functions get`."""

    @ironflow.function(
        id="limited",
        mode="push",
        triggers=[ironflow.on_event("order.placed")],
        concurrency=[
            ironflow.Concurrency(limit=5),
            ironflow.Concurrency(limit=2, key="event.data.customerId"),
        ],
        priority="event.data.tier == 'gold' ? 100 : 0",
    )
    async def limited(ctx: ironflow.Context) -> None:
        return None

    async with ironflow.Client(live_server.url) as client:
        await client.register([limited], endpoint_url="http://127.0.0.1:9/api")
        info = await client.get_function("limited")
    limits = [{"limit": 5}, {"limit": 2, "key": "event.data.customerId"}]
    assert info.definition["concurrency"] == limits
    assert info.definition["priority"] == "event.data.tier == 'gold' ? 100 : 0"

    cli = [sys.executable, "-m", "ironflow.services.server", "--server-url", live_server.url]
    process = await asyncio.create_subprocess_exec(
        *cli, "functions", "get", "limited", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    shown = json.loads(out)
    assert shown["definition"]["concurrency"] == limits
    assert shown["definition"]["priority"] == "event.data.tier == 'gold' ? 100 : 0"
