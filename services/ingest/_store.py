"""The events table: idempotent inserts, reads, and the outbox of events not yet on the stream."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ironflow.services.core.storage import Database, UTCDateTime, events, insert_or_ignore


@dataclass(frozen=True)
class StoredEvent:
    id: str
    namespace: str
    name: str
    data: dict[str, Any]
    metadata: dict[str, str]
    idempotency_key: str | None
    created_at: datetime
    position: int
    stream_sequence: int | None
    run_ids: list[str] | None


def _from_row(row: sa.Row[Any]) -> StoredEvent:
    return StoredEvent(
        id=row.id,
        namespace=row.namespace,
        name=row.name,
        data=row.data,
        metadata=row.metadata,
        idempotency_key=row.idempotency_key,
        created_at=row.created_at,
        position=row.position,
        stream_sequence=row.stream_sequence,
        run_ids=row.run_ids,
    )


class EventStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def insert(self, event: StoredEvent) -> tuple[StoredEvent, bool]:
        """Store `event` unless its idempotency key was seen: returns (stored event, duplicate)."""

        async def work(conn: AsyncConnection) -> tuple[StoredEvent, bool]:
            values = {
                "id": event.id,
                "namespace": event.namespace,
                "name": event.name,
                "data": event.data,
                "metadata": event.metadata,
                "idempotency_key": event.idempotency_key,
                "created_at": event.created_at,
                "run_ids": event.run_ids,
            }
            if event.idempotency_key is None:
                result = await conn.execute(events.insert().values(**values).returning(events.c.position))
                return _with_position(event, result.scalar_one()), False
            statement = insert_or_ignore(
                events,
                values,
                dialect=self._db.dialect,
                conflict_columns=["namespace", "idempotency_key"],
                conflict_where=events.c.idempotency_key.is_not(None),
            ).returning(events.c.position)
            position = (await conn.execute(statement)).scalar_one_or_none()
            if position is not None:
                return _with_position(event, position), False
            existing = await conn.execute(
                sa.select(events).where(
                    events.c.namespace == event.namespace,
                    events.c.idempotency_key == event.idempotency_key,
                )
            )
            return _from_row(existing.one()), True

        return await self._db.run(work)

    async def get(self, event_id: str) -> StoredEvent | None:
        async with self._db.reading() as conn:
            row = (await conn.execute(sa.select(events).where(events.c.id == event_id))).first()
        return _from_row(row) if row is not None else None

    async def page(
        self, *, namespace: str, name: str | None, before_position: int | None, limit: int
    ) -> list[StoredEvent]:
        """Newest first; `before_position` continues a previous page."""
        query = sa.select(events).where(events.c.namespace == namespace)
        if name is not None:
            query = query.where(events.c.name == name)
        if before_position is not None:
            query = query.where(events.c.position < before_position)
        query = query.order_by(events.c.position.desc()).limit(limit)
        async with self._db.reading() as conn:
            rows = (await conn.execute(query)).all()
        return [_from_row(row) for row in rows]

    async def record_stream_sequences(self, sequences: Sequence[tuple[str, int]]) -> None:
        """Mark events as on the stream, many per transaction (one commit per batch, not per event)."""
        if not sequences:
            return
        statement = (
            events.update()
            .where(events.c.id == sa.bindparam("event_id"))
            .values(stream_sequence=sa.bindparam("sequence"))
        )

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(statement, [{"event_id": e, "sequence": s} for e, s in sequences])

        await self._db.run(work)

    async def record_triggered(self, triggered: Sequence[tuple[str, list[str]]], *, at: datetime) -> None:
        """Mark events as handed to the scheduler, with the runs they started (one commit per batch)."""
        if not triggered:
            return
        statement = (
            events.update()
            .where(events.c.id == sa.bindparam("event_id"))
            .values(triggered_at=at, run_ids=sa.bindparam("run_ids"))
        )

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(statement, [{"event_id": e, "run_ids": r} for e, r in triggered])

        await self._db.run(work)

    async def untriggered(self, *, created_before: datetime, limit: int) -> list[StoredEvent]:
        """User events the scheduler never confirmed (it was down, or the process died in between)."""
        query = (
            sa.select(events)
            .where(
                events.c.triggered_at.is_(None),
                events.c.namespace == "events",
                events.c.created_at < created_before,
            )
            .order_by(events.c.position)
            .limit(limit)
        )
        async with self._db.reading() as conn:
            rows = (await conn.execute(query)).all()
        return [_from_row(row) for row in rows]

    async def oldest_untriggered(self) -> datetime | None:
        query = sa.select(sa.type_coerce(sa.func.min(events.c.created_at), UTCDateTime)).where(
            events.c.triggered_at.is_(None), events.c.namespace == "events"
        )
        async with self._db.reading() as conn:
            value: datetime | None = (await conn.execute(query)).scalar_one_or_none()
        return value

    async def unstreamed(self, *, created_before: datetime, limit: int) -> list[StoredEvent]:
        """Events whose append to the stream never got recorded (the outbox)."""
        query = (
            sa.select(events)
            .where(events.c.stream_sequence.is_(None), events.c.created_at < created_before)
            .order_by(events.c.position)
            .limit(limit)
        )
        async with self._db.reading() as conn:
            rows = (await conn.execute(query)).all()
        return [_from_row(row) for row in rows]


def _with_position(event: StoredEvent, position: int) -> StoredEvent:
    return StoredEvent(**{**event.__dict__, "position": position})
