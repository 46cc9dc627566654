"""Storage behaviour that must hold on SQLite and on Postgres alike."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, StatementError

from ironflow.services.core.errors import ErrorCode, ServiceError
from ironflow.services.core.storage import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Database,
    events,
    functions,
    migrate,
    schema_version,
    schema_versions,
)


def _event_row(event_id: str, **overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": event_id,
        "namespace": "events",
        "name": "order.placed",
        "data": {"orderId": "ord_1", "total": 99.99, "items": [1, 2]},
        "metadata": {"source": "test"},
        "created_at": datetime.now(UTC),
    }
    row.update(overrides)
    return row


async def test_migrate_records_the_schema_version_once(database: Database) -> None:
    assert await schema_version(database) == SCHEMA_VERSION
    assert await migrate(database) == SCHEMA_VERSION  # a second run changes nothing
    async with database.reading() as conn:
        versions = (await conn.execute(sa.select(schema_versions.c.version))).scalars().all()
    assert sorted(versions) == [migration.version for migration in MIGRATIONS]


async def test_concurrent_migrations_apply_each_version_once(database: Database) -> None:
    results = await asyncio.gather(*(migrate(database) for _ in range(4)))
    assert results == [SCHEMA_VERSION] * 4
    async with database.reading() as conn:
        count = (await conn.execute(sa.select(sa.func.count()).select_from(schema_versions))).scalar_one()
    assert count == len(MIGRATIONS)


async def test_timestamps_come_back_aware_utc(database: Database) -> None:
    berlin_noon = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    async with database.transaction() as conn:
        await conn.execute(events.insert().values(_event_row("evt_tz", created_at=berlin_noon)))
    async with database.reading() as conn:
        stored = (await conn.execute(sa.select(events.c.created_at))).scalar_one()
    assert stored.tzinfo is not None
    assert stored.utcoffset() == timedelta(0)
    assert stored == berlin_noon
    assert stored.hour == 11


async def test_naive_timestamps_are_refused(database: Database) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        async with database.transaction() as conn:
            await conn.execute(
                events.insert().values(_event_row("evt_naive", created_at=datetime(2026, 1, 1)))
            )
    async with database.reading() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(events))).scalar_one() == 0


async def test_json_documents_round_trip(database: Database) -> None:
    data = {"nested": {"list": [1, 2.5, "x", None, True]}, "unicode": "grüße ✓", "int": 2**53}
    async with database.transaction() as conn:
        await conn.execute(events.insert().values(_event_row("evt_json", data=data)))
    async with database.reading() as conn:
        assert (await conn.execute(sa.select(events.c.data))).scalar_one() == data


async def test_positions_increase_in_insert_order(database: Database) -> None:
    async with database.transaction() as conn:
        for i in range(5):
            await conn.execute(events.insert().values(_event_row(f"evt_{i}")))
    async with database.reading() as conn:
        rows = (await conn.execute(sa.select(events.c.id).order_by(events.c.position))).scalars().all()
    assert list(rows) == [f"evt_{i}" for i in range(5)]


async def test_idempotency_key_is_unique_per_namespace(database: Database) -> None:
    async with database.transaction() as conn:
        await conn.execute(events.insert().values(_event_row("evt_a", idempotency_key="k1")))
        # The same key in another namespace is a different message.
        await conn.execute(
            events.insert().values(_event_row("evt_b", idempotency_key="k1", namespace="topic"))
        )
        # Events without a key never collide.
        await conn.execute(events.insert().values(_event_row("evt_c")))
        await conn.execute(events.insert().values(_event_row("evt_d")))
    with pytest.raises(IntegrityError):
        async with database.transaction() as conn:
            await conn.execute(events.insert().values(_event_row("evt_e", idempotency_key="k1")))


async def test_failed_transaction_leaves_nothing_behind(database: Database) -> None:
    with pytest.raises(IntegrityError):  # noqa: PT012 - the transaction as a whole must fail
        async with database.transaction() as conn:
            await conn.execute(events.insert().values(_event_row("evt_first")))
            await conn.execute(events.insert().values(_event_row("evt_first")))
    async with database.reading() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(events))).scalar_one() == 0


async def test_concurrent_read_modify_write_loses_no_update(database: Database) -> None:
    """Each task reads the version, then writes version + 1 in the same transaction.

    On SQLite this is only safe because transactions begin IMMEDIATE; with a deferred BEGIN two
    transactions read the same value and one increment is lost. Postgres needs the row lock.
    """
    now = datetime.now(UTC)
    async with database.transaction() as conn:
        await conn.execute(
            functions.insert().values(
                id="counter",
                version=0,
                status="active",
                mode="pull",
                definition={},
                definition_digest="",
                created_at=now,
                updated_at=now,
            )
        )

    async def increment(conn: sa.ext.asyncio.AsyncConnection) -> None:
        query = sa.select(functions.c.version).where(functions.c.id == "counter")
        if database.dialect == "postgresql":
            query = query.with_for_update()
        current = (await conn.execute(query)).scalar_one()
        await asyncio.sleep(0)  # let other transactions interleave here if they can
        await conn.execute(functions.update().where(functions.c.id == "counter").values(version=current + 1))

    await asyncio.gather(*(database.run(increment) for _ in range(20)))
    async with database.reading() as conn:
        final = (await conn.execute(sa.select(functions.c.version))).scalar_one()
    assert final == 20


async def test_unsupported_database_url_is_invalid_argument() -> None:
    with pytest.raises(ServiceError) as info:
        Database.open("mysql://root@localhost/db")
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    assert "database_url" in info.value.message


async def test_a_read_is_not_held_up_by_an_open_write_transaction(database: Database) -> None:
    """Readers never take the write lock (on SQLite they begin a deferred transaction, which WAL
    serves from the last commit), so a read answers while a writer holds its transaction open."""
    async with database.transaction() as conn:
        await conn.execute(events.insert().values(_event_row("evt_committed")))
    writer_inside = asyncio.Event()
    release_writer = asyncio.Event()

    async def slow_writer(conn: sa.ext.asyncio.AsyncConnection) -> None:
        await conn.execute(events.insert().values(_event_row("evt_pending", idempotency_key="k2")))
        writer_inside.set()
        await release_writer.wait()

    writer = asyncio.create_task(database.run(slow_writer))
    await asyncio.wait_for(writer_inside.wait(), 10)
    try:
        async with asyncio.timeout(5), database.reading() as conn:
            ids = set((await conn.execute(sa.select(events.c.id))).scalars())
        assert ids == {"evt_committed"}  # the pending insert is not visible yet
    finally:
        release_writer.set()
        await writer
    async with database.reading() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(events))).scalar_one() == 2


async def test_many_concurrent_writers_all_commit(database: Database) -> None:
    """Far more concurrent transactions than pooled connections: each commits once (on SQLite they
    queue on the process's writer lock instead of polling SQLite's busy handler)."""

    async def insert(index: int) -> None:
        async def work(conn: sa.ext.asyncio.AsyncConnection) -> None:
            await conn.execute(
                events.insert().values(_event_row(f"evt_{index}", idempotency_key=f"k{index}"))
            )
            await asyncio.sleep(0)  # hand the loop to the others mid-transaction

        await database.run(work)

    await asyncio.gather(*(insert(index) for index in range(300)))
    async with database.reading() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(events))).scalar_one() == 300
