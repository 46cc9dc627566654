"""Job-ticket streams stay bounded: the reconciler trims tickets older than twice `stale_after`, on
the in-memory stream and on Redis, and never a ticket younger than that."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ironflow.services.core.signals import RunNotices
from ironflow.services.core.storage import Database
from ironflow.services.scheduler import FunctionCatalog
from ironflow.services.scheduler._tickets import JobTickets, TicketSettings, jobs_key
from ironflow.v1 import functions_pb2
from tests.conftest import drop_test_database, open_test_database

from .conftest import Backend

STALE_AFTER = timedelta(seconds=60)


def _pull_function(function_id: str) -> functions_pb2.Function:
    return functions_pb2.Function(
        definition=functions_pb2.FunctionDefinition(
            id=function_id,
            triggers=[functions_pb2.Trigger(event=functions_pb2.EventTrigger(event="t.x"))],
            mode=functions_pb2.FUNCTION_MODE_PULL,
        ),
        version=1,
        status=functions_pb2.FUNCTION_STATUS_ACTIVE,
    )


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = await open_test_database("sqlite", tmp_path)
    yield db
    await drop_test_database(db)


async def test_tickets_older_than_twice_stale_after_are_trimmed(
    backend: Backend, sqlite_db: Database
) -> None:
    prefix = backend.key("prefix")
    function_id = "tickets-trim"
    key = jobs_key(prefix, function_id)
    backend.keys.append(key)

    async def source() -> list[functions_pb2.Function]:
        return [_pull_function(function_id)]

    clock = Clock()
    tickets = JobTickets(
        db=sqlite_db,  # trimming never touches the database
        stream=backend.stream,
        catalog=FunctionCatalog(source),
        notices=RunNotices(),
        settings=TicketSettings(stream_prefix=prefix, stale_after=STALE_AFTER),
        clock=clock,
    )

    async def add(n: int) -> list[str]:
        entries = await backend.stream.append_many(
            key, [{"run_id": f"run_{i}", "sequence": "1"} for i in range(n)]
        )
        return [entry.id for entry in entries]

    old = await add(5)
    assert await tickets.trim_old_tickets() == 0  # notes the newest ticket, trims nothing yet
    clock.now += STALE_AFTER
    newer = await add(3)
    assert await tickets.trim_old_tickets() == 0  # the first note is only one stale_after old
    assert await backend.stream.length(key) == 8

    clock.now += STALE_AFTER
    # The first note is now 2 * stale_after old: the four tickets before it go, the noted one stays.
    assert await tickets.trim_old_tickets() == 4
    kept = [entry.id for entry in await backend.stream.read(key, count=100)]
    assert kept == [old[-1], *newer]

    clock.now += 2 * STALE_AFTER
    assert await tickets.trim_old_tickets() == 3  # up to the second note, taken a minute later
    assert [entry.id for entry in await backend.stream.read(key, count=100)] == [newer[-1]]
