"""gRPC health checking and server reflection, served by hypercorn, against real clients.

The clients are the ones operators and tools will use: grpcio (what load balancers, probes and the
Python ecosystem speak) and the `buf curl` binary (connect-go's reflection client, the same protocol
grpcurl uses). Everything runs on a real socket: h2c prior knowledge for gRPC, HTTP/1.1 for Connect.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import hypercorn
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from hypercorn.asyncio import serve

from ironflow.services.core.grpc_health import (
    HEALTH_SERVICE_NAME,
    NOT_SERVING,
    SERVING,
    HealthService,
    health_asgi_app,
)
from ironflow.services.core.grpc_reflection import (
    REFLECTION_SERVICE_NAMES,
    REFLECTION_V1_SERVICE_NAME,
    REFLECTION_V1ALPHA_SERVICE_NAME,
    reflection_asgi_apps,
)
from ironflow.services.core.hypercorn_h2 import install_late_data_guard
from ironflow.v1 import events_pb2
from ironflow.v1.events_connect import EventService, EventServiceASGIApplication

BUF = Path(__file__).resolve().parents[2] / "node_modules" / ".bin" / "buf"
EVENT_SERVICE = events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name
# Bounds every wait on the server, so a regression fails in seconds instead of at the pytest timeout.
DEADLINE_S = 20.0

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _UnimplementedEvents(EventService):
    """Only reflection of EventService matters here; every method keeps the generated default, which
    raises ConnectError(UNIMPLEMENTED)."""


@dataclass(frozen=True)
class _Seen:
    path: str
    http_version: str
    content_type: str


@dataclass
class _Router:
    """Dispatch by service prefix, as the real server router will; records what each request looked
    like so tests can tell which protocol and reflection version a client actually used."""

    apps: Sequence[Any]
    seen: list[_Seen] = field(default_factory=list)
    # Set whenever no HTTP request is being handled, so tests can wait for streams to finish.
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    _in_flight: int = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            # The connect apps need no startup work when given plain service objects.
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        headers = dict(scope["headers"])
        self.seen.append(
            _Seen(scope["path"], scope["http_version"], headers.get(b"content-type", b"").decode())
        )
        self._in_flight += 1
        self.idle.clear()
        try:
            await self._dispatch(scope, receive, send)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self.idle.set()

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        for app in self.apps:
            if scope["path"].startswith(app.path + "/"):
                await app(scope, receive, send)
                return
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@dataclass
class _Server:
    port: int
    health: HealthService
    router: _Router

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
async def server() -> AsyncIterator[_Server]:
    health = HealthService()
    apps = [
        health_asgi_app(health),
        *reflection_asgi_apps([EVENT_SERVICE, HEALTH_SERVICE_NAME, *REFLECTION_SERVICE_NAMES]),
        EventServiceASGIApplication(_UnimplementedEvents()),
    ]
    router = _Router(apps)

    # Bind and listen before serving: the port is known with no pick-then-rebind race, and clients
    # that connect before hypercorn's accept loop runs simply wait in the backlog.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]

    config = hypercorn.Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn now owns (and closes) the descriptor
    config.keep_alive_max_requests = 1_000_000
    config.graceful_timeout = 2.0
    config.accesslog = None

    stop = asyncio.Event()
    install_late_data_guard()  # as the real server does (see services/core/hypercorn_h2.py)
    serving = asyncio.create_task(serve(router, config, shutdown_trigger=stop.wait))
    try:
        yield _Server(port, health, router)
    finally:
        # End Watch streams first, as the real server's drain will, so hypercorn has nothing to wait on.
        health.shutdown()
        stop.set()
        async with asyncio.timeout(DEADLINE_S):
            await serving


# -- grpcio -----------------------------------------------------------------------------------------


async def test_grpcio_check(server: _Server) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE_S)
        assert response.status == health_pb2.HealthCheckResponse.SERVING

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=DEADLINE_S)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND

        server.health.set_status(EVENT_SERVICE, NOT_SERVING)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=EVENT_SERVICE), timeout=DEADLINE_S)
        assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING

        listed = await stub.List(health_pb2.HealthListRequest(), timeout=DEADLINE_S)
        assert {name: s.status for name, s in listed.statuses.items()} == {
            "": SERVING,
            EVENT_SERVICE: NOT_SERVING,
        }


async def test_grpcio_watch_follows_changes_and_releases_cancelled_streams(server: _Server) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        call = stub.Watch(health_pb2.HealthCheckRequest(service=EVENT_SERVICE), timeout=DEADLINE_S)
        updates = call.__aiter__()
        async with asyncio.timeout(DEADLINE_S):
            # Unregistered is not an error for Watch: the spec says to report SERVICE_UNKNOWN and wait.
            assert (await anext(updates)).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            server.health.set_status(EVENT_SERVICE, SERVING)
            assert (await anext(updates)).status == health_pb2.HealthCheckResponse.SERVING
            server.health.set_status(EVENT_SERVICE, NOT_SERVING)
            assert (await anext(updates)).status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert server.health.active_watches == 1

            # A client that goes away must not leave its Watch parked on the server until the next
            # status change: the request's ASGI task must finish and release the watch.
            call.cancel()
            await server.router.idle.wait()
            assert server.health.active_watches == 0


async def test_grpcio_watch_ends_on_shutdown(server: _Server) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        updates = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE_S).__aiter__()
        async with asyncio.timeout(DEADLINE_S):
            assert (await anext(updates)).status == health_pb2.HealthCheckResponse.SERVING
            server.health.shutdown()
            assert (await anext(updates)).status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await anext(updates)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # Draining is final: later reports cannot flip the server back to SERVING.
        server.health.set_status("", SERVING)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE_S)
        assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize("reflection_service", [REFLECTION_V1_SERVICE_NAME, REFLECTION_V1ALPHA_SERVICE_NAME])
async def test_grpcio_reflection_stream(server: _Server, reflection_service: str) -> None:
    """Several questions on one stream, including a miss, answered in order without ending the stream."""
    request = reflection_pb2.ServerReflectionRequest
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = channel.stream_stream(
            f"/{reflection_service}/ServerReflectionInfo",
            request_serializer=request.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )(timeout=DEADLINE_S)
        async with asyncio.timeout(DEADLINE_S):
            await call.write(request(list_services=""))
            listed = await call.read()
            assert sorted(s.name for s in listed.list_services_response.service) == sorted(
                [EVENT_SERVICE, HEALTH_SERVICE_NAME, *REFLECTION_SERVICE_NAMES]
            )

            await call.write(request(file_containing_symbol="no.such.Symbol"))
            missing = await call.read()
            assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
            assert missing.original_request.file_containing_symbol == "no.such.Symbol"

            await call.write(request(file_containing_symbol=f"{EVENT_SERVICE}.Emit"))
            found = await call.read()
            files = {
                descriptor_pb2.FileDescriptorProto.FromString(raw).name
                for raw in found.file_descriptor_response.file_descriptor_proto
            }
            # The service's file and everything it imports, well-known types included, so a client can
            # build the schema without any other source.
            assert {events_pb2.DESCRIPTOR.name, "google/protobuf/timestamp.proto"} <= files
            assert {dep.name for dep in events_pb2.DESCRIPTOR.dependencies} <= files

            # Both versions' own schemas are describable, v1's from the file rebuilt for it.
            for service in REFLECTION_SERVICE_NAMES:
                await call.write(request(file_containing_symbol=service))
                own = await call.read()
                assert own.HasField("file_descriptor_response"), own

            await call.done_writing()
            assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK


# -- buf curl ---------------------------------------------------------------------------------------


async def _buf_curl(*args: str) -> tuple[int, str, str]:
    if not BUF.exists():
        pytest.fail(f"buf CLI not found at {BUF}; run `npm ci` in the repository root to install it")
    process = await asyncio.create_subprocess_exec(
        str(BUF),
        "curl",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(DEADLINE_S):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _reflection_requests(server: _Server) -> list[_Seen]:
    return [seen for seen in server.router.seen if seen.path.endswith("/ServerReflectionInfo")]


async def test_buf_curl_lists_services_and_methods_over_grpc(server: _Server) -> None:
    grpc_flags = ("--protocol", "grpc", "--http2-prior-knowledge", "--reflect")

    code, out, err = await _buf_curl(*grpc_flags, "--list-services", server.url)
    assert code == 0, err
    assert EVENT_SERVICE in out.split()
    assert HEALTH_SERVICE_NAME in out.split()

    code, out, err = await _buf_curl(*grpc_flags, "--list-methods", server.url)
    assert code == 0, err
    assert f"{EVENT_SERVICE}/Emit" in out.split()
    assert f"{HEALTH_SERVICE_NAME}/Watch" in out.split()

    # buf asks v1 first; since v1 answers, it never needs the v1alpha fallback.
    reflection = _reflection_requests(server)
    assert reflection
    assert {seen.path for seen in reflection} == {f"/{REFLECTION_V1_SERVICE_NAME}/ServerReflectionInfo"}
    assert {seen.content_type for seen in reflection} == {"application/grpc"}


async def test_buf_curl_v1alpha_reflection(server: _Server) -> None:
    code, out, err = await _buf_curl(
        "--protocol", "grpc", "--reflect-protocol", "grpc-v1alpha", "--list-methods", server.url
    )
    assert code == 0, err
    assert f"{EVENT_SERVICE}/Emit" in out.split()
    assert {seen.path for seen in _reflection_requests(server)} == {
        f"/{REFLECTION_V1ALPHA_SERVICE_NAME}/ServerReflectionInfo"
    }


async def test_buf_curl_falls_back_to_v1alpha_when_v1_is_missing(server: _Server) -> None:
    """Why v1alpha is still served: with only v1alpha mounted (as on older servers), buf's v1 request
    gets a 404, which gRPC clients read as UNIMPLEMENTED, and buf retries with v1alpha."""
    server.router.apps = [app for app in server.router.apps if app.path != f"/{REFLECTION_V1_SERVICE_NAME}"]
    code, out, err = await _buf_curl("--protocol", "grpc", "--list-services", server.url)
    assert code == 0, err
    assert EVENT_SERVICE in out.split()
    assert [seen.path for seen in _reflection_requests(server)][:2] == [
        f"/{REFLECTION_V1_SERVICE_NAME}/ServerReflectionInfo",
        f"/{REFLECTION_V1ALPHA_SERVICE_NAME}/ServerReflectionInfo",
    ]


@pytest.mark.parametrize(
    ("protocol", "reflection_content_type"),
    [
        ("grpc", "application/grpc"),
        ("grpcweb", "application/grpc-web+proto"),
        ("connect", "application/connect+proto"),
    ],
)
async def test_buf_curl_health_check_with_reflected_schema(
    server: _Server, protocol: str, reflection_content_type: str
) -> None:
    """The health schema itself comes from reflection (grpc_health/v1/health.proto in the pool)."""
    server.health.set_status(EVENT_SERVICE, NOT_SERVING)
    url = f"{server.url}/{HEALTH_SERVICE_NAME}/Check"

    code, out, err = await _buf_curl("--protocol", protocol, "--reflect", "-d", "{}", url)
    assert code == 0, err
    assert json.loads(out) == {"status": "SERVING"}

    code, out, err = await _buf_curl(
        "--protocol", protocol, "--reflect", "-d", json.dumps({"service": EVENT_SERVICE}), url
    )
    assert code == 0, err
    assert json.loads(out) == {"status": "NOT_SERVING"}

    code, _, err = await _buf_curl(
        "--protocol", protocol, "--reflect", "-d", json.dumps({"service": "no.such.Service"}), url
    )
    # buf curl exits with the RPC's code shifted left by three.
    assert code == grpc.StatusCode.NOT_FOUND.value[0] << 3, err

    # Reflection used the requested protocol too: buf's reflection client is a Connect client. Buf
    # always uses HTTP/2 for reflection (it is a bidi stream), so all of this ran over h2c.
    reflection = _reflection_requests(server)
    assert {seen.content_type for seen in reflection} == {reflection_content_type}
    assert {seen.http_version for seen in reflection} == {"2"}


async def test_buf_curl_reaches_event_service_through_reflection(server: _Server) -> None:
    """The request type came from reflection, so the call reaches the stub, which is UNIMPLEMENTED."""
    code, _, err = await _buf_curl(
        "--protocol",
        "grpc",
        "--reflect",
        "-d",
        '{"name": "order.created"}',
        f"{server.url}/{EVENT_SERVICE}/Emit",
    )
    assert code == grpc.StatusCode.UNIMPLEMENTED.value[0] << 3, err


async def test_buf_curl_connect_over_http1(server: _Server, tmp_path: Path) -> None:
    """Connect unary over HTTP/1.1. buf only speaks HTTP/2 when reflecting, so the schema is handed to
    it as a FileDescriptorSet built from the same descriptor pool reflection serves."""
    health_file = descriptor_pool.Default().FindFileByName(health_pb2.DESCRIPTOR.name)
    schema = descriptor_pb2.FileDescriptorSet()
    health_file.CopyToProto(schema.file.add())
    schema_path = tmp_path / "health.binpb"
    schema_path.write_bytes(schema.SerializeToString())

    code, out, err = await _buf_curl(
        "--protocol",
        "connect",
        "--schema",
        str(schema_path),
        "-d",
        "{}",
        f"{server.url}/{HEALTH_SERVICE_NAME}/Check",
    )
    assert code == 0, err
    assert json.loads(out) == {"status": "SERVING"}
    assert [(seen.http_version, seen.content_type) for seen in server.router.seen] == [
        ("1.1", "application/proto")
    ]
