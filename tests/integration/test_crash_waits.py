"""Failure scenarios for steps that fan out or suspend, with real processes killed mid-way.

Each test narrates its crash. Side effects are counted in a file the worker appends to, so "nothing
that completed ran twice" is checked on what actually happened.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

import ironflow
from tests.conftest import unique_name
from tests.integration.conftest import LiveServer
from tests.integration.processes import (
    executions,
    function_registered,
    kill,
    start_server,
    start_worker,
    step_statuses,
)
from tests.integration.workers import lifecycle, system_events, wait_for_run
from tests.support import eventually, free_port


@pytest.mark.parametrize("transport", ["stream", "poll"])
async def test_a_worker_killed_mid_map_reruns_only_the_unfinished_branch(
    live_server: LiveServer, tmp_path: Path, transport: str
) -> None:
    """A map of six items runs concurrently; five finish and checkpoint while item 3 waits at a gate.
    The worker is killed with SIGKILL. A second worker replays the map: the five finished branches
    come from memory and only item 3 runs. Every side effect happened exactly once."""
    function_id, event = unique_name("map"), unique_name("map")
    async with ironflow.Client(live_server.url) as client:
        first = await start_worker(live_server.url, transport, function_id, event, tmp_path, shape="map")
        second: asyncio.subprocess.Process | None = None
        try:
            await eventually(lambda: function_registered(client, function_id), within=30, what="worker A")
            run_id = (await client.emit(event, {})).run_ids[0]

            async def five_done_one_running() -> bool:
                steps = await step_statuses(client, run_id)
                done = [f"items/{n}" for n in (0, 1, 2, 4, 5)]
                return all(steps.get(s) == "completed" for s in done) and steps.get("items/3") == "running"

            await eventually(five_done_one_running, within=30, what="five branches to finish")
            await kill(first)
            (tmp_path / "gate").touch()
            second = await start_worker(live_server.url, transport, function_id, event, tmp_path, shape="map")
            run = await wait_for_run(client, run_id, within=60)
        finally:
            await kill(first)
            if second is not None:
                await kill(second)

    assert run.status == "completed", run.error
    assert run.output == [f"item{n}" for n in range(6)]
    assert executions(tmp_path) == Counter({"before": 1, **{f"item{n}": 1 for n in range(6)}})
    assert lifecycle(await system_events(live_server, run_id), run_id).count("completed") == 1


async def _status_is(client: ironflow.Client, run_id: str, status: str) -> bool:
    return (await client.get_run(run_id)).status == status


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
async def test_a_sleep_survives_a_server_restart_and_completes_once(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """A run sleeps 2 s. `ironflow serve` is stopped (SIGTERM) or killed (SIGKILL) during the sleep and
    started again on the same SQLite file. The timer is still there: the run wakes, finishes and
    completes once, at least 2 s after it started sleeping; no step ran twice."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    function_id, event = unique_name("sleep"), unique_name("sleep")
    server = await start_server(tmp_path, port)
    worker = await start_worker(url, "stream", function_id, event, tmp_path, shape="sleep")
    try:
        async with ironflow.Client(url) as client:
            await eventually(lambda: function_registered(client, function_id), within=30, what="the worker")
            run_id = (await client.emit(event, {})).run_ids[0]
            await eventually(
                lambda: _status_is(client, run_id, "sleeping"), within=30, what="the run to sleep"
            )
        server.send_signal(sig)
        await asyncio.wait_for(server.wait(), timeout=30)
        server = await start_server(tmp_path, port)
        async with ironflow.Client(url) as client:
            run = await wait_for_run(client, run_id, within=60)
            steps = {step.id: step for step in await client.get_run_steps(run_id)}
    finally:
        await kill(worker)
        if server.returncode is None:
            server.send_signal(signal.SIGTERM)
            await asyncio.wait_for(server.wait(), timeout=30)

    assert run.status == "completed", run.error
    assert run.output == ["before", "after"]
    assert executions(tmp_path) == Counter({"before": 1, "after": 1})
    nap = steps["nap"]
    assert nap.status == "completed"
    assert nap.started_at is not None
    assert nap.ended_at is not None
    assert nap.ended_at - nap.started_at >= timedelta(seconds=2)


async def test_a_wait_for_event_survives_a_server_restart(tmp_path: Path) -> None:
    """A run waits for `<event>.reply` with its own key. The server is killed with SIGKILL while the
    run waits and started again; an event with the wrong key does not resume it, the matching one
    does, with that event's data."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    function_id, event = unique_name("wait"), unique_name("wait")
    server = await start_server(tmp_path, port)
    worker = await start_worker(url, "stream", function_id, event, tmp_path, shape="wait")
    try:
        async with ironflow.Client(url) as client:
            await eventually(lambda: function_registered(client, function_id), within=30, what="the worker")
            run_id = (await client.emit(event, {"key": "k-1"})).run_ids[0]
            await eventually(lambda: _status_is(client, run_id, "waiting"), within=30, what="the run to wait")
        server.send_signal(signal.SIGKILL)
        await asyncio.wait_for(server.wait(), timeout=30)
        server = await start_server(tmp_path, port)
        async with ironflow.Client(url) as client:
            await client.emit(f"{event}.reply", {"key": "k-2"})
            assert (await client.get_run(run_id)).status == "waiting"
            await client.emit(f"{event}.reply", {"key": "k-1", "ok": True})
            run = await wait_for_run(client, run_id, within=60)
    finally:
        await kill(worker)
        if server.returncode is None:
            server.send_signal(signal.SIGTERM)
            await asyncio.wait_for(server.wait(), timeout=30)

    assert run.status == "completed", run.error
    assert run.output == {"reply": {"key": "k-1", "ok": True}}
    assert executions(tmp_path) == Counter({"before": 1, "after": 1})
