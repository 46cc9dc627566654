"""Push-mode registration: `client.register`, `SyncClient.register` and `ironflow functions register`.

Push functions have no worker dialling in to announce them, so the app (or a deploy step) registers
them with the URL Ironflow should POST to. These tests check what the registry stores, that a mode
switch needs an explicit takeover in both directions, and that mistakes are caught before any call.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from typer.testing import CliRunner, Result

import ironflow
from ironflow.cli import build_app
from ironflow.v1 import functions_pb2, functions_pb2_grpc
from tests.integration import push_targets
from tests.integration.conftest import LiveServer
from tests.integration.workers import running_worker

Cli = Callable[..., Awaitable[Result]]

ENDPOINT = "http://127.0.0.1:9/api/ironflow"
OTHER_ENDPOINT = "https://app.example.com/api/ironflow"
# Nothing listens here: a CLI error that exits 2 was caught before any call (a call would exit 1).
UNREACHABLE_SERVER = "http://127.0.0.1:9"


def _function(function_id: str, *, mode: str = "push") -> ironflow.Function:
    async def handler(ctx: ironflow.Context) -> dict[str, Any]:
        return {"seen": ctx.event.name}

    return ironflow.function(id=function_id, triggers=[ironflow.on_event("order.paid")], mode=mode)(handler)


@pytest.fixture
async def client(live_server: LiveServer) -> AsyncIterator[ironflow.Client]:
    async with ironflow.Client(live_server.url) as client:
        yield client


def _cli_at(server_url: str) -> Cli:
    app = build_app()
    runner = CliRunner(env={"NO_COLOR": "1"})

    async def invoke(*args: str) -> Result:
        # The CLI calls asyncio.run and the server lives on this test's loop: run it on a thread.
        return await asyncio.to_thread(runner.invoke, app, ["--server-url", server_url, *args])

    return invoke


def _table_rows(output: str, marker: str) -> list[list[str]]:
    """The cells of each table row containing `marker`."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in output.splitlines()
        if marker in line
    ]


@pytest.fixture
def cli(live_server: LiveServer) -> Cli:
    return _cli_at(live_server.url)


async def test_register_stores_push_functions_with_endpoint_and_closed_circuit(
    client: ironflow.Client,
) -> None:
    receipt, invoice = _function("push-receipt"), _function("push-invoice")

    registered = await client.register([receipt, invoice], endpoint_url=ENDPOINT)

    assert [(f.id, f.version, f.mode, f.endpoint_url, f.circuit_state) for f in registered] == [
        ("push-receipt", 1, "push", ENDPOINT, "closed"),
        ("push-invoice", 1, "push", ENDPOINT, "closed"),
    ]
    shown = await client.get_function("push-invoice")
    assert (shown.mode, shown.status, shown.endpoint_url, shown.circuit_state) == (
        "push",
        "active",
        ENDPOINT,
        "closed",
    )
    assert shown.definition["endpoint_url"] == ENDPOINT
    assert shown.triggers == [{"event": {"event": "order.paid"}}]


async def test_reregistering_keeps_the_version_and_a_new_endpoint_makes_a_new_one(
    client: ironflow.Client,
) -> None:
    receipt, invoice = _function("push-receipt"), _function("push-invoice")
    await client.register([receipt, invoice], endpoint_url=ENDPOINT)

    again = await client.register([receipt, invoice], endpoint_url=ENDPOINT)
    assert [(f.id, f.version) for f in again] == [("push-receipt", 1), ("push-invoice", 1)]

    moved = await client.register([receipt], endpoint_url=OTHER_ENDPOINT)
    assert [(f.id, f.version, f.endpoint_url) for f in moved] == [("push-receipt", 2, OTHER_ENDPOINT)]
    assert (await client.get_function("push-receipt", version=1)).endpoint_url == ENDPOINT
    assert (await client.get_function("push-invoice")).version == 1


async def test_register_accepts_an_object_carrying_functions_like_the_serve_app(
    client: ironflow.Client,
) -> None:
    registered = await client.register(push_targets.app, endpoint_url=ENDPOINT)

    assert [f.id for f in registered] == ["push-targets-receipt", "push-targets-invoice"]
    assert {f.id for f in await client.list_functions()} == {"push-targets-receipt", "push-targets-invoice"}


