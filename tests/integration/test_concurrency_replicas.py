"""The acceptance test of concurrency keys: the distributed shape with two scheduler replicas, each
its own process on Postgres and Redis, and two workers with room for far more than the limit.

A function limited to 2 concurrent runs per customer gets 50 events for 5 customers. While they run,
two observers sample how many runs of each customer execute: the handlers themselves (a counter
raised on entry and lowered on exit), and the runs table (leased runs per customer), every 20 ms.
Neither may ever see more than 2 for a customer; all 50 runs must complete; and the limit must be
reached (each customer had 2 running at some instant), so the test cannot pass by running
everything one at a time.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import ironflow
from ironflow.services.core.storage import Database, runs
from tests.conftest import POSTGRES_URL, unique_name
from tests.replicas import running_services
from tests.support import eventually

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(300)]

CUSTOMERS = 5
RUNS = 50
LIMIT = 2


class Occupancy:
    """How many handler invocations per customer are inside the handler now, and the most ever seen.
    Workers run their handlers on their own threads, hence the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now: Counter[str] = Counter()
        self.most: Counter[str] = Counter()

    def enter(self, customer: str) -> None:
        with self._lock:
            self.now[customer] += 1
            self.most[customer] = max(self.most[customer], self.now[customer])

    def leave(self, customer: str) -> None:
        with self._lock:
            self.now[customer] -= 1


def limited_function(function_id: str, event: str, occupancy: Occupancy) -> ironflow.Function:
    @ironflow.function(
        id=function_id,
        triggers=[ironflow.on_event(event)],
        concurrency=[ironflow.Concurrency(limit=LIMIT, key="event.data.customerId")],
    )
    async def handle(ctx: ironflow.Context) -> dict[str, Any]:
        customer = str(ctx.event.data["customerId"])
        occupancy.enter(customer)
        try:
            # The work: long enough that runs of one customer overlap if the limit lets them.
            await asyncio.sleep(0.5)
            return {"customer": customer, "n": ctx.event.data["n"]}
        finally:
            occupancy.leave(customer)

    return handle


async def test_two_schedulers_never_run_more_than_the_limit_per_customer(tmp_path: Path) -> None:
    function_id, event = unique_name("per-customer"), unique_name("order.placed")
    occupancy = Occupancy()
    function = limited_function(function_id, event, occupancy)
    async with running_services(tmp_path, "limits") as services:
        db = Database.open(POSTGRES_URL, schema=services.schema)
        workers = [
            ironflow.Worker(
                server_url=services.url("worker-gateway"), functions=[function], max_concurrent_jobs=20
            )
            for _ in range(2)
        ]
        for worker in workers:
            worker.start()
        sampled: list[Counter[str]] = []
        sampling = True

        async def sample_runs_table() -> None:
            while sampling:
                async with db.reading() as conn:
                    rows = await conn.execute(
                        sa.select(runs.c.input).where(
                            runs.c.function_id == function_id,
                            runs.c.status == "running",
                            runs.c.lease_token.is_not(None),
                        )
                    )
                    sampled.append(Counter(str(row.input["event"]["data"]["customerId"]) for row in rows))
                await asyncio.sleep(0.02)  # the sampling period, not a wait for a result

        try:
            client = ironflow.Client(services.url("ingest"))
            registry = ironflow.Client(services.url("registry"))

            async def registered() -> bool:
                services.check_running()
                return await registry.get_function(function_id) is not None

            await eventually(registered, within=30, interval=0.2, what="the worker to register")
            sampler = asyncio.create_task(sample_runs_table())
            # All at once, so that without the limit each customer would have many runs going.
            results = await asyncio.gather(
                *[
                    client.emit(event, {"customerId": f"customer-{n % CUSTOMERS}", "n": n})
                    for n in range(RUNS)
                ]
            )
            assert all(len(result.run_ids) == 1 for result in results)

            async def all_completed() -> list[Any] | None:
                services.check_running()
                async with db.reading() as conn:
                    rows = (
                        await conn.execute(
                            sa.select(runs.c.status, runs.c.output).where(runs.c.function_id == function_id)
                        )
                    ).all()
                if len(rows) == RUNS and all(row.status == "completed" for row in rows):
                    return rows
                return None

            rows = await eventually(all_completed, within=120, interval=0.2, what=f"{RUNS} completed runs")
            sampling = False
            await sampler
            await client.close()
            await registry.close()
        finally:
            sampling = False
            for worker in workers:
                await worker.stop()
            await db.close()

    assert sorted(row.output["n"] for row in rows) == list(range(RUNS))
    customers = {f"customer-{n}" for n in range(CUSTOMERS)}
    assert set(occupancy.most) == customers
    assert max(occupancy.most.values()) == LIMIT, f"handlers saw {dict(occupancy.most)} at once"
    assert min(occupancy.most.values()) == LIMIT, f"the limit was never reached: {dict(occupancy.most)}"
    assert len(sampled) > 20
    worst = max((count for sample in sampled for count in sample.values()), default=0)
    assert worst <= LIMIT, f"the runs table showed {worst} leased runs of one customer at once"
