"""Turning tracing on for a process, from the standard `OTEL_*` variables or an injected exporter.

The provider is held here, not installed as OpenTelemetry's global one: the global can be set only
once per process (later attempts are refused with a logged warning), and a test process starts many
servers. It is injectable (`setup_tracing(..., exporter=...)` or `provider=...`) and the interceptors
take their tracer explicitly; services find it through `tracer()` rather than each growing a telemetry
parameter on constructors that both deployment shapes share.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from ironflow.services.core.errors import invalid_argument

from ._names import TRACER_NAME

_NOOP_TRACER = trace.NoOpTracer()


class _Active:
    """The process's provider, and whether `shutdown_tracing` shuts it down (built here) or only
    flushes it (injected: its owner shuts it down)."""

    provider: TracerProvider | None = None
    owned: bool = False


def setup_tracing(
    service_name: str, *, exporter: SpanExporter | None = None, provider: TracerProvider | None = None
) -> TracerProvider | None:
    """Install tracing for this process and return the provider, or None when tracing is off.

    From the environment: `OTEL_TRACES_EXPORTER` (`none` [default], `console`, `otlp`, or a comma
    list), `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`
    [default] or `grpc`), `OTEL_SERVICE_NAME` (else `service_name`) and `OTEL_SDK_DISABLED`; the OTLP
    exporters read their own endpoint, header and timeout variables.

    An injected `provider` or `exporter` (tests) replaces whatever was installed. Otherwise a provider
    installed earlier in the process stays (a test's, set up before it starts a server).
    """
    if provider is not None or exporter is not None:
        shutdown_tracing()
        owned = provider is None
        if provider is None:
            provider = _provider(service_name, [exporter] if exporter is not None else [])
        _Active.provider, _Active.owned = provider, owned
        return provider
    if _Active.provider is not None:
        return _Active.provider
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = _exporters_from_env()
    if not exporters:
        return None
    _Active.provider, _Active.owned = _provider(service_name, exporters), True
    return _Active.provider


def shutdown_tracing() -> None:
    """Flush what is buffered and stop tracing (a provider built by `setup_tracing` is shut down)."""
    provider, owned = _Active.provider, _Active.owned
    _Active.provider, _Active.owned = None, False
    if provider is None:
        return
    if owned:
        provider.shutdown()
    else:
        provider.force_flush()


def tracing_enabled() -> bool:
    return _Active.provider is not None


def tracer() -> trace.Tracer:
    """The services' tracer: the installed provider's, or a no-op one when tracing is off."""
    provider = _Active.provider
    return provider.get_tracer(TRACER_NAME) if provider is not None else _NOOP_TRACER


def _provider(service_name: str, exporters: list[SpanExporter]) -> TracerProvider:
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; ours is the fallback.
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        # Batched: exporting never sits on a request's path; `shutdown_tracing` flushes the rest.
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _exporters_from_env() -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in os.environ.get("OTEL_TRACES_EXPORTER", "none").split(","):
        name = name.strip().lower()  # noqa: PLW2901 - the same name, normalised
        if name in ("", "none"):
            continue
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            exporters.append(_otlp_exporter())
        else:
            raise invalid_argument("OTEL_TRACES_EXPORTER", f"must be none, console or otlp, got {name!r}")
    return exporters


def _otlp_exporter() -> SpanExporter:
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"  # the specification's default
    ).strip()
    # Imported on demand: each exporter brings its own transport (requests, or a grpc channel).
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    raise invalid_argument("OTEL_EXPORTER_OTLP_PROTOCOL", f"must be http/protobuf or grpc, got {protocol!r}")
