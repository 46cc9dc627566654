"""Failures of the distributed topology, with real processes: a replica of each service killed with
SIGKILL, Redis losing everything, Postgres restarting, all while runs keep flowing.

Every test narrates its failure and then checks exact outcomes on what really happened: every event
started one run and every run completed once (one `completed` lifecycle event), and a step whose
completion was acknowledged (one `step.<id>.completed` event) never completed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis.asyncio as redis

import ironflow
from ironflow.services.core.firehose import FirehoseMessage, firehose_key
from ironflow.services.core.streams import open_stream
from ironflow.services.server._cluster import LocalCluster
from tests.conftest import REDIS_URL, unique_name
from tests.support import eventually

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(420)]

STEPS = ("reserve", "charge", "ship")


@dataclass
class Flow:
    """A steady flow of events, each starting one three-step run, and what the workers did."""

    cluster: LocalCluster
    function_id: str = field(default_factory=lambda: unique_name("flow"))
    event: str = field(default_factory=lambda: unique_name("flow"))
    emitted: list[str] = field(default_factory=list)
    workers: list[ironflow.Worker] = field(default_factory=list)
    executions: Counter[tuple[str, str]] = field(default_factory=Counter)
    failed_emits: int = 0

    def function(self) -> ironflow.Function:
        @ironflow.function(id=self.function_id, triggers=[ironflow.on_event(self.event)])
        async def handle(ctx: ironflow.Context) -> dict[str, object]:
            for step in STEPS:
                await ctx.step.run(step, self._effect, ctx.run_id, step)
            return {"n": ctx.event.data["n"]}

        return handle

    def start_workers(self) -> None:
        """Two workers through the front door (nginx puts them on either gateway replica)."""
        self.workers = [
            ironflow.Worker(server_url=self.cluster.url, functions=[self.function()], max_concurrent_jobs=8)
            for _ in range(2)
        ]
        for worker in self.workers:
            worker.start()

    async def stop_workers(self) -> None:
        for worker in self.workers:
            await worker.stop()
        self.workers = []

    def _effect(self, run_id: str, step: str) -> str:
        self.executions[(run_id, step)] += 1
        return step

    async def emit_steadily(self, client: ironflow.Client, stop: asyncio.Event) -> None:
        """About ten events a second until `stop`. A failed emit is retried with the same idempotency key,
        as a client of a real deployment would, so each number becomes exactly one event."""
        n = 0
        while not stop.is_set():
            key = f"{self.event}-{n}"
            while True:
                try:
                    await client.emit(self.event, {"n": n}, idempotency_key=key)
                    break
                except ironflow.IronflowError as exc:
                    if exc.code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL"):
                        raise
                    self.failed_emits += 1
                    await asyncio.sleep(0.2)  # back off before retrying the same emit
            self.emitted.append(key)
            n += 1
            await asyncio.sleep(0.1)  # pacing the load, not waiting for a result

    async def runs(self, client: ironflow.Client, status: str | None = None) -> list[ironflow.Run]:
        found: list[ironflow.Run] = []
        cursor = None
        while True:
            page = await client.list_runs(
                function_id=self.function_id, status=status, limit=1000, cursor=cursor
            )
            found.extend(page)
            cursor = page.next_cursor
            if not cursor:
                return found

    async def completed_runs(self, client: ironflow.Client) -> int:
        return len(await self.runs(client, "completed"))

    async def check_outcome(self, client: ironflow.Client, *, firehose_intact: bool = True) -> None:
        """Every event ran once to completion. With the firehose intact, from its lifecycle events: one
        `completed` per run and one `completed` per step. After Redis lost the firehose, for the runs
        it still has, and for every run from the workers' side: no step ran twice (no worker died)."""
        total = len(self.emitted)

        async def all_done() -> bool:
            return await self.completed_runs(client) == total

        await eventually(all_done, within=120, interval=0.5, what=f"all {total} runs to complete")
        runs = await self.runs(client)
        assert len(runs) == total, "one run per event"
        assert sorted(run.output["n"] for run in runs if isinstance(run.output, dict)) == list(range(total))
        lifecycle = await self.lifecycle()
        for run in runs:
            subjects = lifecycle.get(run.id, Counter())
            if not firehose_intact:
                # Some of this run's lifecycle may have been flushed; nothing may appear twice.
                assert all(self.executions[(run.id, step)] == 1 for step in STEPS), run.id
                assert all(count == 1 for count in subjects.values()), f"{run.id}: {subjects}"
                continue
            assert subjects["completed"] == 1, f"run {run.id} completed {subjects['completed']} times"
            for step in STEPS:
                assert subjects[f"step.{step}.completed"] == 1, f"{run.id} {step}: {subjects}"
                assert self.executions[(run.id, step)] >= 1

    async def lifecycle(self) -> dict[str, Counter[str]]:
        """Per run, how often each lifecycle subject appeared on the firehose."""
        stream = open_stream(REDIS_URL)
        try:
            entries = await stream.read(
                firehose_key(self.cluster.env["IRONFLOW_STREAM_PREFIX"]), after="0-0", count=1_000_000
            )
        finally:
            await stream.close()
        seen: dict[str, Counter[str]] = {}
        for entry in entries:
            subject = FirehoseMessage.decode(entry.fields).subject
            if subject.startswith("system.run."):
                run_id, _, rest = subject.removeprefix("system.run.").partition(".")
                seen.setdefault(run_id, Counter())[rest] += 1
        return seen


