"""Concurrency limits and priority end to end on both backends: declared with the SDK, run by a real
worker through a live server. Each test would fail if the control were ignored."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import grpc
import pytest

import ironflow
from ironflow.v1 import functions_pb2, functions_pb2_grpc
from tests.conftest import unique_name
from tests.integration.conftest import LiveServer
from tests.support import eventually

TRANSPORTS = ["stream", "poll"]


class Overlap:
    """Handlers inside at once, per key, and the most ever seen (workers run handlers on threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self.order: list[str] = []

    def enter(self, key: str, label: str) -> None:
        with self._lock:
            self.now[key] += 1
            self.most[key] = max(self.most[key], self.now[key])
            self.order.append(label)

    def leave(self, key: str) -> None:
        with self._lock:
            self.now[key] -= 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_one_run_per_customer_at_a_time(live_server: LiveServer, transport: str) -> None:
    """Limit 1 per customer, a worker with room for 10: 8 events for 2 customers emitted at once all
    complete, never two of one customer together, but the two customers' runs overlap."""
    name, overlap = unique_name("order.placed"), Overlap()

    @ironflow.function(
        id=unique_name("one-at-a-time"),
        triggers=[ironflow.on_event(name)],
        concurrency=ironflow.Concurrency(limit=1, key="event.data.customerId"),
    )
    async def handle(ctx: ironflow.Context) -> str:
        customer = str(ctx.event.data["customerId"])
        overlap.enter(customer, customer)
        overlap.enter("all", customer)
        try:
            await asyncio.sleep(0.3)  # the work: long enough for runs to overlap if allowed
            return customer
        finally:
            overlap.leave(customer)
            overlap.leave("all")

    worker = ironflow.Worker(live_server.url, [handle], max_concurrent_jobs=10, transport=transport)  # type: ignore[arg-type]
    worker.start()
    try:
        await asyncio.wait_for(worker.connected.wait(), timeout=30)
        async with ironflow.Client(live_server.url) as client:
            emitted = await asyncio.gather(
                *[client.emit(name, {"customerId": f"c{n % 2}", "n": n}) for n in range(8)]
            )
            run_ids = [run_id for result in emitted for run_id in result.run_ids]
            assert len(run_ids) == 8

            async def all_completed() -> bool:
                statuses = [(await client.get_run(run_id)).status for run_id in run_ids]
                return all(status == "completed" for status in statuses)

            await eventually(all_completed, within=60, interval=0.2, what="8 completed runs")
    finally:
        await worker.stop()
    assert overlap.most["c0"] == 1
    assert overlap.most["c1"] == 1
    assert overlap.most["all"] == 2  # the limit is per customer, not for the function


async def _register(live_server: LiveServer, function: ironflow.Function) -> None:
    async with grpc.aio.insecure_channel(live_server.url.removeprefix("http://")) as channel:
        registry = functions_pb2_grpc.RegistryServiceStub(channel)
        await registry.RegisterFunctions(
            functions_pb2.RegisterFunctionsRequest(functions=[function.definition()])
        )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_gold_runs_go_before_bronze_ones_queued_earlier(
    live_server: LiveServer, transport: str
) -> None:
    """Four bronze events, then two gold ones, all queued before any worker (taking one job at a time)
    connects: the gold runs execute first, then the bronze ones in the order they came."""
    name, overlap = unique_name("ticket.opened"), Overlap()

    @ironflow.function(
        id=unique_name("tiers"),
        triggers=[ironflow.on_event(name)],
        priority="event.data.tier == 'gold' ? 100 : 0",
    )
    async def handle(ctx: ironflow.Context) -> None:
        overlap.enter("all", f"{ctx.event.data['tier']}-{ctx.event.data['n']}")
        overlap.leave("all")

    async with ironflow.Client(live_server.url) as client:
        # Registered ahead of any worker (as a deploy step would), so every run is queued before one
        # connects.
        await _register(live_server, handle)
        for n in range(4):
            await client.emit(name, {"tier": "bronze", "n": n})
        for n in range(2):
            await client.emit(name, {"tier": "gold", "n": n})
        worker = ironflow.Worker(live_server.url, [handle], max_concurrent_jobs=1, transport=transport)  # type: ignore[arg-type]
        worker.start()
        try:

            async def six_ran() -> bool:
                return len(overlap.order) >= 6

            await eventually(six_ran, within=60, interval=0.1, what="six runs")
        finally:
            await worker.stop()
    assert overlap.order == ["gold-0", "gold-1", "bronze-0", "bronze-1", "bronze-2", "bronze-3"]
