"""The distributed shape as local processes, for acceptance tests: every service is its own
`ironflow service` process on Postgres and Redis (registry, ingest, worker-gateway, and the scheduler
twice), in a schema and under a stream prefix of its own."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from ironflow.services.core.firehose import firehose_key
from ironflow.services.core.storage import Database
from ironflow.services.core.streams import open_stream
from tests.conftest import POSTGRES_URL, REDIS_URL, unique_name
from tests.support import eventually, free_port


class Services:
    """`ironflow service` processes of one deployment (a schema and a stream prefix of its own)."""

    def __init__(self, workdir: Path, label: str) -> None:
        self.workdir = workdir
        self.schema = unique_name(label)
        self.prefix = unique_name(label)
        self.ports = {
            name: [free_port() for _ in range(count)]
            for name, count in (("registry", 1), ("ingest", 1), ("scheduler", 2), ("worker-gateway", 1))
        }
        self.processes: list[asyncio.subprocess.Process] = []

    def url(self, name: str, index: int = 0) -> str:
        return f"http://127.0.0.1:{self.ports[name][index]}"

    def peers(self, name: str) -> str:
        """Every replica of `name`, as a service URL setting lists them (grpcio balances round-robin)."""
        return "http://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[name])

    async def start(self) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("IRONFLOW_")}
        common = {
            **clean,
            "IRONFLOW_DATABASE_URL": POSTGRES_URL,
            "IRONFLOW_DATABASE_SCHEMA": self.schema,
            "IRONFLOW_STREAM_URL": REDIS_URL,
            "IRONFLOW_STREAM_PREFIX": self.prefix,
            "IRONFLOW_READINESS_INTERVAL": "0.5",
            "IRONFLOW_REGISTRY_URL": self.peers("registry"),
            "IRONFLOW_INGEST_URL": self.peers("ingest"),
            "IRONFLOW_SCHEDULER_URL": self.peers("scheduler"),
        }
        for name, ports in self.ports.items():
            for index, port in enumerate(ports):
                with (self.workdir / f"{name}-{index}.log").open("ab") as log:
                    self.processes.append(
                        await asyncio.create_subprocess_exec(
                            sys.executable,
                            "-m",
                            "ironflow.services.server",
                            "service",
                            name,
                            env={**common, "IRONFLOW_PORT": str(port)},
                            stdout=log,
                            stderr=log,
                        )
                    )
        async with httpx.AsyncClient() as http:
            for name, ports in self.ports.items():
                for index in range(len(ports)):
                    url = f"{self.url(name, index)}/ready"

                    async def ready(url: str = url) -> bool:
                        self.check_running()
                        return (await http.get(url)).status_code == 200

                    await eventually(ready, within=90, interval=0.2, what=f"{url} to be ready")

    def check_running(self) -> None:
        for process in self.processes:
            if process.returncode is not None:
                logs = "\n".join(p.read_text(errors="replace")[-1500:] for p in self.workdir.glob("*.log"))
                raise AssertionError(f"a service process exited with {process.returncode}\n{logs}")

    async def stop(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), timeout=20)
            except TimeoutError:
                process.kill()
                await process.wait()
        db = Database.open(POSTGRES_URL)
        try:
            async with db.transaction() as conn:
                await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await db.close()
        stream = open_stream(REDIS_URL)
        try:
            await stream.delete_stream(firehose_key(self.prefix))
        finally:
            await stream.close()


@asynccontextmanager
async def running_services(workdir: Path, label: str) -> AsyncIterator[Services]:
    services = Services(workdir, label)
    try:
        await services.start()
        yield services
    finally:
        await services.stop()
