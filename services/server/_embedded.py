"""`ironflow serve`: the five services in one process, on one port, sharing one database and stream.

Services call each other directly here; in the distributed shape the same service objects sit behind
gRPC instead. The backend is picked by URL alone (SQLite or Postgres; memory or Redis).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from connectrpc.server import ConnectASGIApplication
from hypercorn.asyncio import serve
from hypercorn.config import Config
from sqlalchemy.engine import make_url

from ironflow.services.core.disconnect import watch_disconnects
from ironflow.services.core.errors import invalid_argument
from ironflow.services.core.firehose import firehose_key
from ironflow.services.core.grpc_health import HEALTH_SERVICE_NAME, SERVING, HealthService, health_asgi_app
from ironflow.services.core.grpc_reflection import REFLECTION_SERVICE_NAMES, reflection_asgi_apps
from ironflow.services.core.http import ASGIApp
from ironflow.services.core.hypercorn_h2 import install_late_data_guard
from ironflow.services.core.rpc import ErrorInterceptor
from ironflow.services.core.signals import RunNotices
from ironflow.services.core.storage import Database, migrate
from ironflow.services.core.streams import Stream, open_stream
from ironflow.services.ingest import (
    EventServiceRpc,
    EventsRestApp,
    Ingest,
    IngestSettings,
    StoredEvent,
    event_to_proto,
)
from ironflow.services.registry import MAX_LIST_LIMIT, Registry, RegistryServiceRpc
from ironflow.services.scheduler import (
    FunctionCatalog,
    FunctionSource,
    PushSettings,
    RunsRestApp,
    Scheduler,
    SchedulerServiceRpc,
    SchedulerSettings,
)
from ironflow.services.subscription import (
    SubscriptionEngine,
    SubscriptionServiceRpc,
    SubscriptionSettings,
    WebSocketApp,
)
from ironflow.services.worker_gateway import GatewaySettings, WorkerGateway, WorkerServiceRpc
from ironflow.v1.events_connect import EventServiceASGIApplication
from ironflow.v1.functions_connect import RegistryServiceASGIApplication
from ironflow.v1.functions_pb2 import FUNCTION_STATUS_ACTIVE, Function, FunctionDefinition
from ironflow.v1.runs_connect import SchedulerServiceASGIApplication
from ironflow.v1.runs_pb2 import RunResult
from ironflow.v1.subscriptions_connect import SubscriptionServiceASGIApplication
from ironflow.v1.workers_connect import WorkerServiceASGIApplication

from ._router import Router, json_endpoint
from ._settings import ServerSettings

log = logging.getLogger("ironflow.server")

SERVICE_NAMES = (
    "ironflow.v1.EventService",
    "ironflow.v1.RegistryService",
    "ironflow.v1.SchedulerService",
    "ironflow.v1.WorkerService",
    "ironflow.v1.SubscriptionService",
)
# A push request holds its run's lease; leases are at most 10 minutes.
MAX_PUSH_TIMEOUT = timedelta(minutes=5)
# Connect caps request messages; allow a full payload plus protobuf framing.
_READ_MAX_OVERHEAD = 256 * 1024


class EmbeddedServer:
    """Lifecycle: `start()` opens storage and starts services, `serve()` answers, `stop()` drains."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.health = HealthService()
        self._db: Database | None = None
        self._stream: Stream | None = None
        self._ingest: Ingest | None = None
        self._scheduler: Scheduler | None = None
        self._gateway: WorkerGateway | None = None
        self._subscriptions: SubscriptionEngine | None = None
        self.app: ASGIApp | None = None

    async def start(self) -> None:
        settings = self.settings
        self._db = db = Database.open(settings.database_url, schema=settings.database_schema)
        version = await migrate(db)
        self._stream = stream = open_stream(settings.stream_url)
        await stream.ping()
        if settings.heartbeat_interval >= settings.lease_duration:
            raise invalid_argument("heartbeat_interval", "must be shorter than lease_duration")
        if settings.push_timeout > MAX_PUSH_TIMEOUT:
            raise invalid_argument("push_timeout", f"must be at most {MAX_PUSH_TIMEOUT.total_seconds():g}s")
        firehose = firehose_key(settings.stream_prefix)
        notices = RunNotices()
        registry = Registry(db=db, stream=stream, firehose=firehose)
        catalog = FunctionCatalog(_active_functions(registry))
        registry.on_change(catalog.invalidate)
        ingest_ref: list[Ingest] = []

        async def trigger_watermark() -> datetime | None:
            return await ingest_ref[0].trigger_watermark() if ingest_ref else None

        self._scheduler = scheduler = Scheduler(
            db=db,
            stream=stream,
            catalog=catalog,
            notices=notices,
            settings=SchedulerSettings(
                firehose=firehose,
                push=PushSettings(
                    signing_key=settings.signing_key,
                    request_timeout=settings.push_timeout,
                    concurrency=settings.push_concurrency,
                    breaker_threshold=settings.push_breaker_threshold,
                    breaker_reset=settings.push_breaker_reset,
                    retry_max=settings.push_retry_max,
                ),
            ),
            event_watermark=trigger_watermark,
        )

        async def trigger(event: StoredEvent) -> list[str]:
            return await scheduler.trigger(event_to_proto(event))

        async def wait_for_runs(run_ids: list[str], within: timedelta) -> list[RunResult]:
            results, _ = await scheduler.wait_for_runs(run_ids, within)
            return results

        self._ingest = ingest = Ingest(
            db=db,
            stream=stream,
            trigger=trigger,
            wait_for_runs=wait_for_runs,
            settings=IngestSettings(max_payload_bytes=settings.max_payload_bytes, firehose=firehose),
        )
        ingest_ref.append(ingest)

        async def register_functions(definitions: Sequence[FunctionDefinition], takeover: bool) -> None:
            await registry.register(list(definitions), takeover=takeover)

        self._gateway = gateway = WorkerGateway(
            scheduler=scheduler,
            register_functions=register_functions,
            notices=notices,
            settings=GatewaySettings(
                lease_duration=settings.lease_duration, heartbeat_interval=settings.heartbeat_interval
            ),
        )
        self._subscriptions = subscriptions = SubscriptionEngine(
            db=db,
            stream=stream,
            settings=SubscriptionSettings(
                firehose=firehose,
                stream_prefix=settings.stream_prefix,
                buffer_size=settings.subscriber_buffer,
            ),
        )
        await subscriptions.start()
        await scheduler.start()
        await ingest.start()
        await gateway.start()
        self.app = self._build_app(ingest, registry, scheduler, gateway, subscriptions)
        for name in ("", *SERVICE_NAMES):
            self.health.set_status(name, SERVING)
        log.info(
            "storage %s (schema v%d), stream %s", _redact(settings.database_url), version, settings.stream_url
        )

    def _build_app(
        self,
        ingest: Ingest,
        registry: Registry,
        scheduler: Scheduler,
        gateway: WorkerGateway,
        subscriptions: SubscriptionEngine,
    ) -> ASGIApp:
        interceptors = [ErrorInterceptor()]
        read_max = self.settings.max_payload_bytes + _READ_MAX_OVERHEAD
        apps: list[ConnectASGIApplication[Any]] = [
            EventServiceASGIApplication(
                EventServiceRpc(ingest), interceptors=interceptors, read_max_bytes=read_max
            ),
            RegistryServiceASGIApplication(RegistryServiceRpc(registry), interceptors=interceptors),
            SchedulerServiceASGIApplication(SchedulerServiceRpc(scheduler), interceptors=interceptors),
            WorkerServiceASGIApplication(WorkerServiceRpc(gateway), interceptors=interceptors),
            SubscriptionServiceASGIApplication(
                SubscriptionServiceRpc(subscriptions), interceptors=interceptors
            ),
            health_asgi_app(self.health),
            *reflection_asgi_apps((*SERVICE_NAMES, HEALTH_SERVICE_NAME, *REFLECTION_SERVICE_NAMES)),
        ]
        # Subscription streams sit idle for long stretches: let them notice a client that left.
        services: Sequence[tuple[str, ASGIApp]] = [
            (app.path, watch_disconnects(cast("ASGIApp", app))) for app in apps
        ]
        rest = EventsRestApp(ingest, max_payload_bytes=self.settings.max_payload_bytes)
        return Router(
            [*services, ("/api/v1/events", rest), ("/api/v1/runs", RunsRestApp(scheduler))],
            exact=[
                ("/health", json_endpoint(self._liveness)),
                ("/ready", json_endpoint(self._readiness)),
                ("/ws", WebSocketApp(subscriptions)),
            ],
        )

    async def _liveness(self) -> tuple[int, object]:
        return 200, {"status": "ok"}

    async def _readiness(self) -> tuple[int, object]:
        checks: dict[str, str] = {}
        for name, probe in (("database", self._db), ("stream", self._stream)):
            try:
                assert probe is not None
                await asyncio.wait_for(probe.ping(), timeout=2)
                checks[name] = "ok"
            except Exception as exc:  # noqa: BLE001 - any failure means not ready; say which
                checks[name] = f"unavailable: {type(exc).__name__}"
        ready = all(value == "ok" for value in checks.values())
        return (200 if ready else 503), {"status": "ready" if ready else "not ready", "checks": checks}

    async def serve(self, shutdown: asyncio.Event) -> None:
        """Answer on the configured port until `shutdown` is set, then finish in-flight requests."""
        assert self.app is not None, "start() first"
        install_late_data_guard()
        config = Config()
        config.bind = [f"{self.settings.host}:{self.settings.port}"]
        # hypercorn otherwise closes a keep-alive connection after 1000 requests, which shows up as
        # sporadic UNAVAILABLE on long-lived gRPC channels.
        config.keep_alive_max_requests = 2**31
        config.graceful_timeout = self.settings.graceful_timeout
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")

        async def drain() -> None:
            await shutdown.wait()
            # Tell health watchers first, so load balancers move away and Watch streams end
            # instead of holding the graceful shutdown open; worker streams and polls likewise.
            self.health.shutdown()
            if self._gateway is not None:
                self._gateway.begin_shutdown()
            if self._subscriptions is not None:
                self._subscriptions.begin_shutdown()

        await serve(cast("Any", self.app), config, shutdown_trigger=drain, mode="asgi")

    async def stop(self) -> None:
        self.health.shutdown()
        # Workers first (their jobs are released for the next start), then what feeds them.
        if self._gateway is not None:
            await self._gateway.stop()
        if self._ingest is not None:
            await self._ingest.stop()
        if self._scheduler is not None:
            await self._scheduler.stop()
        if self._subscriptions is not None:
            await self._subscriptions.stop()
        if self._stream is not None:
            await self._stream.close()
        if self._db is not None:
            await self._db.close()


def _active_functions(registry: Registry) -> FunctionSource:
    async def load() -> list[Function]:
        functions: list[Function] = []
        cursor = ""
        while True:
            page, cursor = await registry.list_functions(
                status=FUNCTION_STATUS_ACTIVE, limit=MAX_LIST_LIMIT, cursor=cursor
            )
            functions.extend(stored.to_proto() for stored in page)
            if not cursor:
                return functions

    return load


def _redact(url: str) -> str:
    """Hide a password in a database URL before logging it."""
    return make_url(url).render_as_string(hide_password=True)
