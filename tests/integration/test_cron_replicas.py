"""The acceptance test of cron triggers: the distributed shape with two scheduler replicas, in real
time. Every service is its own `ironflow service` process on Postgres and Redis (registry, ingest,
worker-gateway, and the scheduler twice); a worker registers an every-minute function through the
gateway. Two consecutive ticks each start exactly one run, which the worker completes with the tick's
time from its event, and no tick ever starts a second run.

It takes real minutes (the first tick comes at the next minute boundary, the second one a minute
later), so it is the only test of cron triggers that waits for the clock.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

import ironflow
from ironflow.services.core.firehose import firehose_key
from ironflow.services.core.storage import Database, runs
from ironflow.services.core.streams import open_stream
from tests.conftest import POSTGRES_URL, REDIS_URL, unique_name
from tests.support import eventually, free_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(300)]


class Services:
    """`ironflow service` processes of one deployment (a schema and a stream prefix of its own)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.schema = unique_name("cron")
        self.prefix = unique_name("cron")
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
async def running_services(workdir: Path) -> AsyncIterator[Services]:
    services = Services(workdir)
    try:
        await services.start()
        yield services
    finally:
        await services.stop()


def ticking_function(function_id: str) -> ironflow.Function:
    @ironflow.function(id=function_id, triggers=[ironflow.on_cron("* * * * *")])
    async def tick(ctx: ironflow.Context) -> dict[str, Any]:
        return {"name": ctx.event.name, "scheduled_at": ctx.event.data["scheduled_at"]}

    return tick


async def test_an_every_minute_schedule_fires_once_per_minute_with_two_schedulers(tmp_path: Path) -> None:
    function_id = unique_name("every-minute")
    async with running_services(tmp_path) as services:
        db = Database.open(POSTGRES_URL, schema=services.schema)
        worker = ironflow.Worker(
            server_url=services.url("worker-gateway"), functions=[ticking_function(function_id)]
        )
        worker.start()
        try:

            async def completed_ticks() -> list[Any] | None:
                services.check_running()
                async with db.reading() as conn:
                    rows = (
                        await conn.execute(
                            sa.select(runs.c.status, runs.c.input, runs.c.output).where(
                                runs.c.function_id == function_id
                            )
                        )
                    ).all()
                done = sorted(
                    (row for row in rows if row.status == "completed"),
                    key=lambda row: row.input["event"]["data"]["scheduled_at"],
                )
                return rows if len(done) >= 2 else None

            # The first tick is the next minute boundary after the worker registers, the second one
            # a minute later: at most about two minutes.
            rows = await eventually(completed_ticks, within=160, interval=0.5, what="two completed ticks")
        finally:
            await worker.stop()
            await db.close()

    scheduled = [row.input["event"]["data"]["scheduled_at"] for row in rows]
    assert len(scheduled) == len(set(scheduled)), f"a tick started two runs: {sorted(scheduled)}"
    times = sorted(datetime.fromisoformat(text.replace("Z", "+00:00")) for text in scheduled)
    assert all(later - earlier == timedelta(minutes=1) for earlier, later in itertools.pairwise(times))
    for row in rows:
        event = row.input["event"]
        assert event["name"] == f"system.cron.{function_id}"
        if row.status == "completed":
            assert row.output == {"name": event["name"], "scheduled_at": event["data"]["scheduled_at"]}