async def test_push_over_a_pull_function_needs_takeover(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    """A pull worker registered `shared` first; registering it in push mode would silently reroute its
    runs to HTTP, so the server refuses until the caller says takeover=True."""
    async with running_worker(live_server, [_function("shared", mode="pull")], transport="stream"):
        pass
    assert (await client.get_function("shared")).mode == "pull"

    with pytest.raises(ironflow.IronflowError) as refused:
        await client.register([_function("shared")], endpoint_url=ENDPOINT)
    assert refused.value.code == "FAILED_PRECONDITION"
    assert "pull" in refused.value.message
    assert "push" in refused.value.message
    assert "takeover" in refused.value.message
    unchanged = await client.get_function("shared")
    assert (unchanged.mode, unchanged.version, unchanged.endpoint_url) == ("pull", 1, "")

    taken = await client.register([_function("shared")], endpoint_url=ENDPOINT, takeover=True)
    assert [(f.id, f.version, f.mode, f.endpoint_url, f.circuit_state) for f in taken] == [
        ("shared", 2, "push", ENDPOINT, "closed")
    ]


async def test_pull_worker_over_a_push_function_needs_takeover(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    """The other direction: a push function exists, and a pull worker for the same id is refused at
    connect time (the worker stops and raises) unless it was built with takeover=True."""
    await client.register([_function("shared")], endpoint_url=ENDPOINT)
    worker = ironflow.Worker(live_server.url, [_function("shared", mode="pull")])

    with pytest.raises(ironflow.IronflowError) as refused:
        await asyncio.wait_for(worker.run(), timeout=30)
    assert refused.value.code == "FAILED_PRECONDITION"
    assert "push" in refused.value.message
    assert "pull" in refused.value.message
    assert (await client.get_function("shared")).mode == "push"

    async with running_worker(
        live_server, [_function("shared", mode="pull")], transport="stream", takeover=True
    ):
        taken = await client.get_function("shared")
    assert (taken.mode, taken.version, taken.endpoint_url, taken.circuit_state) == ("pull", 2, "", "")


async def test_raw_pull_registration_over_push_needs_takeover(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    await client.register([_function("shared")], endpoint_url=ENDPOINT)
    pull = functions_pb2.FunctionDefinition(id="shared", mode=functions_pb2.FUNCTION_MODE_PULL)
    request = functions_pb2.RegisterFunctionsRequest(functions=[pull])
    async with grpc.aio.insecure_channel(live_server.url.removeprefix("http://")) as channel:
        registry = functions_pb2_grpc.RegistryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await registry.RegisterFunctions(request)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "push mode" in (refused.value.details() or "")
        assert "pull mode" in (refused.value.details() or "")
        request.takeover = True
        taken = await registry.RegisterFunctions(request)
    assert taken.functions[0].definition.mode == functions_pb2.FUNCTION_MODE_PULL
    assert taken.functions[0].circuit_state == ""


async def test_sync_client_registers(live_server: LiveServer, client: ironflow.Client) -> None:
    def register() -> list[ironflow.FunctionInfo]:
        with ironflow.SyncClient(live_server.url) as sync:
            return sync.register([_function("push-sync")], endpoint_url=ENDPOINT)

    registered = await asyncio.to_thread(register)

    assert [(f.id, f.mode, f.endpoint_url, f.circuit_state) for f in registered] == [
        ("push-sync", "push", ENDPOINT, "closed")
    ]
    assert (await client.get_function("push-sync")).endpoint_url == ENDPOINT


def test_sync_client_raises_the_same_value_errors() -> None:
    with ironflow.SyncClient(UNREACHABLE_SERVER) as sync, pytest.raises(ValueError, match="pull-mode"):
        sync.register([_function("pulled", mode="pull")], endpoint_url=ENDPOINT)


@pytest.mark.parametrize(
    ("functions", "endpoint_url", "message"),
    [
        (
            [_function("pulled", mode="pull")],
            ENDPOINT,
            r"^functions\[0\]: 'pulled' is a pull-mode function; workers register those themselves — "
            r"declare it with mode='push' to serve it over HTTP$",
        ),
        ([], ENDPOINT, r"^functions: at least one"),
        (_function("single"), ENDPOINT, r"^functions: pass a list"),
        ([_function("a"), "b"], ENDPOINT, r"^functions\[1\]: not an @ironflow.function"),
        ([_function("a"), _function("a")], ENDPOINT, r"^functions\[1\]: function id 'a' appears twice"),
        ("push-receipt", ENDPOINT, r"^functions: must be a list"),
        (
            [_function("a")],
            None,
            r"^endpoint_url: push functions need the URL Ironflow POSTs to, e\.g\. https",
        ),
        ([_function("a")], "", r"^endpoint_url: push functions need the URL"),
        ([_function("a")], "ftp://files.example.com/x", r"^endpoint_url: must be an http:// or https:// URL"),
        ([_function("a")], "app.example.com/api", r"^endpoint_url: must be an http:// or https:// URL"),
    ],
)
async def test_register_rejects_bad_arguments_before_calling(
    functions: Any, endpoint_url: str | None, message: str
) -> None:
    # Nothing listens at this address: a ValueError (not UNAVAILABLE) shows no call was made.
    async with ironflow.Client(UNREACHABLE_SERVER) as client:
        with pytest.raises(ValueError, match=message):
            await client.register(functions, endpoint_url=endpoint_url)


async def test_cli_registers_targets_and_shows_endpoint_and_circuit(
    cli: Cli, client: ironflow.Client
) -> None:
    result = await cli(
        "functions", "register", "tests.integration.push_targets:FUNCTIONS", "--endpoint-url", ENDPOINT
    )
    assert result.exit_code == 0, result.output
    assert _table_rows(result.stdout, "push-targets-") == [
        ["push-targets-receipt", "1", "push", ENDPOINT],
        ["push-targets-invoice", "1", "push", ENDPOINT],
    ]
    shown = await client.get_function("push-targets-receipt")
    assert (shown.mode, shown.endpoint_url, shown.circuit_state) == ("push", ENDPOINT, "closed")

    result = await cli("functions", "list")
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "version" in line)
    assert "endpoint" in header
    assert "circuit" in header
    assert _table_rows(result.stdout, "push-targets-") == [
        ["push-targets-invoice", "1", "active", "push", "order.shipped", ENDPOINT, "closed"],
        ["push-targets-receipt", "1", "active", "push", "order.paid", ENDPOINT, "closed"],
    ]

    result = await cli("functions", "get", "push-targets-invoice")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert (got["mode"], got["endpoint_url"], got["circuit_state"]) == ("push", ENDPOINT, "closed")


async def test_cli_register_json_dedupes_the_same_function_named_twice(cli: Cli) -> None:
    result = await cli(
        "--json",
        "functions",
        "register",
        "tests.integration.push_targets:app",
        "tests.integration.push_targets:send_receipt",
        "--endpoint-url",
        ENDPOINT,
    )
    assert result.exit_code == 0, result.output
    registered = json.loads(result.stdout)
    assert [
        (f["id"], f["version"], f["mode"], f["endpoint_url"], f["circuit_state"]) for f in registered
    ] == [
        ("push-targets-receipt", 1, "push", ENDPOINT, "closed"),
        ("push-targets-invoice", 1, "push", ENDPOINT, "closed"),
    ]


async def test_cli_register_over_pull_needs_takeover(
    cli: Cli, client: ironflow.Client, live_server: LiveServer
) -> None:
    async with running_worker(
        live_server, [_function("push-targets-receipt", mode="pull")], transport="poll"
    ):
        pass
    args = (
        "functions",
        "register",
        "tests.integration.push_targets:send_receipt",
        "--endpoint-url",
        ENDPOINT,
    )

    refused = await cli(*args)
    assert refused.exit_code == 1, refused.output
    assert "FAILED_PRECONDITION" in refused.stderr
    assert "pull mode" in refused.stderr
    assert "push mode" in refused.stderr
    assert (await client.get_function("push-targets-receipt")).mode == "pull"

    taken = await cli(*args, "--takeover")
    assert taken.exit_code == 0, taken.output
    shown = await client.get_function("push-targets-receipt")
    assert (shown.mode, shown.version, shown.endpoint_url) == ("push", 2, ENDPOINT)


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (["nosuchmodule:x"], "TARGET 'nosuchmodule:x': no module named 'nosuchmodule'"),
        (
            ["tests.integration.push_targets:missing"],
            "module 'tests.integration.push_targets' has no attribute 'missing'",
        ),
        (["badtarget"], "TARGET 'badtarget': must be module.path:attribute"),
        (["tests.integration.push_targets:"], "must be module.path:attribute"),
        (["tests.integration.push_targets:NOT_FUNCTIONS"], "is a int; expected an @ironflow.function"),
        (["tests.integration.push_targets:pull_only"], "'push-targets-pull' is a pull-mode function"),
    ],
)
async def test_cli_register_target_errors_exit_2_with_one_line(targets: list[str], message: str) -> None:
    result = await _cli_at(UNREACHABLE_SERVER)("functions", "register", *targets, "--endpoint-url", ENDPOINT)

    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error ")
    assert message in lines[0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ((), "--endpoint-url: push functions need the URL Ironflow POSTs to"),
        (("--endpoint-url", "not-a-url"), "--endpoint-url: must be an http:// or https:// URL"),
    ],
)
async def test_cli_register_endpoint_errors_exit_2(options: tuple[str, ...], message: str) -> None:
    result = await _cli_at(UNREACHABLE_SERVER)(
        "functions", "register", "tests.integration.push_targets:FUNCTIONS", *options
    )

    assert result.exit_code == 2, result.output
    assert message in result.stderr
