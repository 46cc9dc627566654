"""SQL over the scheduler's tables (runs, steps). Every function here runs inside the caller's
transaction; the scheduler decides what to change, this module only knows how.

Claiming uses `SELECT ... FOR UPDATE SKIP LOCKED` on Postgres, so scheduler replicas never hand the
same run to two workers and never wait on each other; SQLite has one writer at a time anyway
(`BEGIN IMMEDIATE`), where the same statements are simply serialised.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ironflow.services.core.storage import UTCDateTime, insert_or_ignore, runs, steps

from ._concurrency import admit_claims, keys_of, not_in_full_keys
from ._priority import queue_order

ACTIVE_STATUSES = ("queued", "running", "sleeping", "waiting", "paused")
ENDED_STATUSES = ("completed", "failed", "cancelled")
# Runs a worker may be handed: never started, or started and now between two executions.
DISPATCHABLE_STATUSES = ("queued", "running")
# Further pages a claim reads past runs whose concurrency keys are full.
_MORE_PAGES = 3


# The statements run several times for every run, built once: building `select(runs)` (every
# column, each with its cache key) cost more than executing it (165 vs 110 us on SQLite).
_RUN_BY_ID = sa.select(runs).where(runs.c.id == sa.bindparam("by_run_id"))
_RUN_BY_ID_LOCKED = {
    False: _RUN_BY_ID.with_for_update(),
    True: _RUN_BY_ID.with_for_update(skip_locked=True),
}
_STEP_BY_ID = sa.select(steps).where(
    steps.c.run_id == sa.bindparam("by_run_id"), steps.c.step_id == sa.bindparam("by_step_id")
)


def _locking(query: sa.Select[Any], dialect: str, *, skip_locked: bool = False) -> sa.Select[Any]:
    if dialect == "postgresql":
        return query.with_for_update(skip_locked=skip_locked)
    return query


async def insert_run(conn: AsyncConnection, values: dict[str, Any], *, dialect: str) -> tuple[str, bool]:
    """Create a run unless (event, function) has one: returns (run id, created)."""
    statement = insert_or_ignore(
        runs, values, dialect=dialect, conflict_columns=["event_id", "function_id"]
    ).returning(runs.c.id)
    created = (await conn.execute(statement)).scalar_one_or_none()
    if created is not None:
        return created, True
    existing = await conn.execute(
        sa.select(runs.c.id).where(
            runs.c.event_id == values["event_id"], runs.c.function_id == values["function_id"]
        )
    )
    return existing.scalar_one(), False


async def claim_runs(
    conn: AsyncConnection,
    *,
    dialect: str,
    function_ids: Sequence[str],
    limit: int,
    now: datetime,
    run_ids: Sequence[str] | None = None,
    prioritised: bool = False,
) -> list[sa.Row[Any]]:
    """Lock up to `limit` due, unleased runs of these functions, oldest due first (with
    `prioritised`, in priority order: `_priority.py`), leaving out runs whose concurrency keys are
    full (`_concurrency.py`).

    With `run_ids`, only those runs (the ones a gateway holds tickets for). Their rows are waited
    for rather than skipped: a row locked for a moment (a duplicate ticket being leased elsewhere,
    a cancel) must not cost its ticket. Locked in id order, so two such claims cannot deadlock. One
    of them whose concurrency key is full loses its ticket (it is ticketed again when a slot frees).
    """
    due = sa.and_(
        runs.c.status.in_(DISPATCHABLE_STATUSES),
        runs.c.lease_token.is_(None),
        runs.c.available_at <= now,
        runs.c.function_id.in_(list(function_ids)),
    )
    if run_ids is not None:
        query = sa.select(runs).where(due, runs.c.id.in_(list(run_ids))).order_by(runs.c.id).limit(limit)
        presented = list((await conn.execute(_locking(query, dialect))).all())
        if not any(keys_of(row.input) for row in presented):
            return presented
        admitted, refused, _ = await admit_claims(conn, presented, limit=limit, dialect=dialect)
        await untick(conn, [row.id for row in refused])
        return admitted
    order = queue_order(dialect) if prioritised else runs.c.available_at
    query = sa.select(runs).where(due).order_by(order).limit(limit)
    candidates = list((await conn.execute(_locking(query, dialect, skip_locked=True))).all())
    if not any(keys_of(row.input) for row in candidates):
        return candidates
    admitted, _, full = await admit_claims(conn, candidates, limit=limit, dialect=dialect)
    # Runs of full keys took places in that page: look past them, a few pages at most.
    seen = {row.id for row in candidates}
    for _ in range(_MORE_PAGES):
        if len(admitted) >= limit or not full:
            break
        wanted = limit - len(admitted)
        query = (
            sa.select(runs)
            .where(due, not_in_full_keys(full), runs.c.id.not_in(sorted(seen)))
            .order_by(order)
            .limit(wanted)
        )
        more = list((await conn.execute(_locking(query, dialect, skip_locked=True))).all())
        if not more:
            break
        seen.update(row.id for row in more)
        extra, _, full_now = await admit_claims(
            conn, more, limit=wanted, dialect=dialect, counted=admitted, wait_for_locks=False
        )
        admitted += extra
        full |= full_now
    return admitted


async def untick(conn: AsyncConnection, run_ids: Sequence[str]) -> None:
    """Forget that these runs have a job ticket (it was used up without leasing them): the issuer
    tickets them again when they can be leased."""
    if run_ids:
        await conn.execute(
            runs.update()
            .where(
                runs.c.id.in_(list(run_ids)),
                runs.c.lease_token.is_(None),
                runs.c.ticketed_sequence == runs.c.execution_sequence,
            )
            .values(ticketed_sequence=None)
        )


async def next_due_at(
    conn: AsyncConnection, function_ids: Sequence[str], *, after: datetime | None = None
) -> datetime | None:
    """When the earliest unleased run of these functions is due (only those due after `after`)."""
    # type_coerce keeps the aware-UTC conversion of the column for the aggregate (SQLite gives text).
    query = sa.select(sa.type_coerce(sa.func.min(runs.c.available_at), UTCDateTime)).where(
        runs.c.status.in_(DISPATCHABLE_STATUSES),
        runs.c.lease_token.is_(None),
        runs.c.function_id.in_(list(function_ids)),
    )
    if after is not None:
        query = query.where(runs.c.available_at > after)
    value: datetime | None = (await conn.execute(query)).scalar_one_or_none()
    return value


def fenced_off(now: datetime) -> dict[str, Any]:
    """Column values that take a run's lease away: a new execution sequence makes anything the old
    holder still sends stale."""
    return {
        "lease_token": None,
        "lease_expires_at": None,
        "execution_sequence": runs.c.execution_sequence + 1,
        "updated_at": now,
    }


async def give_back(conn: AsyncConnection, lease: Any, *, available_at: datetime, now: datetime) -> bool:
    """Take a run from the holder of `lease` (a JobLease) and make it due at `available_at`; False when
    that lease is no longer held."""
    result = await conn.execute(
        runs.update()
        .where(
            runs.c.id == lease.run_id,
            runs.c.lease_token == lease.lease_token,
            runs.c.execution_sequence == lease.execution_sequence,
            runs.c.status == "running",
        )
        .values(worker_id=None, available_at=available_at, **fenced_off(now))
    )
    return bool(result.rowcount)


async def lock_run(
    conn: AsyncConnection, run_id: str, *, dialect: str, skip_locked: bool = False
) -> sa.Row[Any] | None:
    """The run row, locked for this transaction (None if missing, or busy and `skip_locked`)."""
    query = _RUN_BY_ID_LOCKED[skip_locked] if dialect == "postgresql" else _RUN_BY_ID
    row: sa.Row[Any] | None = (await conn.execute(query, {"by_run_id": run_id})).first()
    return row


async def update_run(conn: AsyncConnection, run_id: str, **values: Any) -> None:
    await conn.execute(runs.update().where(runs.c.id == run_id).values(**values))


async def update_runs(conn: AsyncConnection, run_ids: Iterable[str], **values: Any) -> None:
    ids = list(run_ids)
    if ids:
        await conn.execute(runs.update().where(runs.c.id.in_(ids)).values(**values))


async def steps_of(conn: AsyncConnection, run_ids: Sequence[str]) -> dict[str, list[sa.Row[Any]]]:
    result: dict[str, list[sa.Row[Any]]] = {run_id: [] for run_id in run_ids}
    if not run_ids:
        return result
    rows = await conn.execute(
        sa.select(steps).where(steps.c.run_id.in_(list(run_ids))).order_by(steps.c.started_at)
    )
    for row in rows:
        result[row.run_id].append(row)
    return result


async def get_step(conn: AsyncConnection, run_id: str, step_id: str) -> sa.Row[Any] | None:
    params = {"by_run_id": run_id, "by_step_id": step_id}
    row: sa.Row[Any] | None = (await conn.execute(_STEP_BY_ID, params)).first()
    return row


async def insert_step(conn: AsyncConnection, run_id: str, step_id: str, **values: Any) -> None:
    """Insert a step row the caller just found missing (the run row is locked by the caller)."""
    await conn.execute(steps.insert().values(run_id=run_id, step_id=step_id, **values))


async def save_step(conn: AsyncConnection, run_id: str, step_id: str, **values: Any) -> None:
    """Insert or update one step row (the run row is locked by the caller, so no race)."""
    result = await conn.execute(
        steps.update().where(steps.c.run_id == run_id, steps.c.step_id == step_id).values(**values)
    )
    if result.rowcount == 0:
        await conn.execute(steps.insert().values(run_id=run_id, step_id=step_id, **values))
