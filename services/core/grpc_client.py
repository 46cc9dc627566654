"""How one service calls another: grpcio channels with keepalive, retries and deadlines.

Every call has a deadline (a hung peer must not hang the caller). Calls that are safe to repeat are
retried on UNAVAILABLE by grpcio itself, through the channel's service config, with jittered
exponential backoff; a call that may have changed state (leasing jobs, recording a report) is never
retried blindly: its caller decides, since the scheduler fences stale repeats anyway. Failures come
back as `ServiceError` with the peer's code and message, so they cross the next RPC edge unchanged.

grpcio rather than connect-python's client: its HTTP client can abort at interpreter exit, and grpcio
brings keepalive, retries and connection management that would otherwise be written by hand.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlparse

import grpc

from .errors import ErrorCode, ServiceError
from .telemetry import client_interceptors

Response = TypeVar("Response")

# Retried on UNAVAILABLE (a connection refused or reset before an answer): up to 5 attempts over
# about 3 s, enough to ride out a replica restarting behind a load balancer.
_RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def channel_target(url: str) -> tuple[str, bool]:
    """The grpcio target for a service URL, and whether it uses TLS.

    `http://host:port` resolves `host` through DNS and balances over every address it returns (a
    headless Kubernetes Service, a compose service with replicas). `http://10.0.0.1:9203,10.0.0.2:9203`
    lists the replicas' addresses explicitly (IPv4 literals only).
    """
    scheme, _, rest = (url if "://" in url else f"http://{url}").partition("://")
    addresses = [address for address in rest.rstrip("/").split(",") if address]
    parsed = [urlparse(f"{scheme}://{address}") for address in addresses]
    if scheme not in ("http", "https") or not parsed or not all(p.hostname and not p.path for p in parsed):
        raise ServiceError(
            ErrorCode.INVALID_ARGUMENT,
            f"service url must look like http://host:port or http://ip:port,ip:port; got {url!r}",
        )
    default_port = 443 if scheme == "https" else 80
    if len(parsed) == 1:
        return f"dns:///{parsed[0].hostname}:{parsed[0].port or default_port}", scheme == "https"
    try:
        hosts = [str(ipaddress.IPv4Address(p.hostname)) for p in parsed]
    except ValueError:
        raise ServiceError(
            ErrorCode.INVALID_ARGUMENT, f"a list of service addresses must be IPv4 addresses: {url!r}"
        ) from None
    listed = ",".join(f"{host}:{p.port or default_port}" for host, p in zip(hosts, parsed, strict=True))
    return f"ipv4:{listed}", scheme == "https"


def service_channel(url: str, *, idempotent: Mapping[str, Sequence[str]]) -> grpc.aio.Channel:
    """A channel to another service at `url` (see `channel_target`), balanced round-robin over its
    replicas. `idempotent` maps a full proto service name to the methods that may be retried."""
    target, tls = channel_target(url)
    config = {
        # One connection per replica, calls spread over them; a replica that stops answering is
        # skipped until it reconnects, and retried calls go to another one.
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": service, "method": method} for method in methods],
                "retryPolicy": _RETRY_POLICY,
            }
            for service, methods in idempotent.items()
            if methods
        ],
    }
    options: list[tuple[str, Any]] = [
        ("grpc.service_config", json.dumps(config)),
        ("grpc.enable_retries", 1),
        # Keepalive pings find a dead peer (a killed pod, a dropped NAT entry) within ~30 s even on an
        # idle channel, instead of the next call hanging until its deadline.
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Reconnect quickly after a peer restarts (the default backoff grows to 2 minutes).
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 5_000),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]
    interceptors = client_interceptors()
    if tls:
        return grpc.aio.secure_channel(
            target, grpc.ssl_channel_credentials(), options=options, interceptors=interceptors
        )
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


async def call(
    method: Callable[..., Awaitable[Response]], request: Any, *, deadline: float, peer: str
) -> Response:
    """Call a unary method with a deadline; a failure becomes a `ServiceError` with the peer's code."""
    try:
        return await method(request, timeout=deadline)
    except grpc.aio.AioRpcError as exc:
        raise rpc_error(exc, peer) from None


def rpc_error(exc: grpc.aio.AioRpcError, peer: str) -> ServiceError:
    status = exc.code()
    try:
        code = ErrorCode(status.name)
    except ValueError:
        code = ErrorCode.INTERNAL
    if code in (ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED):
        return ServiceError(code, f"the {peer} service is unreachable: {exc.details() or status.name}")
    return ServiceError(code, exc.details() or status.name)


async def check_reachable(channel: grpc.aio.Channel, *, deadline: float, service: str = "liveness") -> None:
    """Raise UNAVAILABLE unless the peer answers a gRPC health check for `service` with SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415 - untyped module, load lazily

    stub = health_pb2_grpc.HealthStub(channel)
    try:
        # wait_for_ready: a channel still backing off after a refused connection tries again now.
        answer = await stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=deadline, wait_for_ready=True
        )
    except grpc.aio.AioRpcError as exc:
        raise ServiceError(ErrorCode.UNAVAILABLE, exc.details() or exc.code().name) from None
    if answer.status != health_pb2.HealthCheckResponse.SERVING:
        raise ServiceError(ErrorCode.UNAVAILABLE, "not serving")
