"""SQL over the waits table: what each suspended run waits for (a timer, an event, a child run).

Lock order, everywhere: the run row first, then its waits. Resolving a wait is a conditional update
(`resolved_at IS NULL`), so of two schedulers that race for the same wait exactly one resolves it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ironflow.services.core.storage import UTCDateTime, waits

# Index values longer than this are stored as a digest (the column is bounded; equality is all we need).
_MAX_KEY_TEXT = 200


def indexed_value(text: str) -> str:
    if len(text) <= _MAX_KEY_TEXT:
        return text
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


async def insert_wait(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(waits.insert().values(**values))


async def get_wait(conn: AsyncConnection, run_id: str, step_id: str) -> sa.Row[Any] | None:
    query = sa.select(waits).where(waits.c.run_id == run_id, waits.c.step_id == step_id)
    row: sa.Row[Any] | None = (await conn.execute(query)).first()
    return row


async def resolve_wait(
    conn: AsyncConnection, wait_id: str, *, now: datetime, event_id: str | None = None
) -> bool:
    """Mark one wait resolved; False when someone else resolved it first."""
    result = await conn.execute(
        waits.update()
        .where(waits.c.id == wait_id, waits.c.resolved_at.is_(None))
        .values(resolved_at=now, resolved_event_id=event_id)
    )
    return result.rowcount == 1


async def close_waits(conn: AsyncConnection, run_id: str, *, now: datetime) -> None:
    """The run ended: nothing it waited for matters any more."""
    await conn.execute(
        waits.update().where(waits.c.run_id == run_id, waits.c.resolved_at.is_(None)).values(resolved_at=now)
    )


async def delete_waits(conn: AsyncConnection, run_id: str, step_ids: Sequence[str]) -> None:
    if step_ids:
        await conn.execute(
            waits.delete().where(waits.c.run_id == run_id, waits.c.step_id.in_(list(step_ids)))
        )


async def open_kinds(conn: AsyncConnection, run_id: str) -> set[str]:
    query = sa.select(waits.c.kind).where(waits.c.run_id == run_id, waits.c.resolved_at.is_(None)).distinct()
    return set((await conn.execute(query)).scalars())


async def due_waits(
    conn: AsyncConnection, *, now: datetime, events_seen_until: datetime, limit: int
) -> list[sa.Row[Any]]:
    """Open waits whose timer has passed. An event wait only times out once every event stored
    before its deadline has been matched (`events_seen_until`), so a late-triggered event still wins."""
    query = (
        sa.select(waits)
        .where(
            waits.c.resolved_at.is_(None),
            waits.c.timeout_at <= now,
            sa.or_(waits.c.kind != "event", waits.c.timeout_at <= events_seen_until),
        )
        .order_by(waits.c.timeout_at)
        .limit(limit)
    )
    return list((await conn.execute(query)).all())


async def next_timer_at(conn: AsyncConnection) -> datetime | None:
    query = sa.select(sa.type_coerce(sa.func.min(waits.c.timeout_at), UTCDateTime)).where(
        waits.c.resolved_at.is_(None)
    )
    value: datetime | None = (await conn.execute(query)).scalar_one_or_none()
    return value


async def any_open_event_wait(conn: AsyncConnection, event_name: str) -> bool:
    query = (
        sa.select(waits.c.id)
        .where(waits.c.kind == "event", waits.c.event_name == event_name, waits.c.resolved_at.is_(None))
        .limit(1)
    )
    return (await conn.execute(query)).first() is not None


async def event_key_paths(conn: AsyncConnection, event_name: str) -> list[str | None]:
    """The distinct match-key paths among open waits for this event name (None: unkeyed waits)."""
    query = (
        sa.select(waits.c.match_path)
        .where(waits.c.kind == "event", waits.c.event_name == event_name, waits.c.resolved_at.is_(None))
        .distinct()
    )
    return list((await conn.execute(query)).scalars())


async def event_candidates(
    conn: AsyncConnection, event_name: str, path: str | None, value: str | None
) -> list[sa.Row[Any]]:
    """Open waits for `event_name` whose key is (path, value); with path None, the unkeyed ones."""
    conditions = [waits.c.kind == "event", waits.c.event_name == event_name, waits.c.resolved_at.is_(None)]
    if path is None:
        conditions.append(waits.c.match_path.is_(None))
    else:
        conditions += [waits.c.match_path == path, waits.c.match_value == value]
    query = sa.select(waits).where(*conditions).order_by(waits.c.created_at)
    return list((await conn.execute(query)).all())


async def open_child_wait(conn: AsyncConnection, child_run_id: str) -> sa.Row[Any] | None:
    query = sa.select(waits).where(
        waits.c.kind == "invoke", waits.c.child_run_id == child_run_id, waits.c.resolved_at.is_(None)
    )
    row: sa.Row[Any] | None = (await conn.execute(query)).first()
    return row
