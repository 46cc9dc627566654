"""examples/node as a user runs it: tsx on the Connect-ES client generated into gen/ts, against a live
server with a Python worker for `order.placed` (the embedded-worker example's function).

Everything the example prints is checked against what the server recorded: the event it emitted, the
topic message it published, the run's lifecycle on the stream, message for message, and the listing.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import pytest

import ironflow
from examples.embedded_worker.app import accept_order
from ironflow.services.core.firehose import FirehoseMessage
from tests.integration.conftest import LiveServer, running_server, server_settings
from tests.integration.workers import running_worker

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "node_modules" / ".bin"
EXAMPLE = ROOT / "examples" / "node"
# Bounds the example's run: it follows the run for at most 30 s itself, so this is only a backstop.
RUN_TIMEOUT_S = 60.0

EMITTED = re.compile(r"^emitted order\.placed: event (evt_\w+), sequence (\d+)$", re.MULTILINE)
STARTED = re.compile(r"^started run (run_\w+)$", re.MULTILINE)
PUBLISHED = re.compile(r"^published notifications\.email: event (evt_\w+), sequence (\d+)$", re.MULTILINE)
STREAMED = re.compile(r"^  (\d+) (system\.run\.\S+)$", re.MULTILINE)
ENDED = re.compile(r"^run (run_\w+) (\w+): (.*)$", re.MULTILINE)
LISTED = re.compile(r"^  (run_\w+) (\w+)$", re.MULTILINE)


def _node_env() -> dict[str, str]:
    # The URL comes from the command line; a stray IRONFLOW_SERVER_URL must not be what makes it work.
    return {k: v for k, v in os.environ.items() if not k.startswith("IRONFLOW_")}


def test_example_and_generated_client_type_check() -> None:
    """tsc over the example and every file in gen/ts (see examples/node/tsconfig.json)."""
    tsc = BIN / "tsc"
    if not tsc.exists():
        pytest.fail("TypeScript is missing: run `npm ci` in the repository root")
    result = subprocess.run(
        [str(tsc), "-p", str(EXAMPLE)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_example_emits_publishes_follows_the_run_and_lists_it(tmp_path: Path) -> None:
    tsx = BIN / "tsx"
    if not tsx.exists():
        pytest.fail("tsx is missing: run `npm ci` in the repository root")
    async with (
        running_server(server_settings("embedded", tmp_path)) as server,
        running_worker(server, [accept_order], transport="stream"),
    ):
        process = await asyncio.create_subprocess_exec(
            str(tsx),
            str(EXAMPLE / "main.ts"),
            server.url,
            cwd=ROOT,
            env=_node_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            raw_out, raw_err = await asyncio.wait_for(process.communicate(), timeout=RUN_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        out, err = raw_out.decode(), raw_err.decode()
        assert process.returncode == 0, f"--- stdout\n{out}\n--- stderr\n{err}"
        assert not err, err

        emitted, started, published = EMITTED.search(out), STARTED.search(out), PUBLISHED.search(out)
        assert emitted, out
        assert started, out
        assert published, out
        event_id, run_id = emitted[1], started[1]
        async with ironflow.Client(server.url) as client:
            event = await client.get_event(event_id)
            assert event.name == "order.placed"
            assert event.data["orderId"].startswith("ord_node_")
            run = await client.get_run(run_id)
            assert (run.function_id, run.event_id, run.status) == ("accept-order", event_id, "completed")
            assert (await client.get_event(published[1])).data == {
                "to": "buyer@example.com",
                "orderId": event.data["orderId"],
            }
        assert int(emitted[2]) < int(published[2])

        # The run's events as printed are exactly those on the server's stream, in stream order.
        recorded = await _run_events(server, run_id)
        printed = [(int(sequence), subject) for sequence, subject in STREAMED.findall(out)]
        assert printed == recorded
        assert [subject.removeprefix(f"system.run.{run_id}.") for _, subject in recorded] == [
            "created",
            "started",
            "step.reserve-stock.started",
            "step.reserve-stock.completed",
            "step.charge-card.started",
            "step.charge-card.completed",
            "step.send-confirmation.started",
            "step.send-confirmation.completed",
            "completed",
        ]

        ended = ENDED.search(out)
        assert ended, out
        assert ended.group(1, 2) == (run_id, "completed")
        assert '"charge":"ch_ord_node_' in ended[3]
        assert (run_id, "completed") in LISTED.findall(out)


async def _run_events(server: LiveServer, run_id: str) -> list[tuple[int, str]]:
    """(stream sequence, subject) of the run's lifecycle events on the server's firehose."""
    stream = await server.stream()  # the embedded server's own in-process stream
    entries = await stream.read(server.firehose, after="0-0", count=100_000)
    prefix = f"system.run.{run_id}."
    subjects = [(entry.sequence, FirehoseMessage.decode(entry.fields).subject) for entry in entries]
    return [(sequence, subject) for sequence, subject in subjects if subject.startswith(prefix)]
