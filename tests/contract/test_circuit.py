"""The push endpoints' circuit breaker on SQLite and Postgres, with an injected clock: it opens after
the threshold of consecutive failures, half-opens after the reset delay with one probe at a time,
closes on a success, and what it records is what GetFunction shows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ironflow.services.core.storage import Database, migrate
from ironflow.services.core.streams import MemoryStream
from ironflow.services.registry import Registry
from ironflow.services.scheduler._circuit import CircuitBreakers
from ironflow.v1 import functions_pb2

URL = "http://127.0.0.1:9/hooks"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def _shown(registry: Registry, function_id: str) -> str:
    return (await registry.get(function_id)).to_proto().circuit_state


async def test_the_breaker_opens_half_opens_and_closes_as_designed(database: Database) -> None:
    await migrate(database)
    clock = Clock()
    registry = Registry(db=database, stream=MemoryStream(), clock=clock)
    definition = functions_pb2.FunctionDefinition(
        id="hook", mode=functions_pb2.FUNCTION_MODE_PUSH, endpoint_url=URL
    )
    await registry.register([definition])
    breakers = CircuitBreakers(database, threshold=3, reset=timedelta(seconds=30), clock=clock)
    error = {"code": "UNREACHABLE", "message": "connection refused"}

    assert await _shown(registry, "hook") == "closed"
    assert await breakers.admits(URL, in_flight=2, limit=10) == 8
    await breakers.failed(URL, error)
    await breakers.failed(URL, error)
    assert breakers.state(URL) == "closed"  # below the threshold
    await breakers.failed(URL, error)
    assert breakers.state(URL) == "open"
    assert await _shown(registry, "hook") == "open"
    assert await breakers.admits(URL, in_flight=0, limit=10) == 0

    clock.now += timedelta(seconds=29)
    assert await breakers.admits(URL, in_flight=0, limit=10) == 0
    clock.now += timedelta(seconds=1)
    assert await _shown(registry, "hook") == "half_open"  # shown even before a probe is sent
    assert await breakers.admits(URL, in_flight=0, limit=10) == 1  # one probe
    assert breakers.state(URL) == "half_open"
    assert await breakers.admits(URL, in_flight=1, limit=10) == 0  # and only one at a time

    await breakers.failed(URL, error)  # the probe failed: open for another reset delay
    assert breakers.state(URL) == "open"
    assert await _shown(registry, "hook") == "open"
    clock.now += timedelta(seconds=30)
    assert await breakers.admits(URL, in_flight=0, limit=10) == 1
    await breakers.succeeded(URL)
    assert breakers.state(URL) == "closed"
    assert await _shown(registry, "hook") == "closed"
    assert await breakers.admits(URL, in_flight=0, limit=10) == 10

    # A success resets the count: failures must be consecutive to open the breaker.
    await breakers.failed(URL, error)
    await breakers.failed(URL, error)
    await breakers.succeeded(URL)
    await breakers.failed(URL, error)
    await breakers.failed(URL, error)
    assert breakers.state(URL) == "closed"


async def test_a_restarted_dispatcher_resumes_an_open_breaker(database: Database) -> None:
    await migrate(database)
    clock = Clock()
    first = CircuitBreakers(database, threshold=1, reset=timedelta(seconds=30), clock=clock)
    await first.failed(URL, {"code": "TIMEOUT", "message": "no answer"})
    second = CircuitBreakers(database, threshold=1, reset=timedelta(seconds=30), clock=clock)
    await second.load()
    assert second.state(URL) == "open"
    assert await second.admits(URL, in_flight=0, limit=5) == 0
    clock.now += timedelta(seconds=30)
    assert await second.admits(URL, in_flight=0, limit=5) == 1
