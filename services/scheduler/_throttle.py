"""Throttle: when a run an event starts may begin, so that a function's runs start no faster than
`limit` per `period` per key. Excess runs are delayed, never dropped (a rate limit drops them).

The rule is GCRA (the generic cell rate algorithm) in its scheduling form. With the interval
`I = period / limit` (rounded up to a whole microsecond) and the tolerance `burst * I`, each key keeps
one time, `tat` (its theoretical arrival time: when the next run could start with no burst to spend).
A run of the key triggered at `now` gets

    start = max(now, tat - burst * I)        and the key moves on to    tat = max(tat, now) + I

so `tat` advances by at least `I` per run, and every run starts at least `I` after the start of the
run before it minus the tolerance. Hence, exactly:

- In any window `[t, t + period)` at most `limit + burst` runs of one key are scheduled to start
  (for n runs in such a window, `(n - 1) * I - burst * I < period <= limit * I`). With the default
  `burst = 0` that is `limit` per period, evenly spaced `I` apart.
- After a quiet spell (once `tat` has passed) `burst + 1` runs may start at once; the rest follow one
  every `I`. The key has fully recovered once `tat <= now`.
- Per key, runs are released in the order they were triggered (from one replica; replicas whose
  triggers race are ordered by who took the key's lock first), and no run is dropped.

The schedule is the run's `available_at`: the run is created `queued` and the existing dispatch (job
tickets for pull workers, the push dispatcher) hands it out once that time has come. So the bound
holds for the times runs are *released*; a run starts when a worker takes it, at or after that time
(later when no worker is free, so runs held up by busy or absent workers can start closer together).

Exact across replicas: the key's row is locked in the transaction that creates the run (insert or
ignore, then SELECT ... FOR UPDATE on Postgres; SQLite's BEGIN IMMEDIATE serialises writers), and the
argument above needs only that each run sees the `tat` the previous one left, not that the replicas'
clocks agree. A replayed trigger (the sweeper re-triggering an event whose triggering did not finish)
finds the run the event already started, after taking the lock, and takes no second slot.

Keys are CEL over `event`, evaluated like rate limit keys (`_admission.event_key`): a key that fails or
is null or "" is the one shared empty key, as is a throttle without a key. Only events are throttled:
cron ticks and invocations (`Invoke`, `step.invoke`) start at once, as they skip admission. A retry of
a throttled run is not throttled again (it is the same run), and a queued run that is cancelled keeps
the slot it was given.

Rejected: `burst` as Inngest's docs describe it (`limit + burst` runs at once, after which up to
`2 * limit + burst - 1` can start within one period, so `limit` per period would be no bound), and
applying the throttle when workers lease runs (exact at the real start, but the lease query is a
batched SKIP LOCKED claim across functions, and a per-key lock there would serialise every lease).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ironflow.services.core.cel import Expression, compile_expression
from ironflow.services.core.storage import insert_or_ignore, runs, throttle_keys
from ironflow.v1 import functions_pb2

from ._admission import SWEEP_BATCH, event_key

# A key's row is deleted this long after its schedule ran out, not at once: a trigger that read its
# clock before the sweep (or a replica whose clock is behind) would otherwise start afresh from a time
# before the deleted `tat`, which could let a run start early.
IDLE_GRACE = timedelta(minutes=5)
# The registry's bounds (here only to leave out values stored before they were checked).
MAX_THROTTLE_PERIOD = timedelta(days=7)
MAX_THROTTLE_BURST = 100_000

_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class ThrottleRule:
    limit: int
    period: timedelta
    burst: int
    key: Expression | None

    @property
    def interval(self) -> timedelta:
        """`period / limit`, rounded up: rounding down would let `limit + burst + 1` runs into a period."""
        microseconds = self.period // _MICROSECOND
        return timedelta(microseconds=-(-microseconds // self.limit))

    def key_of(self, variables: Mapping[str, Any]) -> str:
        """The hashed key of an event (`variables` as trigger conditions see them)."""
        return event_key(self.key, variables)

    def schedule(self, tat: datetime, now: datetime) -> tuple[datetime, datetime]:
        """GCRA: (when a run triggered at `now` starts, the key's `tat` after it)."""
        interval = self.interval
        tolerance = interval * self.burst
        # Compared as a difference: `tat - tolerance` could leave datetime's range.
        start = tat - tolerance if tat - now > tolerance else now
        return start, max(tat, now) + interval


def compile_throttle(definition: functions_pb2.FunctionDefinition, *, field: str) -> ThrottleRule | None:
    """The function's throttle, or None. The registry validated it; one stored before validation
    with a limit or period out of range is left out, and its burst is clamped."""
    if not definition.HasField("throttle"):
        return None
    throttle = definition.throttle
    period = throttle.period.ToTimedelta()
    if throttle.limit < 1 or not timedelta(0) < period <= MAX_THROTTLE_PERIOD:
        return None
    return ThrottleRule(
        limit=throttle.limit,
        period=period,
        burst=min(max(throttle.burst, 0), MAX_THROTTLE_BURST),
        key=compile_expression(throttle.key, field=f"{field}.throttle.key") if throttle.key else None,
    )


async def throttle_start(
    conn: AsyncConnection,
    rule: ThrottleRule,
    key_hash: str,
    *,
    function_id: str,
    event_id: str,
    now: datetime,
    dialect: str,
) -> datetime:
    """When the run `event_id` starts of `function_id` may begin (its `available_at`), taking its slot
    in the key's schedule. Call in the run-creating transaction, before the run is created."""
    tat = await _lock_key(conn, function_id, key_hash, now=now, dialect=dialect)
    # Checked under the key's lock: a trigger of this same event running at once (the sweeper's
    # retry) has committed its run by now, and must not take a second slot.
    replayed = await conn.execute(
        sa.select(runs.c.id).where(runs.c.event_id == event_id, runs.c.function_id == function_id)
    )
    if replayed.first() is not None:
        return now  # start_run finds the run; its schedule stands
    start, next_tat = rule.schedule(tat, now)
    await conn.execute(
        sa.update(throttle_keys)
        .where(throttle_keys.c.function_id == function_id, throttle_keys.c.key_hash == key_hash)
        .values(tat=next_tat, updated_at=now)
    )
    return start


async def _lock_key(
    conn: AsyncConnection, function_id: str, key_hash: str, *, now: datetime, dialect: str
) -> datetime:
    """Lock the key's row, creating it (a new key is one whose schedule is free from `now`); its tat."""
    where = sa.and_(throttle_keys.c.function_id == function_id, throttle_keys.c.key_hash == key_hash)
    # The sweeper may delete the row between our insert and our lock (then the lock finds nothing):
    # insert again. Twice in a row would need the row to go idle within this transaction.
    for _ in range(3):
        await conn.execute(
            insert_or_ignore(
                throttle_keys,
                {"function_id": function_id, "key_hash": key_hash, "tat": now, "updated_at": now},
                dialect=dialect,
                conflict_columns=["function_id", "key_hash"],
            )
        )
        query = sa.select(throttle_keys.c.tat).where(where)
        if dialect == "postgresql":
            query = query.with_for_update()
        tat: datetime | None = (await conn.execute(query)).scalar_one_or_none()
        if tat is not None:
            return tat
    raise RuntimeError(f"throttle key of function {function_id!r} vanished while being locked")


async def sweep_throttles(conn: AsyncConnection, *, now: datetime) -> int:
    """Delete up to SWEEP_BATCH keys whose schedule ran out `IDLE_GRACE` ago; returns how many."""
    cutoff = now - IDLE_GRACE
    idle = (
        sa.select(throttle_keys.c.function_id, throttle_keys.c.key_hash)
        .where(throttle_keys.c.tat <= cutoff)
        .limit(SWEEP_BATCH)
    )
    # The condition is repeated outside the subquery: Postgres re-checks it on a row a trigger moved
    # on meanwhile, so a key in use again is kept.
    swept = await conn.execute(
        sa.delete(throttle_keys).where(
            sa.tuple_(throttle_keys.c.function_id, throttle_keys.c.key_hash).in_(idle),
            throttle_keys.c.tat <= cutoff,
        )
    )
    return max(swept.rowcount, 0)
