"""Pending runs: how debounce and batching gather a key's events into one run not started yet.

A pending run is an ordinary queued run, made by `create_run` from its first event and due later
(`available_at`), so tickets, leases, push delivery and the REST/RPC views need nothing new, and the
emit can answer with the run's id at once. A row of `pending_runs` per (function, control, key)
names the run the key's events join. A trigger locks that row, then the run, and joins the run only
while it is still queued, unleased and never started; otherwise (a worker took it, it was cancelled)
the event opens a new pending run and the row points there.

- Debounce: each event moves `available_at` to now + `period`, capped at the first event's arrival +
  `max_wait`. A newer event (by timestamp, then sequence, then id) replaces the run's event (`input`
  and `event_id`); an older one, a trigger replayed late, joins without replacing, so it never wins
  over a newer one. Moving the due time clears `ticketed_sequence`: a ticket issued for the old due
  time is dropped by the gateway (the run is not due), and the run is ticketed again when it is.
- Batching: due `timeout` after the first event; each event is one row of `accumulated_events`, in
  arrival order, read back into `Job.events` when the run is leased. The event that fills the batch
  (`max_size`, or `MAX_BATCH_BYTES` of event JSON, so that a job stays deliverable) makes the run due
  at once and detaches it from the key's row, so the next event opens a new batch.

Every event a pending run took in is recorded in `accumulated_events`, keyed by (function, event): a
replayed trigger of it (the ingest's sweeper re-triggers events whose triggering was not recorded)
finds that run and changes nothing, even after the run started or its event was replaced.

Exact across replicas: the key's row is created by INSERT ... ON CONFLICT DO NOTHING and then locked
(SELECT ... FOR UPDATE on Postgres; SQLite's BEGIN IMMEDIATE serialises writers), so a concurrent
trigger of the same key waits for the first to commit and then sees its run. Leasing locks the run
row too, so "still open" is decided under the same lock a worker's claim needs.

Rejected: keeping a batch in the run's input (every event would rewrite the whole growing document:
quadratic in the batch size), and holding events in a table of their own until a timer turns them
into a run (a second dispatch path, and no run id to answer the emit with).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ironflow.services.core.ids import IdSource
from ironflow.services.core.storage import accumulated_events, insert_or_ignore, pending_runs, runs

from ._accumulation import BatchingRule, DebounceRule
from ._catalog import CompiledFunction
from ._invocation import create_run, start_run
from ._store import lock_run, update_run
from ._system_events import SystemEvents

# A batch closes once it holds this much event JSON: its job must still fit a worker's message limit
# (16 MiB in the SDK) beside the memoized steps.
MAX_BATCH_BYTES = 4 * 1024 * 1024
# Marks a batch run in its input: its job carries `events`.
BATCHED = "batched"
# Stale rows deleted per sweeping transaction.
SWEEP_BATCH = 500
# A row left without a run (its batch filled up) is swept once it has been idle this long.
IDLE_AFTER = timedelta(minutes=1)

_EARLIEST = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class _Pending:
    run_id: str | None
    first_at: datetime
    size: int
    bytes: int


@dataclass(frozen=True)
class _Target:
    """Where one event goes: the key's row (locked) and its run, when that can still be joined."""

    function: CompiledFunction
    where: sa.ColumnElement[bool]
    pending: _Pending
    run: sa.Row[Any] | None


async def start_event_run(
    conn: AsyncConnection,
    function: CompiledFunction,
    event: dict[str, Any],
    key_hash: str | None,
    *,
    now: datetime,
    ids: IdSource,
    dialect: str,
    events: SystemEvents,
    available_at: datetime | None = None,
) -> str:
    """The run a matching event (stored form) starts, created unless the event started it already (due
    at `available_at`, default now); or, when the function debounces or batches, the pending run the
    event joins for its key (`key_hash`). Returns the run's id. Call in the trigger's transaction,
    after admission let the event through."""
    rule = function.accumulation
    if rule is None or key_hash is None:
        return await start_run(
            conn, function, event, now=now, ids=ids, dialect=dialect, events=events, available_at=available_at
        )
    where = sa.and_(
        pending_runs.c.function_id == function.id,
        pending_runs.c.control == rule.control,
        pending_runs.c.key_hash == key_hash,
    )
    pending = await _lock_pending(conn, where, function.id, rule.control, key_hash, now=now, dialect=dialect)
    joined = await run_of_event(conn, function.id, event["id"])
    if joined is not None:
        return joined
    run = None
    if pending.run_id is not None:
        locked = await lock_run(conn, pending.run_id, dialect=dialect)
        if locked is not None and _open(locked):
            run = locked
    target = _Target(function=function, where=where, pending=pending, run=run)
    if isinstance(rule, BatchingRule):
        return await _batch(conn, target, rule, event, now=now, ids=ids, dialect=dialect, events=events)
    return await _debounce(conn, target, rule, event, now=now, ids=ids, dialect=dialect, events=events)


