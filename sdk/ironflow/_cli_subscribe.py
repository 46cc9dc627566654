"""`ironflow subscribe PATTERN...`: print messages as they arrive, one line each, until interrupted.

Lines are written and flushed one at a time so the command works at the head of a pipe
(`ironflow subscribe 'system.run.>' --json | jq ...`); a reader that goes away (`| head`) ends it
quietly. Ctrl-C (or SIGTERM) ends it with exit code 0. Connection losses are bridged by the SDK's
reconnect-and-resume, with a note on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from datetime import UTC
from typing import Annotated

import typer
from rich.text import Text

from . import cli
from ._errors import IronflowError
from ._subscribe import MAX_REPLAY, Message, Subscription, subscribe

Printer = Callable[[Message], None]

HELP = (
    "Print messages whose subjects match PATTERNs as they arrive, until interrupted (Ctrl-C).\n\n"
    "Patterns: 'system.run.>' (engine events), 'events:order.*' (emitted events), 'topic:alerts.>' "
    "(topics); '*' is one token, '>' the rest. One line per message: time, sequence, subject, data; "
    "--json prints one JSON object per line instead. Exit code 2 when a pattern, --filter or another "
    "option is invalid, 1 when the server cannot be reached or refuses."
)


class _OutputClosedError(Exception):
    """Whoever read our stdout went away."""


def add_subscribe_command(app: typer.Typer) -> None:
    @app.command("subscribe", help=HELP)
    def subscribe_command(  # noqa: PLR0917 - one parameter per CLI option
        ctx: typer.Context,
        patterns: Annotated[
            list[str] | None,
            typer.Argument(metavar="PATTERN", help="Subjects to receive, e.g. 'system.run.>'."),
        ] = None,
        replay: Annotated[
            int,
            typer.Option("--replay", min=0, max=MAX_REPLAY, help="First print the last N matching messages."),
        ] = 0,
        filter_: Annotated[
            str | None,
            typer.Option("--filter", help="CEL expression over data, subject, name, metadata, ..."),
        ] = None,
        group: Annotated[
            str | None,
            typer.Option("--group", help="Join this consumer group (members share its messages)."),
        ] = None,
        start_after: Annotated[
            int | None,
            typer.Option("--start-after", min=0, help="Resume after this stream sequence (0: oldest)."),
        ] = None,
        json_: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    ) -> None:
        options = cli._options(ctx)
        if not patterns and not group:
            raise typer.BadParameter(
                "give at least one PATTERN (for example 'system.run.>'), or --group", param_hint="PATTERN"
            )
        try:
            subscription = subscribe(
                *(patterns or []),
                server_url=options.server_url,
                api_key=options.api_key,
                replay=replay,
                filter=filter_,
                group=group,
                start_after_sequence=start_after,
            )
        except IronflowError as exc:
            cli._fail(exc.message, exit_code=2)
        printer = _json_line if json_ or options.json else _human_line()
        try:
            with _notes():
                asyncio.run(_consume(subscription, printer))
        except (KeyboardInterrupt, asyncio.CancelledError):
            pass  # Ctrl-C or SIGTERM: the subscription was closed on the way out
        except _OutputClosedError:
            _silence_stdout()
        except IronflowError as exc:
            cli._fail(f"{exc.code}: {exc.message}", exit_code=2 if exc.code == "INVALID_ARGUMENT" else 1)
        raise typer.Exit(0)


async def _consume(subscription: Subscription, printer: Printer) -> None:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
    async with subscription as sub:
        async for message in sub:
            try:
                printer(message)
            except BrokenPipeError:
                raise _OutputClosedError from None


def _json_line(message: Message) -> None:
    record = {
        "subject": message.subject,
        "event_id": message.event_id,
        "sequence": message.sequence,
        "delivery_attempt": message.delivery_attempt,
        "timestamp": _iso(message),
        "data": message.data,
        "metadata": message.metadata,
    }
    sys.stdout.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _human_line() -> Printer:
    """Coloured lines in a terminal; plain text (no escape codes) into a pipe or file."""
    terminal = cli.stdout.is_terminal

    def show(message: Message) -> None:
        stamp = (
            message.timestamp.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
            if message.timestamp
            else "-"
        )
        data = json.dumps(message.data, ensure_ascii=False, separators=(",", ":"))
        again = f" (attempt {message.delivery_attempt})" if message.delivery_attempt > 1 else ""
        if not terminal:
            sys.stdout.write(f"{stamp} {message.sequence} {message.subject}{again} {data}\n")
            sys.stdout.flush()
            return
        line = Text.assemble(
            (stamp, "dim"),
            " ",
            (str(message.sequence), "cyan"),
            " ",
            (message.subject, "bold yellow" if message.namespace == "system" else "bold green"),
            (again, "magenta"),
            " ",
            data,
        )
        cli.stdout.print(line, soft_wrap=True, highlight=False)

    return show


def _iso(message: Message) -> str | None:
    if message.timestamp is None:
        return None
    return message.timestamp.astimezone(UTC).isoformat().replace("+00:00", "Z")


class _NoteHandler(logging.Handler):
    """The SDK's reconnect messages, as notes on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        cli.stderr.print(
            Text.assemble(("note ", "dim"), record.getMessage()), highlight=False, soft_wrap=True
        )


@contextlib.contextmanager
def _notes() -> Iterator[None]:
    """Show the SDK's reconnect messages as notes on stderr (and only there) while the command runs."""
    logger = logging.getLogger("ironflow.subscribe")
    handler = _NoteHandler(logging.INFO)
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
