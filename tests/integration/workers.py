"""Helpers for tests that run pull workers against a live server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import ironflow
from ironflow.services.core.firehose import FirehoseMessage
from tests.integration.conftest import LiveServer
from tests.support import eventually

ENDED = ("completed", "failed", "cancelled")


@asynccontextmanager
async def running_worker(
    server: LiveServer, functions: Sequence[ironflow.Function], *, transport: str, **options: object
) -> AsyncIterator[ironflow.Worker]:
    worker = ironflow.Worker(server.url, functions, transport=transport, **options)  # type: ignore[arg-type]
    worker.start()
    try:
        await eventually(lambda: _connected(worker), what="the worker to connect")
        yield worker
    finally:
        await worker.stop()


async def _connected(worker: ironflow.Worker) -> bool:
    return worker.connected.is_set()


async def wait_for_run(
    client: ironflow.Client, run_id: str, *, statuses: Sequence[str] = ENDED, within: float = 20.0
) -> ironflow.Run:
    async def ended() -> ironflow.Run | None:
        run = await client.get_run(run_id)
        return run if run.status in statuses else None

    return await eventually(ended, within=within, what=f"run {run_id} to reach {'/'.join(statuses)}")


async def system_events(server: LiveServer, run_id: str) -> list[FirehoseMessage]:
    """The lifecycle events of one run on the firehose, in stream order."""
    stream = await server.stream()
    try:
        entries = await stream.read(server.firehose, after="0-0", count=100_000)
    finally:
        if stream is not server.server._stream:
            await stream.close()
    messages = [FirehoseMessage.decode(entry.fields) for entry in entries]
    return [m for m in messages if m.subject.startswith(f"system.run.{run_id}.")]


def lifecycle(messages: Sequence[FirehoseMessage], run_id: str) -> list[str]:
    """Subjects without the `system.run.<id>.` prefix: `created`, `step.charge.started`, ..."""
    prefix = f"system.run.{run_id}."
    return [m.subject.removeprefix(prefix) for m in messages]
