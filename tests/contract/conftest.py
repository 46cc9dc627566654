"""The stream backends every stream contract test runs against: the in-memory store and real Redis.

Redis tests share a server with whatever else is running, so every stream key carries a fresh uuid;
the keys are deleted afterwards as a courtesy, not because any test depends on it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from ironflow.services.core.streams import GroupEntry, MemoryStream, Stream, StreamEntry, open_stream
from tests.conftest import REDIS_URL

DEADLINE_S = 10.0


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Backend:
    name: str
    stream: Stream
    # Lets pending entries grow idle: the memory store's clock jumps, on Redis real time passes.
    age: Callable[[int], Awaitable[None]]
    keys: list[str] = field(default_factory=list)

    def key(self, label: str = "s") -> str:
        name = f"test:streams:{uuid.uuid4().hex}:{label}"
        self.keys.append(name)
        return name


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        monotonic = FakeClock(1000.0)

        async def jump(ms: int) -> None:
            monotonic.advance(ms / 1000)

        memory = MemoryStream(monotonic=monotonic)
        yield Backend("memory", memory, jump)
        await memory.close()
        return

    async def wait(ms: int) -> None:
        await asyncio.sleep(ms / 1000)

    redis = open_stream(REDIS_URL)
    b = Backend("redis", redis, wait)
    try:
        yield b
    finally:
        for key in b.keys:
            await redis.delete_stream(key)
        await redis.close()


def ids_of(entries: list[GroupEntry]) -> list[str]:
    return [g.entry.id for g in entries]


async def append_n(b: Backend, stream: str, n: int) -> list[StreamEntry]:
    return await b.stream.append_many(stream, [{"i": str(i)} for i in range(n)])
