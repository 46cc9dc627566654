"""`ironflow service <name>`: one service per process, against a shared database and Redis, calling
the other services over gRPC.

The same service objects as in `ironflow serve`; only the wiring differs. Where one process calls the
scheduler object directly, a service process holds a grpcio channel to the scheduler service, and
wake-ups (work is due, a run was cancelled or ended, functions changed) travel over the stream
through a `NoticeRelay` instead of plain callbacks.

Health: gRPC health "liveness" is SERVING while the process runs; "" and the service's own proto name
are SERVING only while its database, stream and the services it calls answer (readiness), re-checked
every `readiness_interval`. `/health` and `/ready` say the same over plain HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from connectrpc.server import ConnectASGIApplication
from pydantic import Field

from ironflow.services.core.errors import invalid_argument
from ironflow.services.core.firehose import firehose_key
from ironflow.services.core.grpc_client import check_reachable, service_channel
from ironflow.services.core.grpc_health import NOT_SERVING, SERVING, HealthService
from ironflow.services.core.http import ASGIApp
from ironflow.services.core.notice_bus import NoticeRelay, notice_stream_key
from ironflow.services.core.revisions import functions_revision_key, latest_revision
from ironflow.services.core.signals import RunNotices
from ironflow.services.core.storage import Database, migrate
from ironflow.services.core.streams import Stream, open_stream
from ironflow.services.core.tasks import stop_task
from ironflow.services.core.telemetry import setup_tracing, shutdown_tracing
from ironflow.services.ingest import EventsRestApp, Ingest, IngestSettings, RemoteScheduler
from ironflow.services.registry import Registry, RegistryServiceRpc
from ironflow.services.scheduler import (
    FunctionCatalog,
    RunsRestApp,
    Scheduler,
    SchedulerServiceRpc,
    SchedulerSettings,
    TicketSettings,
    remote_functions,
    remote_watermark,
)
from ironflow.services.subscription import (
    SubscriptionEngine,
    SubscriptionServiceRpc,
    SubscriptionSettings,
    WebSocketApp,
)
from ironflow.services.worker_gateway import (
    GatewaySettings,
    RemoteJobScheduler,
    WorkerGateway,
    WorkerServiceRpc,
    remote_register,
)
from ironflow.v1.functions_connect import RegistryServiceASGIApplication
from ironflow.v1.runs_connect import SchedulerServiceASGIApplication
from ironflow.v1.subscriptions_connect import SubscriptionServiceASGIApplication
from ironflow.v1.workers_connect import WorkerServiceASGIApplication

from ._embedded import check_timings, ingest_app, push_settings
from ._hosting import Probe, interceptors, rpc_routes, run_probes, serve_app
from ._router import Router, json_endpoint
from ._settings import ServerSettings
from ._topology import LIVENESS_HEALTH_NAME, ServiceSpec, service_spec

log = logging.getLogger("ironflow.server")

# Methods a caller may repeat after UNAVAILABLE without changing the outcome.
IDEMPOTENT_METHODS = {
    "ironflow.v1.SchedulerService": (
        "Trigger",  # one run per (event, function)
        "WaitForRuns",
        "GetRun",
        "ListRuns",
        "GetRunSteps",
        "RenewLeases",
        "ReleaseJobs",  # fenced by lease token: a repeat releases nothing
    ),
    "ironflow.v1.RegistryService": ("ListFunctions", "GetFunction", "RegisterFunctions"),
    "ironflow.v1.EventService": ("GetTriggerWatermark", "GetEvent", "ListEvents"),
    "grpc.health.v1.Health": ("Check",),
}


class ServiceSettings(ServerSettings):
    """`ServerSettings` plus where the other services are. `port` defaults to the service's own."""

    ingest_url: str = "http://127.0.0.1:9201"
    registry_url: str = "http://127.0.0.1:9202"
    scheduler_url: str = "http://127.0.0.1:9203"
    # How often readiness is re-checked; gRPC health and /ready report the latest result.
    readiness_interval: float = Field(default=2.0, gt=0, le=60)

    def url_of(self, name: str) -> str:
        url: str = getattr(self, f"{name.replace('-', '_')}_url")
        return url


@dataclass
class _Parts:
    """What one service contributes to its process."""

    apps: list[ConnectASGIApplication[Any]]
    rest: list[tuple[str, ASGIApp]] = field(default_factory=list)
    exact: list[tuple[str, ASGIApp]] = field(default_factory=list)
    start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Called as draining begins (end streams, answer polls), then `stop` in order.
    drain: list[Callable[[], None]] = field(default_factory=list)
    stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


