"""What the scheduler's contract tests share: scheduler replicas over one database, with a clock the
test moves and a catalog of the test's own functions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

from ironflow.services.core.signals import RunNotices
from ironflow.services.core.storage import Database
from ironflow.services.core.streams import MemoryStream
from ironflow.services.scheduler import FunctionCatalog, Scheduler, SchedulerSettings
from ironflow.services.scheduler._tickets import TicketSettings
from ironflow.v1 import functions_pb2

FIREHOSE = "test:firehose"


class Clock:
    """The schedulers' clock: stands still until the test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def replica(
    database: Database,
    stream: MemoryStream,
    functions: list[functions_pb2.Function],
    clock: Clock,
    *,
    ticket_prefix: str = "ironflow",
) -> Scheduler:
    """One scheduler replica over `database`, with its own catalog of `functions`."""

    async def source() -> list[functions_pb2.Function]:
        return functions

    return Scheduler(
        db=database,
        stream=stream,
        catalog=FunctionCatalog(source),
        notices=RunNotices(),
        settings=SchedulerSettings(firehose=FIREHOSE, tickets=TicketSettings(stream_prefix=ticket_prefix)),
        clock=clock,
    )


@asynccontextmanager
async def second_handle(database: Database) -> AsyncIterator[Database]:
    """On Postgres a second connection pool to the same database, as another scheduler process would
    have. SQLite is one process's database (the embedded shape; its calls run on the event loop, so a
    second handle in this process would block the loop waiting for the first): replicas share it."""
    if database.dialect != "postgresql":
        yield database
        return
    other = Database.open(database.engine.url.render_as_string(hide_password=False), schema=database.schema)
    try:
        yield other
    finally:
        await other.close()
