"""Standard gRPC health checking (`grpc.health.v1.Health`) served as a connect-python ASGI app.

Load balancers, Kubernetes gRPC probes, grpcio clients and `grpc_health_probe` speak this protocol,
so it is served like every other Ironflow service: one ASGI app that answers Connect, gRPC and
gRPC-Web. The message classes come from grpcio-health-checking; the method table is written by hand
because there is no Ironflow .proto for it to be generated from.

Semantics follow the protocol spec (grpc/grpc doc/health-checking.md) and match grpc-go:

* `Check` answers the stored status, or NOT_FOUND for a service nobody registered.
* `Watch` sends the current status at once (SERVICE_UNKNOWN, not an error, for an unregistered
  service), then one message per change. Changes are coalesced to the latest status: a watcher
  that falls behind skips intermediate states rather than buffering them, as grpc-go does.
* `List` returns every registered status, refusing with RESOURCE_EXHAUSTED past a bound.
* `shutdown()` marks everything NOT_SERVING, ignores later `set_status` calls, tells each watcher
  NOT_SERVING and then ends its stream with UNAVAILABLE, which is what a client would see from a
  gRPC server that went away; clients treat it as "reconnect elsewhere".

All methods must be called on the event loop thread that serves the app.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Final, Protocol, cast

from connectrpc.code import Code
from connectrpc.compression import Compression
from connectrpc.errors import ConnectError
from connectrpc.interceptor import Interceptor
from connectrpc.method import IdempotencyLevel, MethodInfo
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication, Endpoint
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

__all__ = [
    "HEALTH_SERVICE_NAME",
    "MAX_LISTED_SERVICES",
    "NOT_SERVING",
    "SERVICE_UNKNOWN",
    "SERVING",
    "UNKNOWN",
    "HealthService",
    "health_asgi_app",
]

HEALTH_SERVICE_NAME: Final = "grpc.health.v1.Health"

# The enum values of HealthCheckResponse.ServingStatus, taken from the proto rather than restated.
UNKNOWN: Final[int] = health_pb2.HealthCheckResponse.UNKNOWN
SERVING: Final[int] = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: Final[int] = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN: Final[int] = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

# health.proto says List may refuse with RESOURCE_EXHAUSTED past "a server-side limit" so one
# response can never grow without bound; grpc-go picked 100 and we follow it.
MAX_LISTED_SERVICES: Final = 100


class _HealthCheckRequest(Protocol):
    """The one field of grpc.health.v1.HealthCheckRequest we read (the module ships no typed stubs)."""

    service: str


# ASGI shapes as far as this module touches them; connectrpc types them with asgiref, which is only a
# type-checking dependency there and is not installed here.
_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]


class _RequestLifetime:
    """Tells a long-lived Watch that its client went away.

    connectrpc notices an `http.disconnect` during a server stream only when the handler yields its
    next message, and a Watch may not yield for hours. Without this, every abandoned Watch would park
    a generator until the next status change or server shutdown.
    """

    def __init__(self) -> None:
        self.disconnected = False
        self._wakeups: set[asyncio.Event] = set()

    def subscribe(self, wakeup: asyncio.Event) -> None:
        self._wakeups.add(wakeup)

    def unsubscribe(self, wakeup: asyncio.Event) -> None:
        self._wakeups.discard(wakeup)

    def mark_disconnected(self) -> None:
        self.disconnected = True
        for wakeup in self._wakeups:
            wakeup.set()


# Set per HTTP request by the ASGI app below; a ContextVar because connectrpc gives handlers no hook
# to the ASGI receive channel, and the handler's generator runs in the request's task (context).
_request_lifetime: contextvars.ContextVar[_RequestLifetime | None] = contextvars.ContextVar(
    "ironflow_health_request_lifetime", default=None
)


def _check_response(status: int) -> Message:
    return cast("Message", health_pb2.HealthCheckResponse(status=status))


class HealthService:
    """Serving statuses per service name; "" is the status of the server as a whole.

    The overall status starts SERVING, like grpcio's and grpc-go's health servers: a server that
    answers health checks at all is serving until told otherwise.
    """

    def __init__(self) -> None:
        self._statuses: dict[str, int] = {"": SERVING}
        self._shut_down = False
        # One event per open Watch; every status change sets them all (watchers re-read and decide).
        self._wakeups: set[asyncio.Event] = set()

    def set_status(self, service: str, status: int) -> None:
        """Record `status` (SERVING, NOT_SERVING, ...) for `service`; "" means the whole server.

        Ignored after `shutdown()`, so a component reporting healthy late cannot undo a drain.
        """
        # Name() raises ValueError for a number outside the enum, catching typos before a client sees them.
        health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        if self._shut_down:
            return
        if self._statuses.get(service) == status:
            return
        self._statuses[service] = status
        self._wake_watchers()

    def clear_status(self, service: str) -> None:
        """Forget `service`: Check answers NOT_FOUND again and watchers see SERVICE_UNKNOWN."""
        if self._shut_down or service not in self._statuses:
            return
        del self._statuses[service]
        self._wake_watchers()

    def get_status(self, service: str) -> int | None:
        """The stored status of `service`, or None if it was never set."""
        return self._statuses.get(service)

    @property
    def active_watches(self) -> int:
        """How many Watch streams are open (for metrics, and to show abandoned ones are released)."""
        return len(self._wakeups)

    def shutdown(self) -> None:
        """Mark every service NOT_SERVING for good and end all Watch streams.

        Call it when the server starts draining, before stopping the HTTP server: watchers get the
        NOT_SERVING update, then their streams end with UNAVAILABLE so the server can stop without
        waiting on streams that would otherwise stay open forever.
        """
        if self._shut_down:
            return
        self._shut_down = True
        for service in self._statuses:
            self._statuses[service] = NOT_SERVING
        self._wake_watchers()

    def _wake_watchers(self) -> None:
        for wakeup in self._wakeups:
            wakeup.set()

    # -- RPC handlers -------------------------------------------------------------------------------

    async def check(self, request: _HealthCheckRequest, ctx: RequestContext[Any, Any]) -> Message:
        status = self._statuses.get(request.service)
        if status is None:
            raise ConnectError(Code.NOT_FOUND, f"unknown service {request.service!r}")
        return _check_response(status)

    async def watch(
        self, request: _HealthCheckRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[Message]:
        lifetime = _request_lifetime.get() or _RequestLifetime()
        wakeup = asyncio.Event()
        self._wakeups.add(wakeup)
        lifetime.subscribe(wakeup)
        try:
            last_sent: int | None = None
            while True:
                # Clear before reading the state: a change made while the message below is being sent
                # sets the event again, so the wait at the bottom returns at once and nothing is missed.
                wakeup.clear()
                status = self._statuses.get(request.service, SERVICE_UNKNOWN)
                if status != last_sent:
                    yield _check_response(status)
                    last_sent = status
                if self._shut_down:
                    raise ConnectError(Code.UNAVAILABLE, "server is shutting down")
                if lifetime.disconnected:
                    return
                await wakeup.wait()
        finally:
            self._wakeups.discard(wakeup)
            lifetime.unsubscribe(wakeup)

    async def list_statuses(self, request: Message, ctx: RequestContext[Any, Any]) -> Message:
        if len(self._statuses) > MAX_LISTED_SERVICES:
            raise ConnectError(
                Code.RESOURCE_EXHAUSTED,
                f"server health list exceeds maximum capacity: {MAX_LISTED_SERVICES}",
            )
        response = health_pb2.HealthListResponse()
        for service, status in self._statuses.items():
            response.statuses[service].status = status
        return cast("Message", response)


# Typed by annotation, not by subscripting: MethodInfo is a frozen slots dataclass, and calling
# MethodInfo[A, B](...) makes typing set __orig_class__ on the instance, which such classes reject.
_CHECK: Final[MethodInfo[_HealthCheckRequest, Message]] = MethodInfo(
    name="Check",
    service_name=HEALTH_SERVICE_NAME,
    input=health_pb2.HealthCheckRequest,
    output=health_pb2.HealthCheckResponse,
    # Side-effect free, so Connect clients may use GET (cacheable probes).
    idempotency_level=IdempotencyLevel.NO_SIDE_EFFECTS,
)
_LIST: Final[MethodInfo[Message, Message]] = MethodInfo(
    name="List",
    service_name=HEALTH_SERVICE_NAME,
    input=health_pb2.HealthListRequest,
    output=health_pb2.HealthListResponse,
    idempotency_level=IdempotencyLevel.NO_SIDE_EFFECTS,
)
_WATCH: Final[MethodInfo[_HealthCheckRequest, Message]] = MethodInfo(
    name="Watch",
    service_name=HEALTH_SERVICE_NAME,
    input=health_pb2.HealthCheckRequest,
    output=health_pb2.HealthCheckResponse,
    idempotency_level=IdempotencyLevel.UNKNOWN,
)


class _HealthASGIApplication(ConnectASGIApplication[HealthService]):
    def __init__(
        self,
        service: HealthService,
        *,
        interceptors: Iterable[Interceptor] = (),
        compressions: Iterable[Compression] | None = None,
    ) -> None:
        super().__init__(
            service=service,
            endpoints=lambda svc: {
                f"/{HEALTH_SERVICE_NAME}/Check": Endpoint.unary(method=_CHECK, function=svc.check),
                f"/{HEALTH_SERVICE_NAME}/List": Endpoint.unary(method=_LIST, function=svc.list_statuses),
                f"/{HEALTH_SERVICE_NAME}/Watch": Endpoint.server_stream(method=_WATCH, function=svc.watch),
            },
            interceptors=interceptors,
            compressions=compressions,
        )

    @property
    def path(self) -> str:
        """The URL prefix to mount the app at, as generated apps report theirs."""
        return f"/{HEALTH_SERVICE_NAME}"

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        lifetime = _RequestLifetime()

        async def receive_noting_disconnect() -> _Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                lifetime.mark_disconnected()
            return message

        token = _request_lifetime.set(lifetime)
        try:
            await super().__call__(scope, receive_noting_disconnect, send)
        finally:
            _request_lifetime.reset(token)


def health_asgi_app(
    service: HealthService,
    *,
    interceptors: Iterable[Interceptor] = (),
    compressions: Iterable[Compression] | None = None,
) -> ConnectASGIApplication[HealthService]:
    """The ASGI app serving `grpc.health.v1.Health` (Check, Watch, List) from `service`.

    Mount it at its `.path` ("/grpc.health.v1.Health"), next to the generated Ironflow apps.
    """
    return _HealthASGIApplication(service, interceptors=interceptors, compressions=compressions)
