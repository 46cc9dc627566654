"""The Ironflow under test: a deployment (embedded or distributed), its workers, and a reader of its runs.

- embedded: `ironflow serve` in one process on SQLite and the in-process stream (the default shape).
- distributed: the local cluster (`ironflow cluster`'s runner): one `ironflow service` process per
  service against Postgres and Redis, behind the nginx front door, so every hop a production
  deployment makes (front door, service-to-service gRPC, Redis job tickets) is on the path. One
  replica each: on two cores a second replica only adds context switches.

Workers are `bench/_worker.py` processes. Completion is read from the runs table directly (a
read-only query every 100 ms), which costs the server nothing and needs no subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench._common import (
    POSTGRES_URL,
    REDIS_URL,
    ROOT,
    Storage,
    clean_up,
    cpu_seconds,
    embedded_server,
    new_storage,
    rss_bytes,
    service_env,
    stop_process,
)
from ironflow.services.core.storage import Database, runs
from ironflow.services.server._cluster import LocalCluster

POLL_INTERVAL_S = 0.1
WORKER_READY_WITHIN_S = 60.0


@dataclass
class Deployment:
    backend: str
    url: str
    storage: Storage
    server_pids: dict[str, int]
    reader: RunReader

    def memory(self) -> dict[str, Any]:
        """Current and peak RSS (MiB) of each server process, and their sums."""
        per_process = {}
        for name, pid in self.server_pids.items():
            found = rss_bytes(pid)
            if found is not None:
                per_process[name] = {"rss_mib": _mib(found[0]), "peak_rss_mib": _mib(found[1])}
        return {
            "rss_mib": round(sum(entry["rss_mib"] for entry in per_process.values()), 1),
            "peak_rss_mib": round(sum(entry["peak_rss_mib"] for entry in per_process.values()), 1),
            "processes": per_process,
        }

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) or 0.0 for pid in self.server_pids.values())


def _mib(size: int) -> float:
    return round(size / 2**20, 1)


@contextlib.asynccontextmanager
async def deployment(backend: str, tmp: Path) -> AsyncIterator[Deployment]:
    storage = new_storage(backend, tmp, "bench_runs")
    try:
        if backend == "embedded":
            async with (
                embedded_server(storage, tmp / "server.log", ready="/ready") as (url, pid),
                RunReader.open(storage) as reader,
            ):
                yield Deployment(backend, url, storage, {"serve": pid}, reader)
        else:
            cluster = LocalCluster(
                workdir=tmp / f"cluster-{storage.prefix}",
                database_url=POSTGRES_URL,
                stream_url=REDIS_URL,
                replicas=1,
                front_door_port=0,
                fixed_ports=False,
                env=service_env(storage),
            )
            await asyncio.to_thread(cluster.start, timeout=90)
            try:
                pids = {
                    name: replica.process.pid
                    for name, members in cluster.members.items()
                    for replica in members
                    if replica.process is not None
                }
                async with RunReader.open(storage) as reader:
                    yield Deployment(backend, cluster.url, storage, pids, reader)
            finally:
                await asyncio.to_thread(cluster.stop)
    finally:
        await clean_up(storage)


@dataclass
class RunTimes:
    run_id: str
    status: str
    created: float  # Unix seconds
    started: float | None
    ended: float | None


@dataclass
class RunReader:
    """Read-only queries on the deployment's runs table."""

    db: Database

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, storage: Storage) -> AsyncIterator[RunReader]:
        db = Database.open(storage.database_url, schema=storage.schema, pool_size=1)
        try:
            yield cls(db)
        finally:
            await db.close()

    async def progress(self, function_id: str, since: datetime) -> tuple[int, int]:
        """(ended, failed) runs of `function_id` created at or after `since`."""
        ended = runs.c.status.in_(["completed", "failed", "cancelled"])
        query = sa.select(
            sa.func.count().filter(ended), sa.func.count().filter(runs.c.status != "completed", ended)
        ).where(runs.c.function_id == function_id, runs.c.created_at >= since)
        async with self.db.reading() as conn:
            row = (await conn.execute(query)).one()
        return int(row[0]), int(row[1])

    async def wait_ended(self, function_id: str, since: datetime, count: int, *, within: float) -> int:
        """Poll until `count` runs ended (with a deadline); returns how many failed."""
        deadline = time.monotonic() + within
        while True:
            ended, failed = await self.progress(function_id, since)
            if ended >= count:
                return failed
            if time.monotonic() > deadline:
                raise TimeoutError(f"{function_id}: only {ended} of {count} runs ended within {within:g}s")
            await asyncio.sleep(POLL_INTERVAL_S)  # polling the runs table, with a deadline

    async def times(self, function_id: str, since: datetime) -> list[RunTimes]:
        query = sa.select(
            runs.c.id, runs.c.status, runs.c.created_at, runs.c.started_at, runs.c.ended_at
        ).where(runs.c.function_id == function_id, runs.c.created_at >= since)
        async with self.db.reading() as conn:
            rows = (await conn.execute(query)).all()
        return [
            RunTimes(row[0], row[1], _unix(row[2]), _unix_or_none(row[3]), _unix_or_none(row[4]))
            for row in rows
        ]


def _unix(moment: datetime) -> float:
    # SQLite hands timestamps back naive; they are UTC.
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _unix_or_none(moment: datetime | None) -> float | None:
    return None if moment is None else _unix(moment)


@dataclass
class Workers:
    """`count` worker processes, each with `concurrency` job slots."""

    url: str
    count: int
    concurrency: int
    log_dir: Path
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)

    async def __aenter__(self) -> Workers:
        try:
            for index in range(self.count):
                log = (self.log_dir / f"worker-{index}.log").open("ab")
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench._worker",
                    self.url,
                    "--concurrency",
                    str(self.concurrency),
                    cwd=ROOT,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log,
                )
                log.close()
                self.processes.append(process)
            async with asyncio.timeout(WORKER_READY_WITHIN_S):
                for process in self.processes:
                    assert process.stdout is not None
                    line = await process.stdout.readline()
                    if line.strip() != b"ready":
                        raise RuntimeError(f"a worker exited before connecting (see {self.log_dir})")
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        await asyncio.gather(*(stop_process(process) for process in self.processes))
        self.processes = []

    @property
    def pids(self) -> Sequence[int]:
        return [process.pid for process in self.processes]