async def run_of_event(conn: AsyncConnection, function_id: str, event_id: str) -> str | None:
    """The run an event already started or joined, if any."""
    joined = await conn.execute(
        sa.select(accumulated_events.c.run_id).where(
            accumulated_events.c.function_id == function_id, accumulated_events.c.event_id == event_id
        )
    )
    run_id = joined.scalar_one_or_none()
    if run_id is not None:
        return str(run_id)
    started = await conn.execute(
        sa.select(runs.c.id).where(runs.c.event_id == event_id, runs.c.function_id == function_id)
    )
    found = started.scalar_one_or_none()
    return None if found is None else str(found)


async def batch_events(conn: AsyncConnection, run_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The events of batch runs, in the order they joined."""
    result: dict[str, list[dict[str, Any]]] = {run_id: [] for run_id in run_ids}
    if not run_ids:
        return result
    rows = await conn.execute(
        sa.select(accumulated_events.c.run_id, accumulated_events.c.event)
        .where(accumulated_events.c.run_id.in_(list(run_ids)), accumulated_events.c.event.is_not(None))
        .order_by(accumulated_events.c.run_id, accumulated_events.c.position)
    )
    for row in rows:
        result[row.run_id].append(row.event)
    return result


async def sweep_pending_runs(conn: AsyncConnection, *, now: datetime) -> int:
    """Delete up to SWEEP_BATCH rows whose run can no longer be joined, and as many left without a
    run (full batches) before `now - IDLE_AFTER`; returns how many went."""
    removed = await _sweep_idle(conn, before=now - IDLE_AFTER)
    stale = (
        await conn.execute(
            sa.select(
                pending_runs.c.function_id,
                pending_runs.c.control,
                pending_runs.c.key_hash,
                pending_runs.c.run_id,
            )
            .select_from(pending_runs.outerjoin(runs, runs.c.id == pending_runs.c.run_id))
            .where(
                pending_runs.c.run_id.is_not(None),
                sa.or_(
                    runs.c.id.is_(None),
                    runs.c.status != "queued",
                    runs.c.lease_token.is_not(None),
                    runs.c.started_at.is_not(None),
                ),
            )
            .limit(SWEEP_BATCH)
        )
    ).all()
    if not stale:
        return removed
    # The run id is part of the condition: a row a trigger moved to a new run meanwhile is kept
    # (Postgres re-checks the condition on the row it waited for).
    deleted = await conn.execute(
        sa.delete(pending_runs).where(
            sa.tuple_(
                pending_runs.c.function_id,
                pending_runs.c.control,
                pending_runs.c.key_hash,
                pending_runs.c.run_id,
            ).in_([tuple(row) for row in stale])
        )
    )
    return removed + max(deleted.rowcount, 0)


async def _sweep_idle(conn: AsyncConnection, *, before: datetime) -> int:
    idle = (
        sa.select(pending_runs.c.function_id, pending_runs.c.control, pending_runs.c.key_hash)
        .where(pending_runs.c.run_id.is_(None), pending_runs.c.updated_at < before)
        .limit(SWEEP_BATCH)
    )
    # Repeated outside the subquery: Postgres re-checks it on a row a trigger gave a run meanwhile.
    deleted = await conn.execute(
        sa.delete(pending_runs).where(
            sa.tuple_(pending_runs.c.function_id, pending_runs.c.control, pending_runs.c.key_hash).in_(idle),
            pending_runs.c.run_id.is_(None),
            pending_runs.c.updated_at < before,
        )
    )
    return max(deleted.rowcount, 0)


async def _debounce(
    conn: AsyncConnection,
    target: _Target,
    rule: DebounceRule,
    event: dict[str, Any],
    *,
    now: datetime,
    ids: IdSource,
    dialect: str,
    events: SystemEvents,
) -> str:
    pending, run = target.pending, target.run
    if run is None:
        return await _open_run(
            conn,
            target,
            event,
            available_at=now + rule.period,
            now=now,
            ids=ids,
            dialect=dialect,
            events=events,
        )
    due = now + rule.period
    if rule.max_wait is not None:
        due = min(due, pending.first_at + rule.max_wait)
    values: dict[str, Any] = {"available_at": due, "updated_at": now}
    if due > now:
        values["ticketed_sequence"] = None  # a ticket for the old due time finds it not due
    else:
        events.due = True  # max_wait is over: due now
    if _order(event) > _order(run.input["event"]):
        values |= {"input": {**run.input, "event": event}, "event_id": event["id"]}
    await update_run(conn, run.id, **values)
    await _record(conn, target.function.id, event, run.id, position=pending.size, keep=False, now=now)
    await conn.execute(
        sa.update(pending_runs).where(target.where).values(size=pending.size + 1, updated_at=now)
    )
    return str(run.id)


async def _batch(
    conn: AsyncConnection,
    target: _Target,
    rule: BatchingRule,
    event: dict[str, Any],
    *,
    now: datetime,
    ids: IdSource,
    dialect: str,
    events: SystemEvents,
) -> str:
    size = len(json.dumps(event, separators=(",", ":")))
    pending, run = target.pending, target.run
    if run is not None and pending.bytes + size > MAX_BATCH_BYTES:
        await _close_batch(conn, run, now=now, events=events)  # this event would overfill it
        run = None
    if run is None:
        full = rule.max_size <= 1
        return await _open_run(
            conn,
            target,
            event,
            available_at=now if full else now + rule.timeout,
            batch_bytes=size,
            closed=full,
            now=now,
            ids=ids,
            dialect=dialect,
            events=events,
        )
    await _record(conn, target.function.id, event, run.id, position=pending.size, keep=True, now=now)
    if pending.size + 1 >= rule.max_size:
        await _close_batch(conn, run, now=now, events=events)
        await _detach(conn, target.where, now=now)
    else:
        await conn.execute(
            sa.update(pending_runs)
            .where(target.where)
            .values(size=pending.size + 1, bytes=pending.bytes + size, updated_at=now)
        )
    return str(run.id)


async def _open_run(
    conn: AsyncConnection,
    target: _Target,
    event: dict[str, Any],
    *,
    available_at: datetime,
    now: datetime,
    ids: IdSource,
    dialect: str,
    events: SystemEvents,
    batch_bytes: int | None = None,
    closed: bool = False,
) -> str:
    """A new pending run with `event` as its first; the key's row points at it (or is deleted when
    the run is `closed`: a batch of one)."""
    batched = batch_bytes is not None
    run_id, created = await create_run(
        conn,
        target.function,
        event,
        now=now,
        ids=ids,
        dialect=dialect,
        events=events,
        available_at=available_at,
        extra_input={BATCHED: True} if batched else None,
    )
    if not created:
        # The event has a run already (`run_of_event` saw none, so it came from a trigger that ran
        # under another key, such as one of an older version): leave the key's row as it was.
        return run_id
    await _record(conn, target.function.id, event, run_id, position=0, keep=batched, now=now)
    if closed:
        await _detach(conn, target.where, now=now)
    else:
        await conn.execute(
            sa.update(pending_runs)
            .where(target.where)
            .values(run_id=run_id, first_at=now, size=1, bytes=batch_bytes or 0, updated_at=now)
        )
    return run_id


async def _detach(conn: AsyncConnection, where: sa.ColumnElement[bool], *, now: datetime) -> None:
    """The key has no open run any more (its batch is full): the next event opens one. The row
    stays (the sweeper removes it later): deleting it here would make every trigger waiting for its
    lock find it gone and start over."""
    await conn.execute(
        sa.update(pending_runs).where(where).values(run_id=None, size=0, bytes=0, updated_at=now)
    )


async def _close_batch(
    conn: AsyncConnection, run: sa.Row[Any], *, now: datetime, events: SystemEvents
) -> None:
    """Make a batch run due now (it is full)."""
    if run.available_at is None or run.available_at > now:
        await update_run(conn, run.id, available_at=now, updated_at=now)
    events.due = True


async def _lock_pending(
    conn: AsyncConnection,
    where: sa.ColumnElement[bool],
    function_id: str,
    control: str,
    key_hash: str,
    *,
    now: datetime,
    dialect: str,
) -> _Pending:
    """Lock the key's row, inserting one without a run when there is none."""
    query = sa.select(
        pending_runs.c.run_id, pending_runs.c.first_at, pending_runs.c.size, pending_runs.c.bytes
    ).where(where)
    if dialect == "postgresql":
        query = query.with_for_update()
    # The sweeper may delete the row between our insert and our lock: then insert again.
    for _ in range(3):
        await conn.execute(
            insert_or_ignore(
                pending_runs,
                {
                    "function_id": function_id,
                    "control": control,
                    "key_hash": key_hash,
                    "run_id": None,
                    "first_at": now,
                    "size": 0,
                    "bytes": 0,
                    "updated_at": now,
                },
                dialect=dialect,
                conflict_columns=["function_id", "control", "key_hash"],
            )
        )
        row = (await conn.execute(query)).first()
        if row is not None:
            return _Pending(run_id=row.run_id, first_at=row.first_at, size=row.size, bytes=row.bytes)
    raise RuntimeError(f"pending run row of function {function_id!r} vanished while being locked")


async def _record(
    conn: AsyncConnection,
    function_id: str,
    event: dict[str, Any],
    run_id: str,
    *,
    position: int,
    keep: bool,
    now: datetime,
) -> None:
    """Note that the run took the event in (with the event itself for a batch)."""
    await conn.execute(
        accumulated_events.insert().values(
            function_id=function_id,
            event_id=event["id"],
            run_id=run_id,
            position=position,
            event=event if keep else None,
            created_at=now,
        )
    )


def _open(run: sa.Row[Any]) -> bool:
    """Whether a run can still take events in: queued, not leased, never started."""
    return bool(run.status == "queued" and run.lease_token is None and run.started_at is None)


def _order(event: dict[str, Any]) -> tuple[datetime, int, str]:
    """Which of two events is newer: timestamp, then stream sequence, then id."""
    when = _EARLIEST
    timestamp = event.get("timestamp")
    if isinstance(timestamp, str):
        parsed = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
        when = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return when, int(event.get("sequence") or 0), str(event.get("id", ""))
