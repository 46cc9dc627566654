"""The `ironflow` console script: the SDK's client commands plus `serve` and `service`."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar

import sqlalchemy.exc
import typer
from pydantic import ValidationError
from rich.console import Console

from ironflow.cli import build_app
from ironflow.services.core.errors import ServiceError

from ._cluster import ClusterError, LocalCluster
from ._embedded import EmbeddedServer
from ._service import ServiceProcess, ServiceSettings
from ._settings import ServerSettings
from ._topology import FRONT_DOOR_PORT, SERVICE_NAMES

stderr = Console(stderr=True)
log = logging.getLogger("ironflow.server")


class _Server(Protocol):
    async def start(self) -> None: ...
    async def serve(self, shutdown: asyncio.Event) -> None: ...
    async def stop(self) -> None: ...


async def run_server(settings: ServerSettings) -> None:
    """Run until SIGINT/SIGTERM, then stop accepting, finish in-flight requests and close storage."""
    await _run(EmbeddedServer(settings), "Ironflow", settings.host, settings.port)


async def run_service(name: str, settings: ServiceSettings) -> None:
    process = ServiceProcess(name, settings)
    await _run(process, f"Ironflow {name} service", settings.host, process.port)


async def _run(server: _Server, what: str, host: str, port: int) -> None:
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, shutdown.set)
    try:
        await server.start()
        log.info("%s listening on http://%s:%d (Connect, gRPC, gRPC-Web, REST)", what, host, port)
        await server.serve(shutdown)
    finally:
        await server.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    log.info("Ironflow stopped")


# Options `serve` and `service` share.
Host = Annotated[str | None, typer.Option("--host", help="Interface to listen on [127.0.0.1].")]
SigningKey = Annotated[
    str | None,
    typer.Option(
        "--signing-key",
        envvar="IRONFLOW_SIGNING_KEY",
        help="Key push requests are signed with (the same as in ironflow.serve).",
        show_envvar=True,
    ),
]
Dev = Annotated[bool, typer.Option("--dev", help="Verbose logs for local development.")]


def serve(
    host: Host = None,
    port: Annotated[int | None, typer.Option("--port", help="Port [9123].")] = None,
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", help="sqlite+aiosqlite:///path or postgresql+psycopg://..."),
    ] = None,
    stream_url: Annotated[
        str | None, typer.Option("--stream-url", help="memory:// or redis://host:6379/0")
    ] = None,
    signing_key: SigningKey = None,
    dev: Dev = False,
) -> None:
    """Run the whole Ironflow suite in one process (SQLite + in-process stream by default)."""
    overrides = {
        "host": host,
        "port": port,
        "database_url": database_url,
        "stream_url": stream_url,
        "signing_key": signing_key,
    }
    settings = _settings(ServerSettings, overrides, dev=dev)
    _run_until_stopped(lambda: run_server(settings), settings.host, settings.port)


class ServiceName(enum.StrEnum):
    INGEST = "ingest"
    REGISTRY = "registry"
    SCHEDULER = "scheduler"
    WORKER_GATEWAY = "worker-gateway"
    SUBSCRIPTION = "subscription"


assert tuple(ServiceName) == SERVICE_NAMES, "the CLI's choices follow the topology"


def service(
    name: Annotated[ServiceName, typer.Argument(help="Which service this process runs.")],
    host: Host = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Port (default: the service's own, 9201-9205).")
    ] = None,
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="postgresql+psycopg://user@host:5432/db")
    ] = None,
    stream_url: Annotated[str | None, typer.Option("--stream-url", help="redis://host:6379/0")] = None,
    ingest_url: Annotated[
        str | None,
        typer.Option("--ingest-url", help="Where the ingest service is (default http://127.0.0.1:9201)."),
    ] = None,
    registry_url: Annotated[
        str | None,
        typer.Option("--registry-url", help="Where the registry service is (default http://127.0.0.1:9202)."),
    ] = None,
    scheduler_url: Annotated[
        str | None,
        typer.Option(
            "--scheduler-url", help="Where the scheduler service is (default http://127.0.0.1:9203)."
        ),
    ] = None,
    signing_key: SigningKey = None,
    dev: Dev = False,
) -> None:
    """Run one service in this process, against Postgres and Redis, calling the others over gRPC.

    Every option can also be set as an environment variable: IRONFLOW_PORT, IRONFLOW_DATABASE_URL,
    IRONFLOW_STREAM_URL, IRONFLOW_SCHEDULER_URL, ...
    """
    overrides = {
        "host": host,
        "port": port,
        "database_url": database_url,
        "stream_url": stream_url,
        "ingest_url": ingest_url,
        "registry_url": registry_url,
        "scheduler_url": scheduler_url,
        "signing_key": signing_key,
    }
    settings = _settings(ServiceSettings, overrides, dev=dev)
    process_port = settings.port if "port" in settings.model_fields_set else 0
    _run_until_stopped(lambda: run_service(name.value, settings), settings.host, process_port)


def cluster(
    replicas: Annotated[int, typer.Option("--replicas", min=1, max=9, help="Replicas of each service.")] = 2,
    port: Annotated[int, typer.Option("--port", help="Front door port.")] = FRONT_DOOR_PORT,
    database_url: Annotated[
        str,
        typer.Option("--database-url", envvar="IRONFLOW_DATABASE_URL", help="Postgres for every service."),
    ] = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    stream_url: Annotated[
        str, typer.Option("--stream-url", envvar="IRONFLOW_STREAM_URL", help="Redis for every service.")
    ] = "redis://127.0.0.1:6379/0",
    workdir: Annotated[
        Path, typer.Option("--workdir", help="Where logs and the generated nginx config go.")
    ] = Path(".ironflow/cluster"),
) -> None:
    """Run the distributed topology locally: every service as `--replicas` processes behind nginx.

    For development: needs Postgres, Redis and nginx on this machine. Replica i of a service listens
    on the service's port + 10 * i; logs are in WORKDIR. Ctrl-C stops everything.
    """
    local = LocalCluster(
        workdir=workdir,
        database_url=database_url,
        stream_url=stream_url,
        replicas=replicas,
        front_door_port=port,
    )
    with stderr.status(f"starting {replicas * len(SERVICE_NAMES)} service processes and nginx"):
        try:
            local.start()
        except ClusterError as exc:
            stderr.print(f"[bold red]error[/] {exc}", highlight=False)
            raise typer.Exit(1) from None
    for name, members in local.members.items():
        ports = ", ".join(str(replica.port) for replica in members)
        stderr.print(f"  {name:<15} ports {ports}", highlight=False)
    stderr.print(f"front door {local.url}  (logs in {workdir}; Ctrl-C stops)", highlight=False)
    if local.h2c_port != local.front_door_port:
        stderr.print(
            f"(this nginx is older than 1.25.1: it listens on {local.h2c_port} for h2c and on "
            f"{local.http1_port} for HTTP/1.1; a relay on {local.front_door_port} picks one per connection)",
            highlight=False,
        )
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        while not stopped.wait(1.0):
            for members in local.members.values():
                for replica in members:
                    if not replica.running:
                        stderr.print(
                            f"[yellow]{replica.service} replica {replica.index} exited; restarting[/]"
                        )
                        local.restart(replica.service, replica.index)
    except KeyboardInterrupt:
        pass
    finally:
        with stderr.status("stopping"):
            local.stop()


Settings = TypeVar("Settings", bound=ServerSettings)


def _settings(kind: type[Settings], options: dict[str, Any], *, dev: bool) -> Settings:
    """Settings from the options given on the command line (None: not given), then the environment."""
    overrides = {key: value for key, value in options.items() if value is not None}
    if dev:
        overrides["log_level"] = "debug"
    try:
        settings = kind(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        stderr.print(
            f"[bold red]error[/] {'.'.join(map(str, first['loc']))}: {first['msg']}", highlight=False
        )
        raise typer.Exit(2) from None
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return settings


def _run_until_stopped(main: Callable[[], Any], host: str, port: int) -> None:
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())
    except ServiceError as exc:
        stderr.print(f"[bold red]error[/] {exc.message}", highlight=False)
        raise typer.Exit(2) from None
    except sqlalchemy.exc.DBAPIError as exc:
        # Startup could not reach or use the database: say why in one line, not with a traceback.
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        stderr.print(f"[bold red]error[/] the database is unreachable: {reason}", highlight=False)
        raise typer.Exit(2) from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            where = f"port {port} on {host}" if port else f"the service's port on {host}"
            stderr.print(
                f"[bold red]error[/] {where} is already in use; stop the other server or pass --port",
                highlight=False,
            )
            raise typer.Exit(2) from None
        raise


def build_cli() -> typer.Typer:
    app = build_app()
    app.command("serve")(serve)
    app.command("service")(service)
    app.command("cluster")(cluster)
    return app


def main() -> None:
    build_cli()()
