"""`ironflow subscribe`, run as a real process against a live server on both backends.

The command runs until interrupted, so each test starts it as a subprocess, reads its lines with a
deadline, and ends it with SIGINT (which must exit 0 without a traceback).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

import ironflow
from ironflow.services.core.errors import ErrorCode, ServiceError
from ironflow.services.core.firehose import FirehoseMessage
from tests.conftest import unique_name
from tests.integration.conftest import LiveServer
from tests.integration.workers import running_worker, wait_for_run
from tests.support import eventually

LINE_WAIT = 20.0
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("IRONFLOW_")}
    env["NO_COLOR"] = "1"
    return env


class Cli:
    """One `ironflow ... subscribe ...` process with line-at-a-time reads."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def line(self, *, within: float = LINE_WAIT) -> str:
        assert self.process.stdout is not None
        async with asyncio.timeout(within):
            raw = await self.process.stdout.readline()
        assert raw, f"the command ended early: {await self.stderr()}"
        return raw.decode().rstrip("\n")

    async def records(self, count: int) -> list[dict[str, Any]]:
        return [json.loads(await self.line()) for _ in range(count)]

    async def interrupt(self) -> tuple[int, str]:
        """SIGINT, then the exit code and whatever it wrote on stderr."""
        self.process.send_signal(signal.SIGINT)
        async with asyncio.timeout(LINE_WAIT):
            code = await self.process.wait()
        return code, await self.stderr()

    async def stderr(self) -> str:
        assert self.process.stderr is not None
        async with asyncio.timeout(LINE_WAIT):
            return (await self.process.stderr.read()).decode()


@asynccontextmanager
async def subscribing(server: LiveServer, *args: str) -> AsyncIterator[Cli]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ironflow.services.server",
        "--server-url",
        server.url,
        "subscribe",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
        cwd=ROOT,
    )
    try:
        yield Cli(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def run_events(server: LiveServer) -> list[FirehoseMessage]:
    """Everything on the firehose whose subject matches `system.run.>`, in stream order."""
    stream = await server.stream()
    try:
        entries = await stream.read(server.firehose, after="0-0", count=100_000)
    finally:
        if stream is not server.server._stream:
            await stream.close()
    return [
        message
        for message in (FirehoseMessage.decode(entry.fields) for entry in entries)
        if message.subject.startswith("system.run.")
    ]


def subjects_of(records: Sequence[dict[str, Any]]) -> list[str]:
    return [record["subject"] for record in records]


@pytest.fixture
async def client(live_server: LiveServer) -> AsyncIterator[ironflow.Client]:
    async with ironflow.Client(server_url=live_server.url) as client:
        yield client


async def test_replay_shows_the_last_run_events_then_live_ones(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    event = unique_name("order")

    @ironflow.function(id=unique_name("orders"), triggers=[ironflow.on_event(event)])
    async def handler(ctx: ironflow.Context) -> dict[str, Any]:
        total = 0
        for name in ("reserve", "charge", "ship", "notify"):
            total += await ctx.step.run(name, lambda: 1)
        return {"steps": total}

    async with running_worker(live_server, [handler], transport="stream"):
        first = (await client.emit(event, {"n": 1})).run_ids[0]
        assert (await wait_for_run(client, first)).status == "completed"
        history = await run_events(live_server)
        assert len(history) >= 10
        async with subscribing(live_server, "system.run.>", "--replay", "10", "--json") as cli:
            replayed = await cli.records(10)
            assert subjects_of(replayed) == [message.subject for message in history[-10:]]
            assert replayed[-1]["subject"] == f"system.run.{first}.completed"
            assert all(record["delivery_attempt"] == 1 for record in replayed)

            # Live: a second run, while the command is running.
            second = (await client.emit(event, {"n": 2})).run_ids[0]
            live: list[dict[str, Any]] = []
            while not live or live[-1]["subject"] != f"system.run.{second}.completed":
                live.append(json.loads(await cli.line()))
            code, stderr = await cli.interrupt()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert live[0]["subject"] == f"system.run.{second}.created"
    assert f"system.run.{second}.step.charge.completed" in subjects_of(live)
    sequences = [record["sequence"] for record in replayed + live]
    assert sequences == sorted(set(sequences)), "in stream order, none twice"
    record = live[0]
    assert set(record) == {
        "subject",
        "event_id",
        "sequence",
        "delivery_attempt",
        "timestamp",
        "data",
        "metadata",
    }
    assert record["timestamp"].endswith("Z")


async def test_filter_and_the_human_format(live_server: LiveServer, client: ironflow.Client) -> None:
    topic = unique_name("orders")
    for total in (50, 150):
        await client.publish(topic, {"total": total})
    async with subscribing(
        live_server, f"topic:{topic}", "--filter", "data.total > 100", "--replay", "100"
    ) as cli:
        replayed = await cli.line()
        for total in (99, 101):
            await client.publish(topic, {"total": total})
        live = await cli.line()
        code, stderr = await cli.interrupt()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    # time, sequence, subject, compact JSON; plain text into a pipe.
    date, clock, sequence, subject, data = replayed.split(" ", 4)
    assert len(date) == 10
    assert clock.count(":") == 2
    assert int(sequence) > 0
    assert subject == f"topic:{topic}"
    assert json.loads(data) == {"total": 150}
    assert data == '{"total":150}'
    assert live.endswith(' {"total":101}')
    assert "\x1b[" not in replayed + live


async def test_json_lines_survive_a_reader_that_goes_away(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    """`ironflow subscribe ... --json | head -n 1`: once head is gone, the next write ends the command
    quietly (exit 0, no traceback)."""
    topic = unique_name("piped")
    for i in range(3):
        await client.publish(topic, {"i": i})
    command = (
        f"set -o pipefail; {sys.executable} -m ironflow.services.server --server-url {live_server.url} "
        f"subscribe 'topic:{topic}' --replay 3 --json | head -n 1"
    )
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(LINE_WAIT):
            first = json.loads(await process.stdout.readline())
        assert first["data"] == {"i": 0}
        # head has exited; the command notices at its next write.
        async with asyncio.timeout(LINE_WAIT):
            while process.returncode is None:
                await client.publish(topic, {"i": "more"})
                try:
                    async with asyncio.timeout(0.2):
                        await process.wait()
                except TimeoutError:
                    continue
        assert process.stderr is not None
        stderr = (await process.stderr.read()).decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "BrokenPipe" not in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["events:order.>.bad"], "patterns"),
        (["unknown:order.*"], "patterns"),
        (["events:order.*", "--filter", "data.total >"], "filter"),
    ],
)
async def test_bad_input_exits_2_with_a_message(
    live_server: LiveServer, args: list[str], message: str
) -> None:
    async with subscribing(live_server, *args) as cli:
        async with asyncio.timeout(LINE_WAIT):
            code = await cli.process.wait()
        stderr = await cli.stderr()
    assert code == 2, stderr
    assert "error" in stderr
    assert message in stderr
    assert "Traceback" not in stderr


