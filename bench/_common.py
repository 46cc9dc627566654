"""What the benchmarks share: where a run keeps its data, percentiles, versions, servers on free ports.

Timing: latencies within one process use `time.perf_counter_ns()`, which is CLOCK_MONOTONIC on
Linux, so readings from different processes on one machine compare. Timestamps the server stores
(runs' created/started/ended) are wall-clock UTC and are compared with `time.time()` taken here.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import signal
import socket
import sqlite3
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from ironflow.services.core.storage import Database

REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
READY_WITHIN_S = 60.0


# -- numbers ---------------------------------------------------------------------------------------


def rank(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted samples (q in 0..1)."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def latency_summary(samples_ms: Sequence[float]) -> dict[str, Any]:
    """count, p50/p90/p99/max/mean in ms (nearest rank) of one trial's samples."""
    ordered = sorted(samples_ms)
    if not ordered:
        return {"count": 0}
    return {
        "count": len(ordered),
        "p50_ms": round(rank(ordered, 0.50), 3),
        "p90_ms": round(rank(ordered, 0.90), 3),
        "p99_ms": round(rank(ordered, 0.99), 3),
        "max_ms": round(ordered[-1], 3),
        "mean_ms": round(statistics.fmean(ordered), 3),
    }


def across(trials: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Median and range over trials of every number the trials report."""
    out: dict[str, Any] = {}
    for key in trials[0] if trials else ():
        values = [trial[key] for trial in trials if isinstance(trial.get(key), int | float)]
        if values and not isinstance(values[0], bool):
            out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


# -- storage ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Storage:
    """Where one run keeps its data: URLs plus the unique names that keep runs apart."""

    backend: str  # "embedded" (SQLite + in-process stream) or "distributed" (Postgres + Redis)
    database_url: str
    stream_url: str
    schema: str | None
    prefix: str


def new_storage(backend: str, tmp: Path, label: str = "bench") -> Storage:
    run = uuid.uuid4().hex[:12]
    if backend == "embedded":
        return Storage(backend, f"sqlite+aiosqlite:///{tmp / f'{run}.db'}", "memory://", None, f"bench_{run}")
    name = f"{label}_{run}"
    return Storage(backend, POSTGRES_URL, REDIS_URL, name, name)


async def clean_up(storage: Storage) -> None:
    """Drop the run's schema and every stream key under its prefix (distributed only)."""
    if storage.schema is None:
        return
    db = Database.open(storage.database_url)
    try:
        async with db.transaction() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{storage.schema}" CASCADE')
    finally:
        await db.close()
    client = aioredis.from_url(storage.stream_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{storage.prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def service_env(storage: Storage) -> dict[str, str]:
    """Settings every Ironflow server process of this run gets."""
    env = {"IRONFLOW_STREAM_PREFIX": storage.prefix, "IRONFLOW_LOG_LEVEL": "warning"}
    if storage.schema is not None:
        env["IRONFLOW_DATABASE_SCHEMA"] = storage.schema
    return env


# -- the machine -----------------------------------------------------------------------------------


async def versions(*, distributed: bool) -> dict[str, str]:
    found = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        "sqlite": sqlite3.sqlite_version,
        **{name: version(name) for name in ("ironflow", "grpcio", "hypercorn", "redis", "psycopg")},
    }
    if distributed:
        client = aioredis.from_url(REDIS_URL)
        try:
            found["redis_server"] = str((await client.info("server"))["redis_version"])
        finally:
            await client.aclose()
        engine = create_async_engine(POSTGRES_URL)
        try:
            async with engine.connect() as conn:
                found["postgres"] = str((await conn.execute(sa.text("SHOW server_version"))).scalar_one())
        finally:
            await engine.dispose()
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_bytes(pid: int) -> tuple[int, int] | None:
    """(current RSS, peak RSS) of a live process, from /proc (Linux); None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a live process (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# -- processes -------------------------------------------------------------------------------------


async def stop_process(process: asyncio.subprocess.Process, *, grace: float = 20.0) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


async def until_healthy(url: str, process: asyncio.subprocess.Process, log_path: Path, path: str) -> None:
    deadline = time.monotonic() + READY_WITHIN_S
    async with httpx.AsyncClient() as http:
        while True:
            if process.returncode is not None:
                log = await asyncio.to_thread(log_path.read_text)
                raise RuntimeError(f"the server exited ({process.returncode}):\n{log[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(f"{url}{path}")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not answer {path} within {READY_WITHIN_S:g}s")
            await asyncio.sleep(0.05)  # polling the server's health, with a deadline


@contextlib.asynccontextmanager
async def embedded_server(
    storage: Storage, log_path: Path, env: Mapping[str, str] | None = None, *, ready: str = "/health"
) -> AsyncIterator[tuple[str, int]]:
    """`ironflow serve` in a subprocess on a free port; yields its URL and pid once `ready` answers."""
    port = free_port()
    environment = {**os.environ, **service_env(storage), **(env or {})}
    command = [sys.executable, "-m", "ironflow.services.server", "serve", "--port", str(port)]
    command += ["--database-url", storage.database_url, "--stream-url", storage.stream_url]
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(*command, env=environment, stdout=log, stderr=log)
        try:
            await until_healthy(url, process, log_path, ready)
            yield url, process.pid
        finally:
            await stop_process(process)
