"""The `ironflow` command line: client commands, talking to the server through the SDK (grpcio).

`build_app()` returns the Typer app; the server package adds `serve` to it (the SDK itself never
imports the server).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Column, Table
from rich.text import Text

from . import _cli_groups, _cli_subscribe
from ._client import RUN_STATUSES, Client, push_endpoint_url, push_functions
from ._durations import to_seconds
from ._errors import IronflowError
from ._function import Function
from ._models import Run, RunError, RunResult, Step

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
        _fail(f"{exc.code}: {exc.message}", exit_code=1)


def _fail(message: str, *, exit_code: int) -> NoReturn:
    """Print `error <message>` on stderr and exit: 1 when the server refused, 2 for bad usage."""
    # soft_wrap: one line however long, so messages stay whole in logs and for grep.
    stderr.print(f"[bold red]error[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(exit_code) from None


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
    runs_app = typer.Typer(help="Runs of functions: inspect, cancel and resume.", no_args_is_help=True)
    app.add_typer(runs_app, name="runs")
    app.add_typer(_cli_groups.groups_app(), name="groups")
    app.add_typer(_cli_groups.topics_app(), name="topics")
    _cli_subscribe.add_subscribe_command(app)

    @app.callback()
    def main_options(
        ctx: typer.Context, server_url: ServerUrl = None, api_key: ApiKey = None, json_: JsonFlag = False
    ) -> None:
        ctx.obj = Options(server_url=server_url, api_key=api_key, json=json_)

    @app.command(
        help="Emit an event: store it and start every function it triggers.\n\n"
        "With --wait, print each run's outcome once all have ended or --timeout passed. "
        "Exit code 0 when every run completed; 1 when any failed, was cancelled or was still going "
        "at the timeout (it keeps going)."
    )
    def emit(
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(help="Event name, for example order.placed.")],
        data: DataOption = None,
        data_file: DataFileOption = None,
        idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
        wait: Annotated[
            bool, typer.Option("--wait", help="Wait until every run the event started has ended.")
        ] = False,
        timeout: Annotated[
            str | None,
            typer.Option("--timeout", help="With --wait: how long to wait, e.g. 30s, 2m [30s, at most 5m]."),
        ] = None,
        json_: JsonFlag = False,
    ) -> None:
        payload = _parse_data(data, data_file)
        if timeout is not None and not wait:
            raise typer.BadParameter("only works with --wait", param_hint="'--timeout'")
        if wait:
            seconds = _parse_timeout(timeout)
            event_id, results = _with_client(
                ctx,
                lambda c: c._emit_sync(
                    name, payload, timeout=seconds, idempotency_key=idempotency_key, metadata=None
                ),
            )
            if json_ or _options(ctx).json:
                _print_json({"event_id": event_id, "results": results})
            else:
                _print_results(event_id, results)
            if not all(r.status == "completed" and not r.timed_out for r in results):
                raise typer.Exit(1)
            return
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
        # Endpoint and circuit only mean something for push functions; pull-only lists stay narrow.
        push = any(function.mode == "push" for function in functions)
        table = Table(
            _id_column(), "version", "status", "mode", "triggers", *(("endpoint", "circuit") if push else ())
        )
        for function in functions:
            triggers = ", ".join(_trigger_text(t) for t in function.triggers)
            row: list[str | Text] = [
                Text(function.id),
                str(function.version),
                function.status,
                function.mode,
                Text(triggers),
            ]
            if push:
                row += [Text(function.endpoint_url), _circuit(function.circuit_state)]
            table.add_row(*row)
        _print_table(table)

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

    @functions_app.command(
        "register",
        help="Register push-mode functions: Ironflow will POST their runs to --endpoint-url.\n\n"
        "Each TARGET is module.path:attribute (like uvicorn's app:app), imported from the current "
        "directory; the attribute is an @ironflow.function, a list of them, or the app from "
        "ironflow.serve(...). Unchanged definitions keep their version, so running this on every "
        "deploy is safe. Exit code 2 when a TARGET or option is wrong, 1 when the server refuses "
        "or cannot be reached.",
    )
    def functions_register(
        ctx: typer.Context,
        targets: Annotated[
            list[str], typer.Argument(metavar="TARGET", help="module.path:attribute, e.g. myapp:app.")
        ],
        endpoint_url: Annotated[
            str | None,
            typer.Option(
                "--endpoint-url", help="Where Ironflow POSTs, e.g. https://app.example.com/api/ironflow."
            ),
        ] = None,
        takeover: Annotated[
            bool,
            typer.Option("--takeover", help="Switch functions now registered in pull mode over to push."),
        ] = False,
        json_: JsonFlag = False,
    ) -> None:
        functions = _load_targets(targets)
        try:
            url = push_endpoint_url(endpoint_url)
        except ValueError as exc:
            _fail(str(exc).replace("endpoint_url:", "--endpoint-url:", 1), exit_code=2)
        registered = _with_client(ctx, lambda c: c.register(functions, endpoint_url=url, takeover=takeover))
        if json_ or _options(ctx).json:
            _print_json(registered)
            return
        table = Table(_id_column(), "version", "mode", Column("endpoint", overflow="fold"))
        for function in registered:
            table.add_row(
                Text(function.id), str(function.version), function.mode, Text(function.endpoint_url)
            )
        _print_table(table)

    @runs_app.command("list")
    def runs_list(
        ctx: typer.Context,
        function_id: Annotated[
            str | None, typer.Option("--function", help="Only runs of this function.")
        ] = None,
        status: Annotated[
            str | None, typer.Option("--status", help=f"Only runs in this status: {', '.join(RUN_STATUSES)}.")
        ] = None,
        event_id: Annotated[
            str | None, typer.Option("--event", help="Only runs started by this event.")
        ] = None,
        limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 20,
        cursor: Annotated[str | None, typer.Option("--cursor", help="Continue from a previous page.")] = None,
        json_: JsonFlag = False,
    ) -> None:
        """List runs, newest first."""
        page = _with_client(
            ctx,
            lambda c: c.list_runs(
                function_id=function_id, status=status, event_id=event_id, limit=limit, cursor=cursor
            ),
        )
        if json_ or _options(ctx).json:
            _print_json(page)
            return
        table = Table(_id_column(), "function", "status", "attempt", "created (UTC)", "duration")
        for run in page.runs:
            table.add_row(
                Text(run.id),
                Text(run.function_id),
                _status(run.status),
                str(run.attempt),
                _stamp(run.created_at),
                _duration(run.started_at, run.ended_at),
            )
        _print_table(table)
        if page.next_cursor:
            stdout.print(f"more: --cursor {page.next_cursor}", highlight=False, soft_wrap=True)

    @runs_app.command("get")
    def runs_get(
        ctx: typer.Context, run_id: Annotated[str, typer.Argument()], json_: JsonFlag = False
    ) -> None:
        """Show one run: status, timing, output or error."""
        run = _with_client(ctx, lambda c: c.get_run(run_id))
        if json_ or _options(ctx).json:
            _print_json(run)
        else:
            _print_run(run)

    @runs_app.command("steps")
    def runs_steps(
        ctx: typer.Context, run_id: Annotated[str, typer.Argument()], json_: JsonFlag = False
    ) -> None:
        """List the steps a run has recorded, in the order they started."""
        steps = _with_client(ctx, lambda c: c.get_run_steps(run_id))
        if json_ or _options(ctx).json:
            _print_json(steps)
            return
        if not steps:
            stdout.print(f"run {escape(run_id)} has recorded no steps yet", highlight=False)
            return
        table = Table(_id_column(), "name", "status", "attempt", "duration", "output / error")
        for step in steps:
            table.add_row(
                Text(step.id),
                Text(step.name),
                _status(step.status),
                str(step.attempt),
                _duration(step.started_at, step.ended_at),
                _outcome(step),
            )
        _print_table(table)

    @runs_app.command("cancel")
    def runs_cancel(
        ctx: typer.Context,
        run_id: Annotated[str, typer.Argument()],
        reason: Annotated[str | None, typer.Option("--reason", help="Recorded as the run's error.")] = None,
        json_: JsonFlag = False,
    ) -> None:
        """Cancel a run that has not ended yet."""
        run = _with_client(ctx, lambda c: c.cancel_run(run_id, reason))
        if json_ or _options(ctx).json:
            _print_json(run)
        else:
            stdout.print(f"run {run.id} {run.status}", highlight=False)

    @runs_app.command("resume")
    def runs_resume(
        ctx: typer.Context,
        run_id: Annotated[str, typer.Argument()],
        from_step: Annotated[
            str | None,
            typer.Option(
                "--from-step", help="Run this step, and every step started after it, again (a step id)."
            ),
        ] = None,
        json_: JsonFlag = False,
    ) -> None:
        """Re-queue a failed or paused run; steps that completed keep their outputs."""
        run = _with_client(ctx, lambda c: c.resume_run(run_id, from_step))
        if json_ or _options(ctx).json:
            _print_json(run)
        else:
            _print_run(run)

    return app


def _load_targets(targets: list[str]) -> list[Function]:
    """The push functions the TARGETs name, in order; the same object named twice counts once.

    The current directory goes first on sys.path, as with uvicorn, because the console script's own
    sys.path does not include it and `ironflow functions register myapp:app` is run from the project.
    """
    cwd = os.getcwd()
    if sys.path[:1] != [cwd]:
        sys.path.insert(0, cwd)
    found: list[Function] = []
    origin: dict[str, str] = {}
    for target in targets:
        for function in _load_target(target):
            if any(function is seen for seen in found):
                continue
            if function.id in origin:
                _fail(
                    f"function id {function.id!r} is defined twice: in TARGET {origin[function.id]!r} "
                    f"and in TARGET {target!r}",
                    exit_code=2,
                )
            origin[function.id] = target
            found.append(function)
    return found


def _load_target(target: str) -> list[Function]:
    """Import one TARGET and return its push functions, or exit 2 with a one-line reason."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        _fail(f"TARGET {target!r}: must be module.path:attribute, e.g. myapp:functions", exit_code=2)
    value: Any = _import_module(module_name, target)
    for part in attribute.split("."):
        if not hasattr(value, part):
            _fail(f"TARGET {target!r}: module {module_name!r} has no attribute {attribute!r}", exit_code=2)
        value = getattr(value, part)
    if isinstance(value, Function):
        candidates: list[Any] = [value]
    elif isinstance(value, list | tuple):
        candidates = list(value)
    elif isinstance(getattr(value, "functions", None), list | tuple):
        candidates = list(value.functions)  # the app from ironflow.serve(...)
    else:
        _fail(
            f"TARGET {target!r} is a {type(value).__name__}; expected an @ironflow.function, a list of "
            "them, or the app from ironflow.serve(...)",
            exit_code=2,
        )
    try:
        return push_functions(candidates)
    except ValueError as exc:  # the same checks client.register makes, reported against the TARGET
        _fail(f"TARGET {target!r}: {exc}", exit_code=2)


