"""Tracing hooks for service-to-service calls (filled in with OpenTelemetry; off by default)."""

from __future__ import annotations

import grpc


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Interceptors every internal grpcio channel gets."""
    return []
