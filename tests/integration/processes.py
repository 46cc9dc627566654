"""Real processes for failure tests: `ironflow serve` on a SQLite file and crash-test workers."""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from pathlib import Path

import httpx

import ironflow
from tests.support import eventually

ROOT = Path(__file__).resolve().parents[2]


async def start_worker(
    url: str, transport: str, function_id: str, event: str, tmp: Path, *, shape: str = "five"
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.crash_worker",
        url,
        transport,
        function_id,
        event,
        str(tmp / "side-effects.log"),
        str(tmp / "gate"),
        shape,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
        await process.wait()


def executions(tmp: Path) -> Counter[str]:
    log = tmp / "side-effects.log"
    return Counter(log.read_text().split()) if log.exists() else Counter()


async def step_statuses(client: ironflow.Client, run_id: str) -> dict[str, str]:
    return {step.id: step.status for step in await client.get_run_steps(run_id)}


async def function_registered(client: ironflow.Client, function_id: str) -> bool:
    return any(function.id == function_id for function in await client.list_functions())


async def start_server(
    tmp: Path, port: int, *, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """`ironflow serve` on SQLite in `tmp`, with short leases; `env` adds settings (OTEL_*, ...).
    Its log is kept in `tmp/server.log`, for when a test fails."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("IRONFLOW_", "OTEL_"))}
    environment.update(
        {"IRONFLOW_LEASE_DURATION": "2s", "IRONFLOW_HEARTBEAT_INTERVAL": "500ms", **(env or {})}
    )
    with (tmp / "server.log").open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ironflow.services.server",
            "serve",
            "--port",
            str(port),
            "--database-url",
            f"sqlite+aiosqlite:///{tmp / 'ironflow.db'}",
            cwd=tmp,
            env=environment,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )

    async def ready() -> bool:
        if process.returncode is not None:
            raise AssertionError(f"server exited early with {process.returncode}")
        async with httpx.AsyncClient() as http:
            return (await http.get(f"http://127.0.0.1:{port}/ready")).status_code == 200

    await eventually(ready, within=30, what="ironflow serve to become ready")
    return process
