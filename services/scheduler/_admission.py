"""Admission: whether an event that matches a function may start a run of it (rate limit, idempotency).

Both are decided in the transaction that creates the run, from rows every scheduler replica shares,
so they are exact however many replicas trigger at once:

- Idempotency: the key claims a row `(function, key hash)` for `window`, by INSERT ... ON CONFLICT DO
  NOTHING (a concurrent claim of the same key waits for the first to commit, then finds it), or by
  taking over an expired row with `UPDATE ... WHERE expires_at <= now` (Postgres re-checks the
  condition after waiting for a concurrent taker, so only one succeeds). A key already held means
  no run: the event is skipped as `idempotent`.
- Rate limit: a sliding log. Under the lock of the key's row (SELECT ... FOR UPDATE on Postgres;
  SQLite's BEGIN IMMEDIATE already serialises writers) admissions older than `period` are pruned and
  the rest counted (`admitted` is kept on the key row, so the check is O(1) amortised); `limit` of
  them in the last `period` means no run: the event is skipped as `rate_limited`. So, exactly, at most
  `limit` runs start per key in any window of length `period`.

  Rejected: a fixed window counter (up to twice the limit across a window boundary) and GCRA, as
  Inngest uses (one row, but `limit` per `period` is a rate with a burst of `limit`: up to
  2*limit-1 runs can start within one period). The log costs one row per run started in the last
  period, pruned as it goes, and swept once a key has been idle for a whole period.

The rate limit is decided first and only read: an event it refuses claims no idempotency key (a
retried event with the same key is not refused later as a duplicate of one that never ran), and an
event refused as a duplicate takes no place in the rate limit.

Keys. Each key is a CEL expression over `event`, evaluated with the same value rules as trigger
conditions (`cel_keys.key_text`: 1 and 1.0 are one key, "1" another). A key that cannot be evaluated
(a missing field, a type error) or gives null or "" is the empty key, one key shared by all such
events, as in Inngest; a rate limit without a key is that shared key for every event.

A replayed trigger (the sweeper re-triggering an event whose triggering did not finish) finds the
run the event already started (or joined: debounce and batching) and is admitted without counting
again. Only events go through
admission: cron ticks and invocations (`Invoke`, `step.invoke`) start their runs regardless.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ironflow.services.core.cel import CelEvaluationError, Expression, compile_expression
from ironflow.services.core.cel_keys import key_text
from ironflow.services.core.storage import (
    accumulated_events,
    idempotency_keys,
    insert_or_ignore,
    rate_limit_admissions,
    rate_limit_keys,
    runs,
)
from ironflow.v1 import functions_pb2

RATE_LIMITED = "rate_limited"
IDEMPOTENT = "idempotent"
DEFAULT_IDEMPOTENCY_WINDOW = timedelta(hours=24)
# Expired rows removed per sweeping transaction.
SWEEP_BATCH = 500


@dataclass(frozen=True)
class RateLimitRule:
    limit: int
    period: timedelta
    key: Expression | None


@dataclass(frozen=True)
class IdempotencyRule:
    key: Expression
    window: timedelta


@dataclass(frozen=True)
class AdmissionKeys:
    """The hashed keys one event has for one function's controls (None: no such control)."""

    rate_limit: str | None
    idempotency: str | None


@dataclass(frozen=True)
class Admission:
    rate_limit: RateLimitRule | None
    idempotency: IdempotencyRule | None

    def keys(self, variables: Mapping[str, Any]) -> AdmissionKeys:
        """Evaluate the keys for an event (`variables` as trigger conditions see them)."""
        rate_key = None
        if self.rate_limit is not None:
            rate_key = event_key(self.rate_limit.key, variables)
        idempotency_key = None
        if self.idempotency is not None:
            idempotency_key = event_key(self.idempotency.key, variables)
        return AdmissionKeys(rate_limit=rate_key, idempotency=idempotency_key)


def compile_admission(definition: functions_pb2.FunctionDefinition, *, field: str) -> Admission | None:
    """The function's admission controls, or None when it declares none. The registry validated them;
    a part that is out of range anyway (stored before validation) is left out."""
    rate_limit = None
    if definition.HasField("rate_limit"):
        rate = definition.rate_limit
        period = rate.period.ToTimedelta()
        if rate.limit >= 1 and period > timedelta(0):
            key = compile_expression(rate.key, field=f"{field}.rate_limit.key") if rate.key else None
            rate_limit = RateLimitRule(limit=rate.limit, period=period, key=key)
    idempotency = None
    if definition.HasField("idempotency") and definition.idempotency.key:
        settings = definition.idempotency
        window = settings.window.ToTimedelta() if settings.HasField("window") else DEFAULT_IDEMPOTENCY_WINDOW
        idempotency = IdempotencyRule(
            key=compile_expression(settings.key, field=f"{field}.idempotency.key"),
            window=window if window > timedelta(0) else DEFAULT_IDEMPOTENCY_WINDOW,
        )
    if rate_limit is None and idempotency is None:
        return None
    return Admission(rate_limit=rate_limit, idempotency=idempotency)


