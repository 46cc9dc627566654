"""A circuit breaker per push endpoint.

closed: requests flow. After `threshold` consecutive transport failures (connection errors,
timeouts, 5xx) the breaker opens: no request is sent and the endpoint's runs stay queued, losing
nothing. After `reset` it is half open: one probe request goes out; success closes the breaker, a
failure opens it for another `reset`.

The decision is made in memory by the dispatcher that sends the requests (a breaker is about what
this sender sees); every change of state is also written to `push_endpoints`, so GetFunction shows
it and a restarted scheduler resumes with an open breaker instead of hammering a dead endpoint.

Hand-written rather than taken from pybreaker or purgatory: both keep their state in their own
stores (memory, Redis) and pybreaker's async path needs Tornado, while ours must live in the
scheduler's database; the state machine itself is the twenty lines below.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ironflow.services.core.ids import Clock
from ironflow.services.core.storage import Database, push_endpoints

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass
class Circuit:
    url: str
    state: str = CLOSED
    failures: int = 0
    retry_at: datetime | None = None


class CircuitBreakers:
    def __init__(self, db: Database, *, threshold: int, reset: timedelta, clock: Clock) -> None:
        self._db = db
        self._threshold = threshold
        self._reset = reset
        self._clock = clock
        self._circuits: dict[str, Circuit] = {}

    async def load(self) -> None:
        """Resume the states a previous run of the scheduler left behind."""
        async with self._db.reading() as conn:
            rows = (await conn.execute(sa.select(push_endpoints))).all()
        for row in rows:
            self._circuits[row.url] = Circuit(
                row.url, row.circuit_state, row.consecutive_failures, row.retry_at
            )

    def state(self, url: str) -> str:
        return self._circuit(url).state

    async def admits(self, url: str, in_flight: int, limit: int) -> int:
        """How many more requests may go to `url` now."""
        circuit = self._circuit(url)
        if circuit.state == OPEN:
            if circuit.retry_at is not None and self._clock() < circuit.retry_at:
                return 0
            await self._move(circuit, HALF_OPEN, error=None)
        if circuit.state == HALF_OPEN:
            return 1 if in_flight == 0 else 0  # one probe at a time
        return max(limit - in_flight, 0)

    async def succeeded(self, url: str) -> None:
        circuit = self._circuit(url)
        circuit.failures = 0
        if circuit.state != CLOSED:
            await self._move(circuit, CLOSED, error=None)

    async def failed(self, url: str, error: dict[str, Any]) -> None:
        circuit = self._circuit(url)
        circuit.failures += 1
        if circuit.state == HALF_OPEN or (circuit.state == CLOSED and circuit.failures >= self._threshold):
            circuit.retry_at = self._clock() + self._reset
            await self._move(circuit, OPEN, error=error)

    def _circuit(self, url: str) -> Circuit:
        circuit = self._circuits.get(url)
        if circuit is None:
            circuit = self._circuits[url] = Circuit(url)
        return circuit

    async def _move(self, circuit: Circuit, state: str, *, error: dict[str, Any] | None) -> None:
        circuit.state = state
        if state != OPEN:
            circuit.retry_at = None
        values = {
            "circuit_state": state,
            "consecutive_failures": circuit.failures,
            "retry_at": circuit.retry_at,
            "last_error": error,
            "updated_at": self._clock(),
        }

        async def work(conn: AsyncConnection) -> None:
            updated = await conn.execute(
                push_endpoints.update().where(push_endpoints.c.url == circuit.url).values(**values)
            )
            if updated.rowcount == 0:
                await conn.execute(push_endpoints.insert().values(url=circuit.url, **values))

        await self._db.run(work)
