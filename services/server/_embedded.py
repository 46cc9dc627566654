"""`ironflow serve`: the five services in one process, on one port, sharing one database and stream.

Services call each other directly here; in the distributed shape the same service objects sit behind
gRPC instead. The backend is picked by URL alone (SQLite or Postgres; memory or Redis).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from connectrpc.server import ConnectASGIApplication
from sqlalchemy.engine import make_url

from ironflow.services.core.errors import invalid_argument
from ironflow.services.core.firehose import firehose_key
from ironflow.services.core.grpc_health import SERVING, HealthService
from ironflow.services.core.http import ASGIApp
from ironflow.services.core.revisions import functions_revision_key, latest_revision
from ironflow.services.core.signals import RunNotices
from ironflow.services.core.storage import Database, migrate
from ironflow.services.core.streams import Stream, open_stream
from ironflow.services.core.telemetry import setup_tracing, shutdown_tracing
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
    TicketSettings,
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

from ._hosting import SERVICE_NAMES, interceptors, rpc_routes, run_probes, serve_app
from ._router import Router, json_endpoint
from ._settings import ServerSettings

log = logging.getLogger("ironflow.server")

# A push request holds its run's lease; leases are at most 10 minutes.
MAX_PUSH_TIMEOUT = timedelta(minutes=5)
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
        setup_tracing("ironflow")
        settings = self.settings
        check_timings(settings)
        self._db = db = Database.open(settings.database_url, schema=settings.database_schema)
        version = await migrate(db)
        self._stream = stream = open_stream(settings.stream_url)
        await stream.ping()
        firehose = firehose_key(settings.stream_prefix)
        notices = RunNotices()
        revision_key = functions_revision_key(settings.stream_prefix)
        retention = settings.firehose_maxlen()
        registry = Registry(
            db=db, stream=stream, firehose=firehose, firehose_maxlen=retention, revision_key=revision_key
        )
        catalog = FunctionCatalog(
            _active_functions(registry), revision=lambda: latest_revision(stream, revision_key)
        )
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
                firehose_maxlen=retention,
                push=push_settings(settings),
                tickets=TicketSettings(stream_prefix=settings.stream_prefix),
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
            settings=IngestSettings(
                max_payload_bytes=settings.max_payload_bytes, firehose=firehose, firehose_maxlen=retention
            ),
        )
        ingest_ref.append(ingest)

        async def register_functions(definitions: Sequence[FunctionDefinition], takeover: bool) -> None:
            await registry.register(list(definitions), takeover=takeover)

        self._gateway = gateway = WorkerGateway(
            scheduler=scheduler,
            stream=stream,
            register_functions=register_functions,
            notices=notices,
            settings=GatewaySettings(
                lease_duration=settings.lease_duration,
                heartbeat_interval=settings.heartbeat_interval,
                stream_prefix=settings.stream_prefix,
            ),
        )
        self._subscriptions = subscriptions = SubscriptionEngine(
            db=db,
            stream=stream,
            settings=SubscriptionSettings(
                firehose=firehose,
                firehose_maxlen=retention,
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
        apps: list[ConnectASGIApplication[Any]] = [
            ingest_app(ingest, self.settings),
            RegistryServiceASGIApplication(RegistryServiceRpc(registry), interceptors=interceptors()),
            SchedulerServiceASGIApplication(SchedulerServiceRpc(scheduler), interceptors=interceptors()),
            WorkerServiceASGIApplication(WorkerServiceRpc(gateway), interceptors=interceptors()),
            SubscriptionServiceASGIApplication(
                SubscriptionServiceRpc(subscriptions), interceptors=interceptors()
            ),
        ]
        rest = EventsRestApp(ingest, max_payload_bytes=self.settings.max_payload_bytes)
        return Router(
            [
                *rpc_routes(apps, self.health),
                ("/api/v1/events", rest),
                ("/api/v1/runs", RunsRestApp(scheduler)),
            ],
            exact=[
                ("/health", json_endpoint(self._liveness)),
                ("/ready", json_endpoint(self._readiness)),
                ("/ws", WebSocketApp(subscriptions)),
            ],
        )

    async def _liveness(self) -> tuple[int, object]:
        return 200, {"status": "ok"}

    async def _readiness(self) -> tuple[int, object]:
        assert self._db is not None, "start() first"
        assert self._stream is not None, "start() first"
        checks = await run_probes([("database", self._db.ping), ("stream", self._stream.ping)])
        ready = all(value == "ok" for value in checks.values())
        return (200 if ready else 503), {"status": "ready" if ready else "not ready", "checks": checks}

    async def serve(self, shutdown: asyncio.Event) -> None:
        """Answer on the configured port until `shutdown` is set, then finish in-flight requests."""
        assert self.app is not None, "start() first"

        def draining() -> None:
            # Tell health watchers first, so load balancers move away and Watch streams end
            # instead of holding the graceful shutdown open; worker streams and polls likewise.
            self.health.shutdown()
            if self._gateway is not None:
                self._gateway.begin_shutdown()
            if self._subscriptions is not None:
                self._subscriptions.begin_shutdown()

        await serve_app(
            self.app,
            host=self.settings.host,
            port=self.settings.port,
            graceful_timeout=self.settings.graceful_timeout,
            shutdown=shutdown,
            draining=draining,
        )

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
        shutdown_tracing()


def check_timings(settings: ServerSettings) -> None:
    """Settings that are valid alone but not together."""
    if settings.heartbeat_interval >= settings.lease_duration:
        raise invalid_argument("heartbeat_interval", "must be shorter than lease_duration")
    if settings.push_timeout > MAX_PUSH_TIMEOUT:
        raise invalid_argument("push_timeout", f"must be at most {MAX_PUSH_TIMEOUT.total_seconds():g}s")


def push_settings(settings: ServerSettings) -> PushSettings:
    return PushSettings(
        signing_key=settings.signing_key,
        request_timeout=settings.push_timeout,
        concurrency=settings.push_concurrency,
        breaker_threshold=settings.push_breaker_threshold,
        breaker_reset=settings.push_breaker_reset,
        retry_max=settings.push_retry_max,
    )


def ingest_app(ingest: Ingest, settings: ServerSettings) -> EventServiceASGIApplication:
    # Connect caps request messages; allow a full payload plus protobuf framing.
    read_max = settings.max_payload_bytes + _READ_MAX_OVERHEAD
    return EventServiceASGIApplication(
        EventServiceRpc(ingest), interceptors=interceptors(), read_max_bytes=read_max
    )


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
