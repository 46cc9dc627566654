"""The local cluster used as a user would: everything through the nginx front door, with workers and
subscribers spread over different replicas of the worker-gateway and subscription services."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
from websockets.asyncio.client import connect

import ironflow
from ironflow.services.server._cluster import LocalCluster
from tests.conftest import unique_name
from tests.support import eventually

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def doubling_function(function_id: str, event: str, worker_name: str) -> ironflow.Function:
    @ironflow.function(id=function_id, triggers=[ironflow.on_event(event)])
    async def double(ctx: ironflow.Context) -> dict[str, object]:
        number = await ctx.step.run("read", lambda: int(ctx.event.data["n"]))
        doubled = await ctx.step.run("double", lambda: number * 2)
        return {"doubled": doubled, "worker": worker_name}

    return double


@contextlib.asynccontextmanager
async def workers_on_each_gateway(
    cluster: LocalCluster, function_id: str, event: str
) -> AsyncIterator[list[ironflow.Worker]]:
    """One worker connected straight to each gateway replica (two slots each)."""
    workers = [
        ironflow.Worker(
            server_url=replica.url,
            functions=[doubling_function(function_id, event, f"worker-{replica.index}")],
            max_concurrent_jobs=2,
        )
        for replica in cluster.members["worker-gateway"]
    ]
    for worker in workers:
        worker.start()
    try:
        yield workers
    finally:
        for worker in workers:
            await worker.stop()


async def all_completed(client: ironflow.Client, function_id: str, count: int) -> list[ironflow.Run] | None:
    runs = list(await client.list_runs(function_id=function_id, limit=count + 1))
    if len(runs) == count and all(run.status == "completed" for run in runs):
        return runs
    return None


async def test_emitted_events_run_on_workers_connected_to_different_gateway_replicas(
    cluster: LocalCluster,
) -> None:
    """Two workers, each on its own gateway replica; 40 events emitted through the front door are
    triggered by either scheduler replica. Every run completes once, with the right output, and
    both workers take part: a job reaches a worker whatever replica scheduled it."""
    function_id, event = unique_name("double"), unique_name("double")
    async with (
        ironflow.Client(cluster.url) as client,
        workers_on_each_gateway(cluster, function_id, event),
    ):
        await eventually(lambda: client.get_function(function_id), within=30, what="registration")
        emitted = [await client.emit(event, {"n": n}) for n in range(40)]
        assert all(len(result.run_ids) == 1 for result in emitted)
        runs = await eventually(lambda: all_completed(client, function_id, 40), within=60, what="40 runs")
    outputs = {run.id: run.output for run in runs}
    for n, result in enumerate(emitted):
        output = outputs[result.run_ids[0]]
        assert isinstance(output, dict)
        assert output["doubled"] == 2 * n
    assert set(Counter(output["worker"] for output in outputs.values() if isinstance(output, dict))) == {
        "worker-0",
        "worker-1",
    }


async def test_subscribers_through_the_front_door_see_a_runs_lifecycle(cluster: LocalCluster) -> None:
    """A gRPC subscriber (SDK) on `system.run.>` and a WebSocket subscriber on the event's subject,
    both through the front door, see the run an event starts go from created to completed."""
    function_id, event = unique_name("watched"), unique_name("watched")
    async with (
        ironflow.Client(cluster.url) as client,
        workers_on_each_gateway(cluster, function_id, event),
        ironflow.subscribe("system.run.>", server_url=cluster.url) as lifecycle,
        connect(f"{cluster.url.replace('http', 'ws', 1)}/ws") as socket,
    ):
        await socket.send(json.dumps({"type": "subscribe", "id": "c1", "patterns": [f"events:{event}"]}))
        answer = json.loads(await socket.recv())
        assert answer["type"] == "subscribed", answer
        await eventually(lambda: client.get_function(function_id), within=30, what="registration")
        run_id = (await client.emit(event, {"n": 21})).run_ids[0]

        seen: list[str] = []

        async def until_completed() -> None:
            async for message in lifecycle:
                if message.subject.startswith(f"system.run.{run_id}."):
                    seen.append(message.subject.removeprefix(f"system.run.{run_id}."))
                    if seen[-1] == "completed":
                        return

        await asyncio.wait_for(until_completed(), timeout=30)
        frame = json.loads(await asyncio.wait_for(socket.recv(), timeout=10))
    assert seen[0] == "created"
    assert "started" in seen
    assert "step.read.completed" in seen
    assert "step.double.completed" in seen
    assert frame["type"] == "event"
    assert frame["subject"] == f"events:{event}"
    assert frame["data"] == {"n": 21}


async def test_a_consumer_group_stays_exact_across_subscription_replicas(cluster: LocalCluster) -> None:
    """Two members of one group, each connected to a different subscription replica, with manual
    acks. 300 messages published through the front door are each handled by exactly one member,
    and both members get a share."""
    group, topic = unique_name("grp"), unique_name("jobs")
    received: dict[str, list[int]] = {"0": [], "1": []}
    joined = {index: asyncio.Event() for index in (0, 1)}
    async with ironflow.Client(cluster.url) as client:
        await client.create_consumer_group(group, f"topic:{topic}", ack_wait="10s")

        async def member(index: int) -> None:
            url = cluster.replica("subscription", index).url
            async with ironflow.subscribe(server_url=url, group=group, ack="manual") as subscription:
                joined[index].set()  # the server accepted the join
                async for message in subscription:
                    received[str(index)].append(int(message.data["n"]))
                    await message.ack()

        members = [asyncio.create_task(member(index)) for index in (0, 1)]
        try:
            # Both members joined before anything is published.
            await asyncio.wait_for(asyncio.gather(*(event.wait() for event in joined.values())), 20)
            for n in range(300):
                await client.publish(topic, {"n": n})
            await eventually(
                lambda: _async_true(sum(len(values) for values in received.values()) >= 300),
                within=30,
                what="300 deliveries",
            )
        finally:
            for task in members:
                task.cancel()
            await asyncio.gather(*members, return_exceptions=True)
    everything = received["0"] + received["1"]
    assert sorted(everything) == list(range(300)), "each message exactly once"
    assert received["0"]
    assert received["1"]


async def test_rest_health_reflection_and_internal_rpcs_at_the_front_door(cluster: LocalCluster) -> None:
    """Plain HTTP through the front door reaches ingest and the scheduler; the scheduler's job RPCs
    are refused there (they are for the services themselves)."""
    async with httpx.AsyncClient(base_url=cluster.url, timeout=10) as http:
        emitted = await http.post("/api/v1/events", json={"name": unique_name("rest"), "data": {"a": 1}})
        assert emitted.status_code == 200, emitted.text
        event_id = emitted.json()["event_id"]
        fetched = await http.get(f"/api/v1/events/{event_id}")
        assert fetched.json()["data"] == {"a": 1}
        missing = await http.get("/api/v1/runs/run_missing")
        assert missing.status_code == 404
        assert missing.json()["code"] == "not_found"
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/ready")).json()["status"] == "ready"
        refused = await http.post(
            "/ironflow.v1.SchedulerService/LeaseJobs", json={}, headers={"Content-Type": "application/json"}
        )
        assert refused.status_code == 403


async def _async_true(value: bool) -> bool:
    return value
