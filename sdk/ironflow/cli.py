"""The `ironflow` command line: client commands, talking to the server through the SDK (grpcio).

`build_app()` returns the Typer app; the server package adds `serve` to it (the SDK itself never
imports the server).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from ._client import Client
from ._errors import IronflowError

T = TypeVar("T")

stdout = Console()
stderr = Console(stderr=True)


@dataclasses.dataclass
class Options:
    server_url: str | None
    api_key: str | None
    json: bool


def _options(ctx: typer.Context) -> Options:
    options = ctx.find_object(Options)
    assert options is not None
    return options


def _with_client(ctx: typer.Context, work: Callable[[Client], Awaitable[T]]) -> T:
    options = _options(ctx)

    async def run() -> T:
        async with Client(options.server_url, options.api_key) as client:
            return await work(client)

    try:
        return asyncio.run(run())
    except IronflowError as exc:
        stderr.print(f"[bold red]error[/] {exc.code}: {exc.message}", highlight=False)
        raise typer.Exit(1) from None


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [_to_json(item) for item in value]
    if isinstance(value, dict):
        return {key: _to_json(item) for key, item in value.items()}
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return value


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(_to_json(value), indent=2, ensure_ascii=False) + "\n")


def _parse_data(data: str | None, data_file: Path | None) -> dict[str, Any]:
    if data is not None and data_file is not None:
        raise typer.BadParameter("give --data or --data-file, not both")
    if data_file is not None:
        try:
            data = data_file.read_text()
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {data_file}: {exc.strerror}") from None
    if data is None:
        return {}
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise typer.BadParameter('must be a JSON object, for example \'{"orderId": "ord_123"}\'')
    return value


ServerUrl = Annotated[
    str | None, typer.Option("--server-url", envvar="IRONFLOW_SERVER_URL", help="Server or front-door URL.")
]
ApiKey = Annotated[str | None, typer.Option("--api-key", envvar="IRONFLOW_API_KEY", help="API key.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
DataOption = Annotated[str | None, typer.Option("--data", help="JSON object payload.")]
DataFileOption = Annotated[
    Path | None, typer.Option("--data-file", help="Read the JSON payload from a file.")
]


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="ironflow",
        help="Ironflow: event-driven durable workflows. Run `ironflow serve` to start a server.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
    )
    events_app = typer.Typer(help="Stored events.", no_args_is_help=True)
    functions_app = typer.Typer(help="Registered functions.", no_args_is_help=True)
    app.add_typer(events_app, name="events")
    app.add_typer(functions_app, name="functions")

    @app.callback()
    def main_options(
        ctx: typer.Context, server_url: ServerUrl = None, api_key: ApiKey = None, json_: JsonFlag = False
    ) -> None:
        ctx.obj = Options(server_url=server_url, api_key=api_key, json=json_)

    @app.command()
    def emit(
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(help="Event name, for example order.placed.")],
        data: DataOption = None,
        data_file: DataFileOption = None,
        idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
        json_: JsonFlag = False,
    ) -> None:
        """Emit an event: store it and start every function it triggers."""
        payload = _parse_data(data, data_file)
        result = _with_client(ctx, lambda c: c.emit(name, payload, idempotency_key=idempotency_key))
        if json_ or _options(ctx).json:
            _print_json(result)
            return
        note = " (duplicate: the original event)" if result.duplicate else ""
        stdout.print(f"event {result.event_id}{note}", highlight=False)
        for run_id in result.run_ids:
            stdout.print(f"  run {run_id}", highlight=False)

    @app.command()
    def publish(
        ctx: typer.Context,
        topic: Annotated[str, typer.Argument(help="Topic name, for example notifications.email.")],
        data: DataOption = None,
        data_file: DataFileOption = None,
        json_: JsonFlag = False,
    ) -> None:
        """Publish a message to real-time subscribers of a topic (starts no run)."""
        payload = _parse_data(data, data_file)
        result = _with_client(ctx, lambda c: c.publish(topic, payload))
        if json_ or _options(ctx).json:
            _print_json(result)
        else:
            stdout.print(f"message {result.event_id} (sequence {result.sequence})", highlight=False)

    @events_app.command("list")
    def events_list(
        ctx: typer.Context,
        name: Annotated[str | None, typer.Option("--name", help="Only events with this name.")] = None,
        limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 20,
        cursor: Annotated[str | None, typer.Option("--cursor", help="Continue from a previous page.")] = None,
        json_: JsonFlag = False,
    ) -> None:
        """List stored events, newest first."""
        page = _with_client(ctx, lambda c: c.list_events(name=name, limit=limit, cursor=cursor))
        if json_ or _options(ctx).json:
            _print_json(page)
            return
        table = Table("id", "name", "timestamp", "data")
        for event in page.events:
            stamp = event.timestamp.isoformat(timespec="seconds") if event.timestamp else ""
            table.add_row(event.id, event.name, stamp, _short(json.dumps(event.data)))
        stdout.print(table)
        if page.next_cursor:
            stdout.print(f"more: --cursor {page.next_cursor}", highlight=False)

    @events_app.command("get")
    def events_get(
        ctx: typer.Context, event_id: Annotated[str, typer.Argument()], json_: JsonFlag = False
    ) -> None:
        """Show one stored event."""
        event = _with_client(ctx, lambda c: c.get_event(event_id))
        _print_json(event)

    @functions_app.command("list")
    def functions_list(ctx: typer.Context, json_: JsonFlag = False) -> None:
        """List registered functions."""
        functions = _with_client(ctx, lambda c: c.list_functions())
        if json_ or _options(ctx).json:
            _print_json(functions)
            return
        table = Table("id", "version", "status", "mode", "triggers")
        for function in functions:
            triggers = ", ".join(
                t.get("event", {}).get("event") or t.get("cron", {}).get("schedule", "")
                for t in function.triggers
            )
            table.add_row(function.id, str(function.version), function.status, function.mode, triggers)
        stdout.print(table)

    @functions_app.command("get")
    def functions_get(
        ctx: typer.Context,
        function_id: Annotated[str, typer.Argument()],
        version: Annotated[int | None, typer.Option("--version", min=1, help="An older version.")] = None,
        json_: JsonFlag = False,
    ) -> None:
        """Show one function's definition."""
        function = _with_client(ctx, lambda c: c.get_function(function_id, version=version))
        _print_json(function)

    return app


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def main() -> None:
    build_app()()
