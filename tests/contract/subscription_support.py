"""An engine on either backend, and helpers to feed its firehose and read what subscribers get."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ironflow.services.core.firehose import FirehoseMessage, firehose_key
from ironflow.services.core.ids import random_id
from ironflow.services.core.storage import Database
from ironflow.services.core.streams import MemoryStream, Stream, open_stream
from ironflow.services.subscription import Delivery, Subscription, SubscriptionEngine, SubscriptionSettings
from tests.conftest import REDIS_URL, drop_test_database, open_test_database, unique_name

WAIT_S = 10.0


@dataclass
class Stores:
    """What outlives an engine: its database and stream (a restart opens a new engine on them)."""

    backend: str
    db: Database
    stream: Stream
    prefix: str
    engines: list[SubscriptionEngine] = field(default_factory=list)

    @property
    def firehose(self) -> str:
        return firehose_key(self.prefix)

    async def append(self, subject: str, data: dict[str, Any], **metadata: str) -> int:
        message = FirehoseMessage(
            subject=subject,
            event_id=random_id("evt"),
            timestamp=datetime.now(UTC),
            data=data,
            metadata=dict(metadata),
        )
        entry = await self.stream.append(self.firehose, message.encode())
        return entry.sequence

    async def append_many(self, subject: str, datas: Sequence[dict[str, Any]]) -> list[int]:
        now = datetime.now(UTC)
        entries = await self.stream.append_many(
            self.firehose,
            [FirehoseMessage(subject, random_id("evt"), now, data).encode() for data in datas],
        )
        return [entry.sequence for entry in entries]

    async def engine(self, *, buffer_size: int = 1000, count_topics: bool = False) -> SubscriptionEngine:
        engine = SubscriptionEngine(
            db=self.db,
            stream=self.stream,
            settings=SubscriptionSettings(
                firehose=self.firehose,
                stream_prefix=self.prefix,
                buffer_size=buffer_size,
                count_topics=count_topics,
            ),
        )
        await engine.start()
        self.engines.append(engine)
        return engine


@asynccontextmanager
async def open_stores(backend: str, tmp_path: Path) -> AsyncIterator[Stores]:
    if backend == "embedded":
        db = await open_test_database("sqlite", tmp_path)
        stream: Stream = MemoryStream()
    else:
        db = await open_test_database("postgres", tmp_path)
        stream = open_stream(REDIS_URL)
    stores = Stores(backend, db, stream, unique_name("subtest"))
    try:
        yield stores
    finally:
        for engine in stores.engines:
            await engine.stop()
        if backend != "embedded":
            await _delete_keys(stream, stores.prefix)
        await stream.close()
        await drop_test_database(db)


async def _delete_keys(stream: Stream, prefix: str) -> None:
    redis = getattr(stream, "_redis", None)
    if redis is not None:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}:*")]
        if keys:
            await redis.delete(*keys)


async def take(subscription: Subscription, count: int, *, within: float = WAIT_S) -> list[Delivery]:
    """The next `count` deliveries, failing if they do not all arrive in time."""
    got: list[Delivery] = []
    async with asyncio.timeout(within):
        while len(got) < count:
            got.append(await subscription.next())
    return got


async def nothing_more(subscription: Subscription, *, within: float) -> None:
    """Assert that no delivery arrives for `within` seconds (used only where absence is the point)."""
    try:
        async with asyncio.timeout(within):
            extra = await subscription.next()
    except TimeoutError:
        return
    raise AssertionError(f"unexpected delivery {extra.subject} #{extra.sequence}")