def _import_module(module_name: str, target: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # The module itself missing (a typo, the wrong directory) reads differently from a module
        # that exists but imports something missing.
        if exc.name and (module_name == exc.name or module_name.startswith(f"{exc.name}.")):
            _fail(
                f"TARGET {target!r}: no module named {module_name!r} "
                "(run from the project directory, or check the spelling)",
                exit_code=2,
            )
        _fail(f"TARGET {target!r}: importing {module_name!r} failed: {exc}", exit_code=2)
    except Exception as exc:  # noqa: BLE001 - a broken user module is reported in one line, not a traceback
        _fail(
            f"TARGET {target!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}", exit_code=2
        )


def _parse_timeout(timeout: str | None) -> float:
    if timeout is None:
        return 30.0
    try:
        return to_seconds(timeout, field="timeout")
    except ValueError as exc:
        raise typer.BadParameter(str(exc).removeprefix("timeout: "), param_hint="'--timeout'") from None


def _print_results(event_id: str, results: list[RunResult]) -> None:
    stdout.print(f"event {event_id}", highlight=False)
    if not results:
        stdout.print("no function matched: no runs started", highlight=False)
        return
    table = Table(_id_column(), "function", "status", "output / error")
    for result in results:
        status = _status(result.status)
        if result.timed_out:
            status.append(" (timed out)", style="yellow")
        table.add_row(Text(result.run_id), Text(result.function_id), status, _result_outcome(result))
    _print_table(table)
    unfinished = sum(1 for r in results if r.timed_out)
    if unfinished:
        stderr.print(
            f"{unfinished} of {len(results)} runs had not ended when the wait timed out; they keep going",
            highlight=False,
            soft_wrap=True,
        )


def _result_outcome(result: RunResult) -> Text:
    if result.error is not None:
        return Text(_short(_error_text(result.error), 50), style="red")
    if result.status == "completed":
        return Text(_short(json.dumps(result.output, ensure_ascii=False), 50))
    return Text("")


def _id_column() -> Column:
    # Ids are for copying into the next command: fold one that does not fit, never cut it short.
    return Column("id", overflow="fold")


def _print_table(table: Table) -> None:
    """In a terminal the table fits the window; piped, it keeps its natural width so lines stay whole."""
    if not stdout.is_terminal:
        natural = Measurement.get(stdout, stdout.options.update_width(10_000), table).maximum
        table.width = max(stdout.width, natural) if table.expand else natural
    stdout.print(table, crop=False)


_STATUS_STYLES = {
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "retrying": "magenta",
}


_CIRCUIT_STYLES = {"closed": "green", "open": "red", "half_open": "yellow"}


def _circuit(state: str) -> Text:
    return Text(state, style=_CIRCUIT_STYLES.get(state, ""))


def _trigger_text(trigger: dict[str, Any]) -> str:
    """An event pattern, or a cron schedule with its zone (`0 9 * * * Europe/Berlin, catch-up`)."""
    if "event" in trigger:
        return str(trigger["event"].get("event", ""))
    cron = trigger.get("cron", {})
    text = f"{cron.get('schedule', '')} {cron.get('timezone') or 'UTC'}"
    return f"{text}, catch-up" if cron.get("catch_up") else text


def _status(status: str) -> Text:
    return Text(status, style=_STATUS_STYLES.get(status, ""))


def _stamp(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _duration(started_at: datetime | None, ended_at: datetime | None) -> str:
    """How long it ran (so far, if it has not ended); empty if it has not started."""
    if started_at is None:
        return ""
    seconds = max(((ended_at or datetime.now(UTC)) - started_at).total_seconds(), 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _error_text(error: RunError) -> str:
    return f"{error.code}: {error.message}" if error.message else error.code


def _outcome(step: Step) -> Text:
    if step.error is not None:
        return Text(_short(_error_text(step.error), 50), style="red")
    if step.status == "completed":
        return Text(_short(json.dumps(step.output, ensure_ascii=False), 50))
    return Text("")


def _print_run(run: Run) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows: list[tuple[str, str | Text]] = [
        ("run", run.id),
        ("function", f"{run.function_id} (version {run.function_version})"),
        ("event", run.event_id or "-"),
        ("status", _status(run.status)),
        ("attempt", str(run.attempt)),
    ]
    if run.parent_run_id:
        rows.append(("parent run", run.parent_run_id))
    if run.parent_step_id:
        rows.append(("parent step", run.parent_step_id))
    if run.child_run_ids:
        rows.append(("child runs", ", ".join(run.child_run_ids)))
    rows += [
        ("created", _stamp(run.created_at) or "-"),
        ("started", _stamp(run.started_at) or "-"),
        ("ended", _stamp(run.ended_at) or "-"),
        ("duration", _duration(run.started_at, run.ended_at) or "-"),
    ]
    if run.status == "completed" or run.output is not None:
        rows.append(("output", json.dumps(run.output, indent=2, ensure_ascii=False)))
    if run.error is not None:
        rows.append(("error", Text(_error_text(run.error), style="red")))
        if run.error.details:
            rows.append(("details", run.error.details))
    for key, value in rows:
        grid.add_row(key, value if isinstance(value, Text) else Text(value))
    stdout.print(grid)


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def main() -> None:
    build_app()()