def event_key(expression: Expression | None, variables: Mapping[str, Any]) -> str:
    """The sha256 (hex) of the key's canonical text; the empty key when there is no expression, it
    fails (a missing field), or it gives null or ""."""
    text = ""
    if expression is not None:
        try:
            value = expression.evaluate(variables)
        except CelEvaluationError:
            value = None
        if value is not None and value != "":
            text = key_text(value) or ""
    return hashlib.sha256(text.encode()).hexdigest()


async def admit(
    conn: AsyncConnection,
    admission: Admission,
    keys: AdmissionKeys,
    *,
    function_id: str,
    event_id: str,
    now: datetime,
    dialect: str,
    accumulating: bool = False,
) -> str | None:
    """Decide whether `event_id` may start a run of `function_id`, recording the admission: None when
    it may, else why not (`rate_limited` or `idempotent`). Call in the run-creating transaction.
    `accumulating`: the function debounces or batches, so the event may have joined a run whose
    `event_id` is another event's (`accumulated_events` says)."""
    rate, rate_key = admission.rate_limit, keys.rate_limit
    admitted = 0
    if rate is not None and rate_key is not None:
        admitted = await _lock_rate_key(
            conn, function_id, rate_key, cutoff=now - rate.period, now=now, dialect=dialect
        )
    # Checked after taking the rate limit's lock: a trigger of this same event running at once (the
    # sweeper's retry) has committed its run by then, and must not be counted twice.
    replayed = await conn.execute(
        sa.select(runs.c.id).where(runs.c.event_id == event_id, runs.c.function_id == function_id)
    )
    if replayed.first() is not None:
        return None  # the event started its run already; start_run will find it
    if accumulating:
        joined = await conn.execute(
            sa.select(accumulated_events.c.run_id).where(
                accumulated_events.c.function_id == function_id, accumulated_events.c.event_id == event_id
            )
        )
        if joined.first() is not None:
            return None  # the event joined a pending run already; accumulating will find it
    if rate is not None and rate_key is not None and admitted >= rate.limit:
        return RATE_LIMITED
    idempotency = admission.idempotency
    if (
        idempotency is not None
        and keys.idempotency is not None
        and not await _claim_idempotency_key(
            conn,
            function_id,
            keys.idempotency,
            event_id=event_id,
            now=now,
            expires_at=now + idempotency.window,
            dialect=dialect,
        )
    ):
        return IDEMPOTENT
    if rate is not None and rate_key is not None:
        await _record_admission(
            conn, function_id, rate_key, event_id=event_id, now=now, period=rate.period, dialect=dialect
        )
    return None


def _key_of(table: sa.Table, function_id: str, key_hash: str) -> sa.ColumnElement[bool]:
    return sa.and_(table.c.function_id == function_id, table.c.key_hash == key_hash)


async def _lock_rate_key(
    conn: AsyncConnection, function_id: str, key_hash: str, *, cutoff: datetime, now: datetime, dialect: str
) -> int:
    """Lock the key's row (creating it), prune admissions from before `cutoff`; returns how many are
    left, the runs the key started within the period."""
    where = _key_of(rate_limit_keys, function_id, key_hash)
    row = None
    # The sweeper may delete the row between our insert and our lock (then the lock finds nothing):
    # insert again. Twice in a row would need the row to expire within this transaction.
    for _ in range(3):
        await conn.execute(
            insert_or_ignore(
                rate_limit_keys,
                {
                    "function_id": function_id,
                    "key_hash": key_hash,
                    "admitted": 0,
                    "expires_at": now,
                    "updated_at": now,
                },
                dialect=dialect,
                conflict_columns=["function_id", "key_hash"],
            )
        )
        query = sa.select(rate_limit_keys.c.admitted).where(where)
        if dialect == "postgresql":
            query = query.with_for_update()
        row = (await conn.execute(query)).first()
        if row is not None:
            break
    if row is None:
        raise RuntimeError(f"rate limit key of function {function_id!r} vanished while being locked")
    pruned = await conn.execute(
        sa.delete(rate_limit_admissions).where(
            _key_of(rate_limit_admissions, function_id, key_hash),
            rate_limit_admissions.c.admitted_at <= cutoff,
        )
    )
    admitted = max(int(row.admitted) - max(pruned.rowcount, 0), 0)
    if pruned.rowcount > 0:
        await conn.execute(sa.update(rate_limit_keys).where(where).values(admitted=admitted, updated_at=now))
    return admitted


