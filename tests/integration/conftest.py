"""A live Ironflow server over real sockets, on both backends.

`embedded`: SQLite + the in-process stream (what `ironflow serve` runs by default).
`postgres_redis`: the same server on the real Postgres and Redis (a unique schema and stream prefix
per test keeps tests apart).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from ironflow.services.core.firehose import firehose_key
from ironflow.services.core.storage import Database
from ironflow.services.core.streams import Stream, open_stream
from ironflow.services.server._embedded import EmbeddedServer
from ironflow.services.server._settings import ServerSettings
from tests.conftest import POSTGRES_URL, REDIS_URL, unique_name
from tests.support import eventually, free_port


@dataclass
class LiveServer:
    url: str
    settings: ServerSettings
    server: EmbeddedServer

    @property
    def firehose(self) -> str:
        return firehose_key(self.settings.stream_prefix)

    async def stream(self) -> Stream:
        """A separate connection to the server's stream (Redis), or the server's own (memory)."""
        if self.settings.stream_url.startswith("memory"):
            stream = self.server._stream
            assert stream is not None
            return stream
        return open_stream(self.settings.stream_url)

    async def count_events(self) -> int:
        db = Database.open(self.settings.database_url, schema=self.settings.database_schema)
        try:
            async with db.reading() as conn:
                return int((await conn.execute(sa.text("SELECT count(*) FROM events"))).scalar_one())
        finally:
            await db.close()


# Short leases so tests of lost workers finish quickly; heartbeats well inside them.
FAST_LEASES = {"lease_duration": 3.0, "heartbeat_interval": 0.5}


def server_settings(backend: str, tmp_path: Path) -> ServerSettings:
    port = free_port()
    if backend == "embedded":
        return ServerSettings(
            port=port,
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'ironflow.db'}",
            stream_url="memory://",
            **FAST_LEASES,
        )
    return ServerSettings(
        **FAST_LEASES,
        port=port,
        database_url=POSTGRES_URL,
        database_schema=unique_name("t"),
        stream_url=REDIS_URL,
        stream_prefix=unique_name("test"),
    )


@pytest.fixture(params=["embedded", "postgres_redis"])
async def live_server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LiveServer]:
    async with running_server(server_settings(request.param, tmp_path)) as server:
        yield server


@asynccontextmanager
async def running_server(settings: ServerSettings) -> AsyncIterator[LiveServer]:
    """A server on this event loop, answering on a real port; its schema and stream are dropped after."""
    server = EmbeddedServer(settings)
    await server.start()
    shutdown = asyncio.Event()
    serving = asyncio.create_task(server.serve(shutdown))
    url = f"http://127.0.0.1:{settings.port}"

    async def healthy() -> bool:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{url}/health")).status_code == 200

    try:
        await eventually(healthy, what="the server to answer /health")
        yield LiveServer(url=url, settings=settings, server=server)
    finally:
        shutdown.set()
        await serving
        await server.stop()
        if settings.database_schema:
            db = Database.open(settings.database_url)
            async with db.transaction() as conn:
                await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{settings.database_schema}" CASCADE')
            await db.close()
            stream = open_stream(settings.stream_url)
            await stream.delete_stream(firehose_key(settings.stream_prefix))
            await stream.close()
