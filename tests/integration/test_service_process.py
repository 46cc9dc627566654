"""`ironflow service <name>` as an operator runs it: clear errors for bad settings, and readiness that
names what a service is waiting for."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import POSTGRES_URL, REDIS_URL, unique_name
from tests.support import eventually, free_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def run_service(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IRONFLOW_")}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ironflow.services.server",
        "service",
        *args,
        env={**clean, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["scheduler", "--database-url", POSTGRES_URL], "stream_url"),  # memory:// cannot be shared
        (
            [
                "ingest",
                "--stream-url",
                REDIS_URL,
                "--database-url",
                "postgresql+psycopg://nobody@127.0.0.1:1/x",
            ],
            "the database is unreachable",
        ),
        (["worker-gateway", "--stream-url", "redis://127.0.0.1:1/0"], "Redis"),
        (["worker-gateway", "--stream-url", REDIS_URL, "--scheduler-url", "ftp://scheduler"], "service url"),
        (["everything"], "'everything' is not one of"),
    ],
)
async def test_bad_settings_are_a_clear_error(args: list[str], says: str) -> None:
    process = await run_service(*args, "--port", str(free_port()))
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    text = " ".join((out + err).decode().split())  # rich wraps long lines
    assert process.returncode == 2, text
    assert says in text
    assert "Traceback" not in text


async def test_a_service_is_live_but_not_ready_while_a_service_it_calls_is_down() -> None:
    """A worker-gateway whose scheduler is not running: /health and gRPC health "liveness" say it is
    up; /ready (503, naming the scheduler) and gRPC health "" say it must not get traffic yet."""
    port, nobody, nobody_else = free_port(), free_port(), free_port()
    process = await run_service(
        "worker-gateway",
        "--port",
        str(port),
        "--stream-url",
        REDIS_URL,
        "--scheduler-url",
        f"http://127.0.0.1:{nobody}",
        "--registry-url",
        f"http://127.0.0.1:{nobody_else}",
        env={"IRONFLOW_STREAM_PREFIX": unique_name("svc"), "IRONFLOW_READINESS_INTERVAL": "0.5"},
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def not_ready() -> httpx.Response | None:
                answer = await http.get("/ready")
                return answer if answer.status_code == 503 else None

            answer = await eventually(not_ready, within=30, what="the gateway to answer /ready")
            assert (await http.get("/health")).status_code == 200
        checks = answer.json()["checks"]
        assert checks["stream"] == "ok"
        assert checks["registry"].startswith("unavailable")
        assert checks["scheduler"].startswith("unavailable")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            live = await health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
            ready = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert live.status == health_pb2.HealthCheckResponse.SERVING
        assert ready.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0