async def test_without_a_pattern_or_group_exits_2(live_server: LiveServer) -> None:
    async with subscribing(live_server) as cli:
        async with asyncio.timeout(LINE_WAIT):
            code = await cli.process.wait()
        stderr = await cli.stderr()
    assert code == 2
    assert "PATTERN" in stderr


async def test_group_members_started_from_the_cli_share_messages(
    live_server: LiveServer, client: ironflow.Client
) -> None:
    topic, group = unique_name("jobs"), unique_name("workers")

    def members(count: int) -> Any:
        async def joined() -> bool:
            return (await client.get_consumer_group(group)).members == count

        return joined

    # The first member creates the group with its pattern; the second joins it by name alone.
    async with subscribing(live_server, f"topic:{topic}", "--group", group, "--json") as a:
        await eventually(members(1), within=LINE_WAIT, what="the group to be created")
        async with subscribing(live_server, "--group", group, "--json") as b:
            await eventually(members(2), within=LINE_WAIT, what="the second member to join")
            total = 40
            for i in range(total):
                await client.publish(topic, {"i": i})
            seen: dict[str, list[int]] = {"a": [], "b": []}

            async def drain(name: str, cli: Cli) -> None:
                while True:
                    seen[name].append(json.loads(await cli.line(within=60))["data"]["i"])

            readers = [asyncio.create_task(drain("a", a)), asyncio.create_task(drain("b", b))]
            try:

                async def all_in() -> bool:
                    return len(seen["a"]) + len(seen["b"]) >= total

                await eventually(all_in, within=LINE_WAIT, what="every message")
            finally:
                for reader in readers:
                    reader.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
            results = [await cli.interrupt() for cli in (a, b)]
    assert sorted(seen["a"] + seen["b"]) == list(range(total))
    for code, stderr in results:
        assert code == 0, stderr


async def test_reconnects_with_a_note_on_stderr(live_server: LiveServer, client: ironflow.Client) -> None:
    """The server drops the subscriber (as it does one that falls behind); the command resumes after
    the last message it printed, says so on stderr, and prints nothing twice."""
    topic = unique_name("notes")
    async with subscribing(live_server, f"topic:{topic}", "--replay", "1", "--json") as cli:
        await client.publish(topic, {"i": 0})
        first = await cli.records(1)
        engine = live_server.server._subscriptions
        assert engine is not None
        [live] = engine.hub.subscriptions
        live.end(ServiceError(ErrorCode.RESOURCE_EXHAUSTED, "subscriber fell behind and was dropped"))
        engine.hub.remove(live.id)
        for i in range(1, 5):
            await client.publish(topic, {"i": i})
        rest = await cli.records(4)
        code, stderr = await cli.interrupt()
    assert [record["data"]["i"] for record in first + rest] == [0, 1, 2, 3, 4]
    assert code == 0, stderr
    assert "note" in stderr
    assert "RESOURCE_EXHAUSTED" in stderr
    assert "reconnected as" in stderr
    assert "resuming after sequence" in stderr
    assert "Traceback" not in stderr
