"""Triggering survives a scheduler that is away: the emit succeeds and the sweeper starts the runs later."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from ironflow.services.core.storage import Database, events, migrate, runs
from ironflow.services.core.storage._migrate import MIGRATIONS
from ironflow.services.core.streams import MemoryStream
from ironflow.services.ingest import Ingest, IngestSettings, StoredEvent


class FlakyScheduler:
    """Stands in for SchedulerService.Trigger: unreachable until `up`, idempotent once it answers."""

    def __init__(self) -> None:
        self.up = False
        self.calls: list[str] = []

    async def trigger(self, event: StoredEvent) -> list[str]:
        self.calls.append(event.id)
        if not self.up:
            raise ConnectionError("scheduler unavailable")
        return [f"run_for_{event.id}"]


async def test_an_event_emitted_while_the_scheduler_is_down_is_triggered_by_the_sweeper(
    database: Database,
) -> None:
    scheduler = FlakyScheduler()
    ingest = Ingest(
        db=database,
        stream=MemoryStream(),
        trigger=scheduler.trigger,
        settings=IngestSettings(outbox_grace=timedelta(0)),
    )
    accepted, run_ids = await ingest.emit("order.placed", {"n": 1}, idempotency_key="k")
    assert run_ids == []  # stored and acknowledged; no runs yet
    assert await ingest.sweep_untriggered() == 0  # still down: nothing lost, nothing recorded

    scheduler.up = True
    assert await ingest.sweep_untriggered() == 1
    assert await ingest.sweep_untriggered() == 0  # recorded: never handed over twice
    stored = await ingest.get(accepted.event.id)
    assert stored.run_ids == [f"run_for_{accepted.event.id}"]
    # A retried emit answers with the runs the sweeper started.
    again, again_runs = await ingest.emit("order.placed", {"n": 1}, idempotency_key="k")
    assert again.duplicate
    assert again_runs == stored.run_ids
    assert scheduler.calls.count(accepted.event.id) == 3


async def test_topic_messages_are_never_handed_to_the_scheduler(database: Database) -> None:
    scheduler = FlakyScheduler()
    scheduler.up = True
    ingest = Ingest(
        db=database,
        stream=MemoryStream(),
        trigger=scheduler.trigger,
        settings=IngestSettings(outbox_grace=timedelta(0)),
    )
    await ingest.publish("notifications.email", {"to": "a@b.c"})
    assert await ingest.sweep_untriggered() == 0
    assert scheduler.calls == []


async def test_migration_two_upgrades_a_version_one_database(database: Database) -> None:
    """A database migrated before run options existed gains the columns and index, data intact."""
    async with database.transaction() as conn:
        await conn.execute(sa.text("DROP INDEX ix_events_untriggered"))
        for column in ("options", "timeout_at"):
            await conn.execute(sa.text(f"ALTER TABLE runs DROP COLUMN {column}"))
        await conn.execute(sa.text("DELETE FROM ironflow_schema_versions WHERE version >= 2"))
    assert await migrate(database) == MIGRATIONS[-1].version
    async with database.reading() as conn:
        columns = await conn.run_sync(
            lambda sync: {c["name"] for c in sa.inspect(sync).get_columns(runs.name)}
        )
        indexes = await conn.run_sync(
            lambda sync: {i["name"] for i in sa.inspect(sync).get_indexes(events.name)}
        )
    assert {"options", "timeout_at"} <= columns
    assert "ix_events_untriggered" in indexes