class ServiceProcess:
    """Lifecycle: `start()` connects and starts the service, `serve()` answers, `stop()` drains."""

    def __init__(self, name: str, settings: ServiceSettings) -> None:
        self.spec: ServiceSpec = service_spec(name)
        self.settings = settings
        self.port = settings.port if "port" in settings.model_fields_set else self.spec.default_port
        self.health = HealthService()
        self.app: ASGIApp | None = None
        self._db: Database | None = None
        self._stream: Stream | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._relay: NoticeRelay | None = None
        self._parts: _Parts | None = None
        self._readiness: dict[str, str] = {"startup": "not checked yet"}
        self._readiness_task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        setup_tracing(f"ironflow-{self.spec.name}")
        settings = self.settings
        if settings.stream_url.startswith("memory:"):
            raise invalid_argument(
                "stream_url",
                "a service process shares its stream with the other services; "
                "pass --stream-url redis://host:6379/0 (or set IRONFLOW_STREAM_URL)",
            )
        check_timings(settings)
        self.health.set_status(LIVENESS_HEALTH_NAME, SERVING)
        self._set_ready(ready=False)
        if self.spec.name != "worker-gateway":  # the gateway keeps no state of its own
            self._db = Database.open(settings.database_url, schema=settings.database_schema)
            await migrate(self._db)
        self._stream = open_stream(settings.stream_url)
        await self._stream.ping()
        self._channels = {
            name: service_channel(settings.url_of(name), idempotent=IDEMPOTENT_METHODS)
            for name in self.spec.calls
        }
        build = {
            "ingest": self._ingest,
            "registry": self._registry,
            "scheduler": self._scheduler,
            "worker-gateway": self._gateway,
            "subscription": self._subscription,
        }[self.spec.name]
        self._parts = parts = build()
        for start in parts.start:
            await start()
        self.app = Router(
            [*rpc_routes(parts.apps, self.health), *parts.rest],
            exact=[
                ("/health", json_endpoint(self._liveness)),
                ("/ready", json_endpoint(self._ready)),
                *parts.exact,
            ],
        )
        await self._check_readiness()
        self._readiness_task = asyncio.create_task(self._readiness_forever(), name="readiness")
        log.info("%s service started", self.spec.name)

    async def serve(self, shutdown: asyncio.Event) -> None:
        assert self.app is not None, "start() first"

        def draining() -> None:
            self.health.shutdown()
            for drain in self._parts.drain if self._parts else []:
                drain()

        await serve_app(
            self.app,
            host=self.settings.host,
            port=self.port,
            graceful_timeout=self.settings.graceful_timeout,
            shutdown=shutdown,
            draining=draining,
        )

    async def stop(self) -> None:
        self.health.shutdown()
        await stop_task(self._readiness_task)
        if self._parts is not None:
            for drain in self._parts.drain:
                drain()
            for stop in self._parts.stop:
                await stop()
        for channel in self._channels.values():
            await channel.close()
        if self._stream is not None:
            await self._stream.close()
        if self._db is not None:
            await self._db.close()
        shutdown_tracing()

    # -- the five services ------------------------------------------------------------------

    def _firehose(self) -> str:
        return firehose_key(self.settings.stream_prefix)

    def _notices(self, parts_start: list[Callable[[], Awaitable[None]]]) -> RunNotices:
        """Notices that also reach the other processes; the relay starts before the service."""
        assert self._stream is not None
        notices = RunNotices()
        self._relay = relay = NoticeRelay(
            notices=notices, stream=self._stream, key=notice_stream_key(self.settings.stream_prefix)
        )
        parts_start.append(relay.start)
        return notices

    def _ingest(self) -> _Parts:
        assert self._db is not None
        assert self._stream is not None
        scheduler = RemoteScheduler(self._channels["scheduler"])
        ingest = Ingest(
            db=self._db,
            stream=self._stream,
            trigger=scheduler.trigger,
            wait_for_runs=scheduler.wait_for_runs,
            settings=IngestSettings(
                max_payload_bytes=self.settings.max_payload_bytes,
                firehose=self._firehose(),
                firehose_maxlen=self.settings.firehose_maxlen(),
            ),
        )
        rest = EventsRestApp(ingest, max_payload_bytes=self.settings.max_payload_bytes)
        return _Parts(
            apps=[ingest_app(ingest, self.settings)],
            rest=[("/api/v1/events", rest)],
            start=[ingest.start],
            stop=[ingest.stop],
        )

    def _registry(self) -> _Parts:
        assert self._db is not None
        assert self._stream is not None
        parts = _Parts(apps=[])
        notices = self._notices(parts.start)
        registry = Registry(
            db=self._db,
            stream=self._stream,
            firehose=self._firehose(),
            firehose_maxlen=self.settings.firehose_maxlen(),
            revision_key=functions_revision_key(self.settings.stream_prefix),
        )
        registry.on_change(notices.functions_changed)
        parts.apps.append(
            RegistryServiceASGIApplication(RegistryServiceRpc(registry), interceptors=interceptors())
        )
        parts.stop.append(self._stop_relay)
        return parts

    def _scheduler(self) -> _Parts:
        assert self._db is not None
        assert self._stream is not None
        parts = _Parts(apps=[])
        notices = self._notices(parts.start)
        stream, revision_key = self._stream, functions_revision_key(self.settings.stream_prefix)
        catalog = FunctionCatalog(
            remote_functions(self._channels["registry"]),
            revision=lambda: latest_revision(stream, revision_key),
        )
        notices.on_functions_changed(catalog.invalidate)
        scheduler = Scheduler(
            db=self._db,
            stream=self._stream,
            catalog=catalog,
            notices=notices,
            settings=SchedulerSettings(
                firehose=self._firehose(),
                firehose_maxlen=self.settings.firehose_maxlen(),
                push=push_settings(self.settings),
                tickets=TicketSettings(stream_prefix=self.settings.stream_prefix),
            ),
            event_watermark=remote_watermark(self._channels["ingest"]),
        )
        parts.apps.append(
            SchedulerServiceASGIApplication(SchedulerServiceRpc(scheduler), interceptors=interceptors())
        )
        parts.rest.append(("/api/v1/runs", RunsRestApp(scheduler)))
        parts.start.append(scheduler.start)
        parts.stop.extend([scheduler.stop, self._stop_relay])
        return parts

    def _gateway(self) -> _Parts:
        assert self._stream is not None
        parts = _Parts(apps=[])
        notices = self._notices(parts.start)
        gateway = WorkerGateway(
            scheduler=RemoteJobScheduler(self._channels["scheduler"]),
            stream=self._stream,
            register_functions=remote_register(self._channels["registry"]),
            notices=notices,
            settings=GatewaySettings(
                lease_duration=self.settings.lease_duration,
                heartbeat_interval=self.settings.heartbeat_interval,
                stream_prefix=self.settings.stream_prefix,
            ),
        )
        parts.apps.append(
            WorkerServiceASGIApplication(WorkerServiceRpc(gateway), interceptors=interceptors())
        )
        parts.start.append(gateway.start)
        parts.drain.append(gateway.begin_shutdown)
        # Workers first: their jobs are released to the scheduler while it is still reachable.
        parts.stop.extend([gateway.stop, self._stop_relay])
        return parts

    def _subscription(self) -> _Parts:
        assert self._db is not None
        assert self._stream is not None
        engine = SubscriptionEngine(
            db=self._db,
            stream=self._stream,
            settings=SubscriptionSettings(
                firehose=self._firehose(),
                firehose_maxlen=self.settings.firehose_maxlen(),
                stream_prefix=self.settings.stream_prefix,
                buffer_size=self.settings.subscriber_buffer,
            ),
        )
        return _Parts(
            apps=[
                SubscriptionServiceASGIApplication(
                    SubscriptionServiceRpc(engine), interceptors=interceptors()
                )
            ],
            exact=[("/ws", WebSocketApp(engine))],
            start=[engine.start],
            drain=[engine.begin_shutdown],
            stop=[engine.stop],
        )

    async def _stop_relay(self) -> None:
        if self._relay is not None:
            await self._relay.stop()

    # -- health -----------------------------------------------------------------------------

    def _probes(self) -> list[tuple[str, Probe]]:
        probes: list[tuple[str, Probe]] = []
        if self._db is not None:
            probes.append(("database", self._db.ping))
        if self._stream is not None:
            probes.append(("stream", self._stream.ping))
        for name, channel in self._channels.items():

            async def reachable(channel: grpc.aio.Channel = channel) -> None:
                await check_reachable(channel, deadline=2.0)

            probes.append((name, reachable))
        return probes

    async def _check_readiness(self) -> None:
        checks = await run_probes(self._probes())
        ready = all(value == "ok" for value in checks.values())
        was_ready = all(value == "ok" for value in self._readiness.values())
        if ready != was_ready:
            if ready:
                log.info("%s is ready", self.spec.name)
            else:
                failing = ", ".join(f"{name} {value}" for name, value in checks.items() if value != "ok")
                log.warning("%s is not ready: %s", self.spec.name, failing)
        self._readiness = checks
        self._set_ready(ready=ready)

    async def _readiness_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.readiness_interval)
            with contextlib.suppress(Exception):
                await self._check_readiness()

    def _set_ready(self, *, ready: bool) -> None:
        status = SERVING if ready else NOT_SERVING
        self.health.set_status("", status)
        self.health.set_status(self.spec.proto_service, status)

    async def _liveness(self) -> tuple[int, object]:
        return 200, {"status": "ok", "service": self.spec.name}

    async def _ready(self) -> tuple[int, object]:
        checks = dict(self._readiness)
        ready = all(value == "ok" for value in checks.values())
        body = {"status": "ready" if ready else "not ready", "service": self.spec.name, "checks": checks}
        return (200 if ready else 503), body
