"""Failure scenarios with real processes: a worker killed mid-run, a server killed mid-run.

Each test narrates its crash. Side effects are counted in a file the worker appends to, so "nothing
completed runs twice" is checked on what actually happened, not on what the server believes.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
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
async def test_a_killed_worker_is_replaced_and_completed_steps_do_not_run_again(
    live_server: LiveServer, tmp_path: Path, transport: str
) -> None:
    """Worker A runs steps 1 and 2 and is inside step 3 when it is killed with SIGKILL. The server
    notices (the stream drops, or the lease lapses for a poll worker) and hands the run to worker B,
    which replays steps 1-2 from memory and runs 3-5. Every side effect happens exactly once and
    the run completes once."""
    function_id, event = unique_name("five"), unique_name("five")
    async with ironflow.Client(live_server.url) as client:
        first = await start_worker(live_server.url, transport, function_id, event, tmp_path)
        second: asyncio.subprocess.Process | None = None
        try:
            await eventually(
                lambda: function_registered(client, function_id), within=30, what="worker A to register"
            )
            run_id = (await client.emit(event, {})).run_ids[0]

            async def inside_step_three() -> bool:
                steps = await step_statuses(client, run_id)
                return steps.get("step2") == "completed" and steps.get("step3") == "running"

            await eventually(inside_step_three, within=30, what="worker A to reach step 3")
            await kill(first)
            (tmp_path / "gate").touch()
            second = await start_worker(live_server.url, transport, function_id, event, tmp_path)
            run = await wait_for_run(client, run_id, within=60)
        finally:
            await kill(first)
            if second is not None:
                await kill(second)

        assert run.status == "completed", run.error
        assert run.output == ["step1", "step2", "step3", "step4", "step5"]
        assert executions(tmp_path) == Counter({f"step{n}": 1 for n in range(1, 6)})
        steps = await client.get_run_steps(run_id)
        assert [(s.id, s.status) for s in steps] == [(f"step{n}", "completed") for n in range(1, 6)]
    assert lifecycle(await system_events(live_server, run_id), run_id).count("completed") == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
async def test_restarting_serve_mid_run_loses_nothing(tmp_path: Path, sig: signal.Signals) -> None:
    """`ironflow serve` on a SQLite file is stopped (SIGTERM) or killed (SIGKILL) while a worker is
    inside step 3 of a run, then started again on the same file. The worker reconnects by itself;
    the run, its completed steps and its event are all still there, and it completes."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    function_id, event = unique_name("five"), unique_name("five")
    server = await start_server(tmp_path, port)
    worker = await start_worker(url, "stream", function_id, event, tmp_path)
    try:
        async with ironflow.Client(url) as client:
            await eventually(
                lambda: function_registered(client, function_id), within=30, what="the worker to register"
            )
            run_id = (await client.emit(event, {})).run_ids[0]

            async def inside_step_three() -> bool:
                return (await step_statuses(client, run_id)).get("step3") == "running"

            await eventually(inside_step_three, within=30, what="the worker to reach step 3")
        server.send_signal(sig)
        await asyncio.wait_for(server.wait(), timeout=30)
        server = await start_server(tmp_path, port)
        (tmp_path / "gate").touch()
        async with ironflow.Client(url) as client:
            run = await wait_for_run(client, run_id, within=60)
            steps = await client.get_run_steps(run_id)
    finally:
        await kill(worker)
        if server.returncode is None:
            server.send_signal(signal.SIGTERM)
            await asyncio.wait_for(server.wait(), timeout=30)

    assert run.status == "completed", run.error
    assert run.output == ["step1", "step2", "step3", "step4", "step5"]
    assert [(s.id, s.status) for s in steps] == [(f"step{n}", "completed") for n in range(1, 6)]
    assert executions(tmp_path) == Counter({f"step{n}": 1 for n in range(1, 6)})


@pytest.mark.parametrize("transport", ["stream", "poll"])
async def test_sigterm_drains_the_job_in_flight_before_the_worker_exits(
    live_server: LiveServer, tmp_path: Path, transport: str
) -> None:
    """The worker gets SIGTERM while inside step 3. It takes no new work, finishes the run it holds,
    and exits cleanly; nothing is handed to another worker and nothing runs twice."""
    function_id, event = unique_name("five"), unique_name("five")
    async with ironflow.Client(live_server.url) as client:
        worker = await start_worker(live_server.url, transport, function_id, event, tmp_path)
        try:
            await eventually(
                lambda: function_registered(client, function_id), within=30, what="the worker to register"
            )
            run_id = (await client.emit(event, {})).run_ids[0]

            async def inside_step_three() -> bool:
                return (await step_statuses(client, run_id)).get("step3") == "running"

            await eventually(inside_step_three, within=30, what="the worker to reach step 3")
            worker.send_signal(signal.SIGTERM)
            (tmp_path / "gate").touch()
            assert await asyncio.wait_for(worker.wait(), timeout=30) == 0
            run = await client.get_run(run_id)
        finally:
            await kill(worker)
    assert run.status == "completed", run.error
    assert executions(tmp_path) == Counter({f"step{n}": 1 for n in range(1, 6)})