async def _record_admission(
    conn: AsyncConnection,
    function_id: str,
    key_hash: str,
    *,
    event_id: str,
    now: datetime,
    period: timedelta,
    dialect: str,
) -> None:
    """Log one run started for the key (its row is locked by `_lock_rate_key`)."""
    logged = await conn.execute(
        insert_or_ignore(
            rate_limit_admissions,
            {"function_id": function_id, "key_hash": key_hash, "event_id": event_id, "admitted_at": now},
            dialect=dialect,
            conflict_columns=["function_id", "key_hash", "event_id"],
        ).returning(rate_limit_admissions.c.event_id)
    )
    counted = 1 if logged.first() is not None else 0  # 0: the event was admitted once already
    await conn.execute(
        sa.update(rate_limit_keys)
        .where(_key_of(rate_limit_keys, function_id, key_hash))
        .values(admitted=rate_limit_keys.c.admitted + counted, expires_at=now + period, updated_at=now)
    )


async def _claim_idempotency_key(
    conn: AsyncConnection,
    function_id: str,
    key_hash: str,
    *,
    event_id: str,
    now: datetime,
    expires_at: datetime,
    dialect: str,
) -> bool:
    """True when the key was free (never claimed, or its window is over) and is now held by the event
    (or was already: a trigger of this same event ran at once and has committed its run by now)."""
    values = {"event_id": event_id, "expires_at": expires_at, "created_at": now}
    # A second round only when the sweeper deleted the expired row between our insert and update.
    for _ in range(3):
        inserted = await conn.execute(
            insert_or_ignore(
                idempotency_keys,
                {"function_id": function_id, "key_hash": key_hash, **values},
                dialect=dialect,
                conflict_columns=["function_id", "key_hash"],
            ).returning(idempotency_keys.c.key_hash)
        )
        if inserted.first() is not None:
            return True
        taken_over = await conn.execute(
            sa.update(idempotency_keys)
            .where(_key_of(idempotency_keys, function_id, key_hash), idempotency_keys.c.expires_at <= now)
            .values(**values)
            .returning(idempotency_keys.c.key_hash)
        )
        if taken_over.first() is not None:
            return True
        holder = await conn.execute(
            sa.select(idempotency_keys.c.event_id).where(_key_of(idempotency_keys, function_id, key_hash))
        )
        held_by = holder.scalar_one_or_none()
        if held_by is not None:
            return bool(held_by == event_id)
    return False


async def sweep_admissions(conn: AsyncConnection, *, now: datetime) -> int:
    """Delete up to SWEEP_BATCH expired idempotency keys and idle rate limit keys (with their logs);
    returns how many rows went."""
    expired_keys = (
        sa.select(idempotency_keys.c.function_id, idempotency_keys.c.key_hash)
        .where(idempotency_keys.c.expires_at <= now)
        .limit(SWEEP_BATCH)
    )
    # The condition is repeated outside the subquery: Postgres re-checks it on a row a trigger
    # renewed meanwhile, so a key taken over while we waited is kept.
    swept = await conn.execute(
        sa.delete(idempotency_keys).where(
            sa.tuple_(idempotency_keys.c.function_id, idempotency_keys.c.key_hash).in_(expired_keys),
            idempotency_keys.c.expires_at <= now,
        )
    )
    removed = max(swept.rowcount, 0)
    idle_keys = (
        sa.select(rate_limit_keys.c.function_id, rate_limit_keys.c.key_hash)
        .where(rate_limit_keys.c.expires_at <= now)
        .limit(SWEEP_BATCH)
    )
    idle = (
        await conn.execute(
            sa.delete(rate_limit_keys)
            .where(
                sa.tuple_(rate_limit_keys.c.function_id, rate_limit_keys.c.key_hash).in_(idle_keys),
                rate_limit_keys.c.expires_at <= now,
            )
            .returning(rate_limit_keys.c.function_id, rate_limit_keys.c.key_hash)
        )
    ).all()
    for function_id, key_hash in idle:
        # Every admission of an idle key is older than its period (its key row expired).
        await conn.execute(
            sa.delete(rate_limit_admissions).where(_key_of(rate_limit_admissions, function_id, key_hash))
        )
    return removed + len(idle)
