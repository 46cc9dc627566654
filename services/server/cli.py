"""The `ironflow` console script: the SDK's client commands plus `serve`."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from ironflow.cli import build_app
from ironflow.services.core.errors import ServiceError

from ._embedded import EmbeddedServer
from ._settings import ServerSettings

stderr = Console(stderr=True)
log = logging.getLogger("ironflow.server")


async def run_server(settings: ServerSettings) -> None:
    """Run until SIGINT/SIGTERM, then stop accepting, finish in-flight requests and close storage."""
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, shutdown.set)
    server = EmbeddedServer(settings)
    try:
        await server.start()
        log.info(
            "Ironflow listening on http://%s:%d (Connect, gRPC, gRPC-Web, REST)", settings.host, settings.port
        )
        await server.serve(shutdown)
    finally:
        await server.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    log.info("Ironflow stopped")


def serve(
    host: Annotated[str | None, typer.Option("--host", help="Interface to listen on [127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port [9123].")] = None,
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", help="sqlite+aiosqlite:///path or postgresql+psycopg://..."),
    ] = None,
    stream_url: Annotated[
        str | None, typer.Option("--stream-url", help="memory:// or redis://host:6379/0")
    ] = None,
    signing_key: Annotated[
        str | None,
        typer.Option(
            "--signing-key",
            envvar="IRONFLOW_SIGNING_KEY",
            help="Key push requests are signed with (the same as in ironflow.serve).",
            show_envvar=True,
        ),
    ] = None,
    dev: Annotated[bool, typer.Option("--dev", help="Verbose logs for local development.")] = False,
) -> None:
    """Run the whole Ironflow suite in one process (SQLite + in-process stream by default)."""
    overrides = {
        key: value
        for key, value in {
            "host": host,
            "port": port,
            "database_url": database_url,
            "stream_url": stream_url,
            "signing_key": signing_key,
        }.items()
        if value is not None
    }
    if dev:
        overrides["log_level"] = "debug"
    try:
        settings = ServerSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        stderr.print(
            f"[bold red]error[/] {'.'.join(map(str, first['loc']))}: {first['msg']}", highlight=False
        )
        raise typer.Exit(2) from None
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_server(settings))
    except ServiceError as exc:
        stderr.print(f"[bold red]error[/] {exc.message}", highlight=False)
        raise typer.Exit(2) from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            stderr.print(
                f"[bold red]error[/] port {settings.port} on {settings.host} is already in use; "
                "stop the other server or pass --port",
                highlight=False,
            )
            raise typer.Exit(2) from None
        raise


def build_cli() -> typer.Typer:
    app = build_app()
    app.command("serve")(serve)
    return app


def main() -> None:
    build_cli()()