@contextlib.asynccontextmanager
async def flowing(
    cluster: LocalCluster, *, firehose_intact: bool = True
) -> AsyncIterator[tuple[Flow, ironflow.Client]]:
    """Two workers through the front door and an emitter; stops emitting when the block ends and
    leaves the workers running until the outcome is checked."""
    flow = Flow(cluster)
    flow.start_workers()
    stop = asyncio.Event()
    try:
        async with ironflow.Client(cluster.url) as client:
            await eventually(lambda: client.get_function(flow.function_id), within=30, what="registration")
            emitter = asyncio.create_task(flow.emit_steadily(client, stop))
            try:
                yield flow, client
            finally:
                stop.set()
                await emitter
            await flow.check_outcome(client, firehose_intact=firehose_intact)
    finally:
        await flow.stop_workers()


async def wait_for_progress(flow: Flow, client: ironflow.Client, runs: int = 10) -> None:
    """Until `runs` more runs have completed than now."""
    start = await flow.completed_runs(client)

    async def progressed() -> bool:
        return await flow.completed_runs(client) >= start + runs

    await eventually(progressed, within=60, interval=0.2, what=f"{runs} more runs to complete")


async def test_killing_one_replica_of_each_service_loses_and_repeats_nothing(cluster: LocalCluster) -> None:
    """While events flow, replica 0 of each service in turn is killed with SIGKILL, the flow is
    shown to carry on through the surviving replica, and the killed one is started again. Callers
    ride over the loss (retries through the front door and between services); work a dead gateway
    or scheduler held moves on once its lease lapses. In the end every event ran exactly once and no
    acknowledged step completed twice."""
    async with flowing(cluster) as (flow, client):
        await wait_for_progress(flow, client)
        for service in ("worker-gateway", "scheduler", "ingest", "registry", "subscription"):
            cluster.kill(service, 0)
            await wait_for_progress(flow, client)
            await asyncio.to_thread(cluster.restart, service, 0)
        await wait_for_progress(flow, client)
    assert len(flow.emitted) > 100


async def test_redis_losing_everything_is_repaired_by_the_reconciler(cluster: LocalCluster) -> None:
    """Events flow while the workers are stopped, so job tickets pile up in Redis for queued runs.
    Then Redis is flushed (FLUSHALL): those tickets, the gateways' consumer group and the epoch
    marker vanish, and nothing in Redis says the queued runs exist. The workers come back; the
    schedulers' reconciler notices the missing epoch and tickets every due run again from Postgres,
    and the gateways recreate their group. Every run completes, and no step runs twice."""
    async with flowing(cluster, firehose_intact=False) as (flow, client):
        await wait_for_progress(flow, client)
        await flow.stop_workers()

        async def backlog() -> bool:
            return len(await flow.runs(client, "queued")) >= 20

        await eventually(backlog, within=30, interval=0.2, what="20 runs waiting for a worker")
        connection = redis.from_url(REDIS_URL)
        try:
            await connection.flushall()
        finally:
            await connection.aclose()
        flow.start_workers()
        await wait_for_progress(flow, client, runs=40)
    scheduler_logs = "".join(
        replica.log_path.read_text(errors="replace") for replica in cluster.members["scheduler"]
    )
    assert "re-issuing job tickets" in scheduler_logs
    assert "the stream store lost its data" in scheduler_logs


def _postgres(action: str) -> None:
    version = next(path.name for path in Path("/etc/postgresql").iterdir())
    subprocess.run(
        [
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            version,
            "main",
            action,
            *(["-m", "fast"] if action == "stop" else []),
        ],
        check=True,
        capture_output=True,
    )


async def test_a_postgres_restart_makes_services_unready_then_they_recover(cluster: LocalCluster) -> None:
    """While events flow, Postgres is stopped: the services that use it report not ready (ingest,
    scheduler, registry, subscription; the gateway through the scheduler it calls), and emits fail
    with UNAVAILABLE and are retried. Postgres starts again: every service is ready again and every
    event emitted runs exactly once."""
    async with flowing(cluster) as (flow, client):
        await wait_for_progress(flow, client)
        await asyncio.to_thread(_postgres, "stop")
        try:

            async def scheduler_unready() -> bool:
                status, body = await asyncio.to_thread(cluster.readiness, "scheduler", 0)
                checks = body.get("checks")
                return status == 503 and isinstance(checks, dict) and checks["database"] != "ok"

            await eventually(scheduler_unready, within=20, interval=0.2, what="the scheduler to be not ready")
        finally:
            await asyncio.to_thread(_postgres, "start")
        await asyncio.to_thread(cluster.wait_ready, timeout=60)
        await wait_for_progress(flow, client, runs=20)
