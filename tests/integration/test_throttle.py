"""Throttle end to end, on both backends: declared with the SDK decorator, registered by a real pull
worker, shown by GetFunction and `ironflow functions get`, and applied to emitted events. Six events
emitted at once under a throttle of 2 per 2 s all complete; the runs are released one a second (the
`available_at` of their `created` events: exact) and none starts before its release. The observed
starts follow a release by the dispatch latency, which varies a little from run to run, so their
bound is checked over windows shortened by `LATENCY`."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

import grpc
import pytest

import ironflow
from ironflow.v1 import functions_pb2, functions_pb2_grpc
from tests.conftest import unique_name
from tests.integration.conftest import LiveServer
from tests.integration.workers import running_worker, system_events, wait_for_run
from tests.support import eventually

PERIOD = timedelta(seconds=2)
LIMIT = 2
LATENCY = timedelta(milliseconds=500)


@pytest.fixture
async def registry(live_server: LiveServer) -> AsyncIterator[functions_pb2_grpc.RegistryServiceStub]:
    async with grpc.aio.insecure_channel(live_server.url.removeprefix("http://")) as channel:
        yield functions_pb2_grpc.RegistryServiceStub(channel)


def _most_in_any_window(times: list[datetime], window: timedelta) -> int:
    ordered = sorted(times)
    return max(sum(1 for other in ordered if start <= other < start + window) for start in ordered)


async def _release_time(live_server: LiveServer, run: ironflow.Run) -> datetime:
    """When the throttle released the run: `available_at` of its `created` event, or its creation."""

    async def created() -> Any:
        return next(
            (m for m in await system_events(live_server, run.id) if m.subject.endswith(".created")), None
        )

    message = await eventually(created, what=f"the created event of {run.id}")
    at = message.data.get("available_at")
    return datetime.fromisoformat(at) if at else message.timestamp


async def test_a_throttled_burst_completes_paced_by_the_throttle(live_server: LiveServer) -> None:
    name = unique_name("report.requested")

    @ironflow.function(
        id=unique_name("paced"),
        triggers=[ironflow.on_event(name)],
        throttle=ironflow.Throttle(limit=LIMIT, period=PERIOD),
    )
    async def handler(ctx: ironflow.Context) -> dict[str, Any]:
        return {"n": ctx.event.data["n"]}

    async with (
        ironflow.Client(live_server.url) as client,
        running_worker(live_server, [handler], transport="stream"),
    ):
        shown = await client.get_function(handler.id)
        assert shown.definition["throttle"] == {"limit": 2, "period": "2s"}

        emitted = await asyncio.gather(*(client.emit(name, {"n": n}) for n in range(6)))
        run_ids = [run_id for result in emitted for run_id in result.run_ids]
        assert len(run_ids) == 6  # delayed, not dropped
        finished = [await wait_for_run(client, run_id, within=30) for run_id in run_ids]

    assert [run.status for run in finished] == ["completed"] * 6
    assert sorted(run.output["n"] for run in finished) == list(range(6))
    released = [await _release_time(live_server, run) for run in finished]
    # Exact: no window of a period releases more than `limit` (burst 0); one release a second.
    assert _most_in_any_window(released, PERIOD) == LIMIT
    ordered = sorted(released)
    assert all(later - earlier >= PERIOD / LIMIT for earlier, later in pairwise(ordered))
    # No run starts before its release, so the starts are paced too.
    starts = []
    for run, release in zip(finished, released, strict=True):
        assert run.started_at is not None
        assert run.started_at >= release
        starts.append(run.started_at)
    assert _most_in_any_window(starts, PERIOD - LATENCY) == LIMIT
    assert max(starts) - min(released) >= 5 * PERIOD / LIMIT


async def test_functions_get_shows_the_throttle(
    registry: functions_pb2_grpc.RegistryServiceStub, live_server: LiveServer
) -> None:
    """`ironflow functions get` prints the throttle as registered (burst shown when set)."""

    @ironflow.function(
        id="paced-per-user",
        triggers=[ironflow.on_event("report.requested")],
        throttle=ironflow.Throttle(limit=10, period="1m", key="event.data.userId", burst=3),
    )
    async def handler(ctx: ironflow.Context) -> None:
        return None

    await registry.RegisterFunctions(functions_pb2.RegisterFunctionsRequest(functions=[handler.definition()]))
    cli = [sys.executable, "-m", "ironflow.services.server", "--server-url", live_server.url]
    process = await asyncio.create_subprocess_exec(
        *cli,
        "functions",
        "get",
        "paced-per-user",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    throttle = json.loads(out)["definition"]["throttle"]
    assert throttle == {"limit": 10, "period": "60s", "key": "event.data.userId", "burst": 3}
