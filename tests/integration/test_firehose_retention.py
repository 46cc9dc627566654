"""The firehose keeps `firehose_retention` messages on the stream (the in-process stream holds them in
the server's memory), with a default per stream backend; events stay in the database regardless."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import ironflow
from ironflow.services.core.firehose import (
    DEFAULT_FIREHOSE_MAXLEN,
    DEFAULT_MEMORY_FIREHOSE_MAXLEN,
    firehose_key,
)
from ironflow.services.server._settings import ServerSettings
from tests.integration.conftest import running_server, server_settings


def test_retention_defaults_to_the_stream_backend() -> None:
    assert ServerSettings(stream_url="memory://").firehose_maxlen() == DEFAULT_MEMORY_FIREHOSE_MAXLEN
    assert ServerSettings(stream_url="redis://127.0.0.1:6379/0").firehose_maxlen() == DEFAULT_FIREHOSE_MAXLEN
    assert ServerSettings(stream_url="memory://", firehose_retention=5000).firehose_maxlen() == 5000


def test_retention_below_1000_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRONFLOW_FIREHOSE_RETENTION", "10")
    with pytest.raises(ValueError, match="firehose_retention"):
        ServerSettings()


async def test_the_in_process_firehose_keeps_only_the_retention(tmp_path: Path) -> None:
    settings = server_settings("embedded", tmp_path).model_copy(update={"firehose_retention": 1000})
    async with running_server(settings) as server:
        client = ironflow.Client(server.url)
        sent = 1300
        gate = asyncio.Semaphore(20)

        async def publish(i: int) -> None:
            async with gate:
                await client.publish("retention.check", {"i": i})

        await asyncio.gather(*(publish(i) for i in range(sent)))
        stream = server.server._stream
        assert stream is not None
        key = firehose_key(settings.stream_prefix)
        assert await stream.length(key) == 1000
        # The newest messages are the ones kept.
        [last] = await stream.read_last(key, 1)
        assert last.sequence == sent
        # The events themselves are all still stored.
        stored, cursor = 0, None
        while True:
            page = await client.list_events(
                name="retention.check", namespace="topic", limit=1000, cursor=cursor
            )
            stored += len(page.events)
            if not page.next_cursor:
                break
            cursor = page.next_cursor
        assert stored == sent
        await client.close()
