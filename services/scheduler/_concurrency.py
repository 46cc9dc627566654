"""Concurrency limits: at most `limit` runs of a function execute at once, per key or in all.

A function declares any number of limits, each with an optional CEL key over `event` (no key: one
limit over all its runs). When a run is created each limit gives it a key; the run keeps them in its
input (`input["concurrency"]`, with the limit, so a later registration never changes how runs already
queued are limited) and, while it is active, as rows of `run_concurrency_keys`.

A run holds a slot of each of its keys while it is leased: from the moment a worker is handed it
until it completes, fails, is cancelled, suspends (sleep, wait for an event, invoke) or its worker
goes away (the lease lapses or is released). Counting leased runs from the runs table, rather than
keeping counters, means no code path can forget to give a slot back: every way a run stops executing
already clears its lease.

Exactness across scheduler replicas: a claim locks each key it is about to take a slot of (a
transaction-scoped advisory lock on Postgres, in key order so claims cannot deadlock; SQLite has one
writer at a time), then counts that key's leased runs. The count is a fresh statement taken after the
lock, so under READ COMMITTED it sees every lease committed by whoever held the lock before.

Runs over a limit stay queued, in their order, and are claimed as slots free. A claim that fetched
only runs of full keys looks again past them (`not_in_full_keys`), so one busy customer never starves
another's runs. Pull delivery tickets a limited run only while its keys have room, counting runs
ticketed but not yet leased (`occupied_slots`, `ticket_capacity`); a ticket whose run finds its key
full at lease time is dropped and the run un-ticketed, to be ticketed again when a slot frees.

The counts read only leased runs and runs with an outstanding ticket (two partial indexes of the
runs table), never a key's whole queue, so they cost the same however long the backlog.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ironflow.services.core.cel import Expression, compile_expression
from ironflow.services.core.storage import insert_or_ignore, run_concurrency_keys, runs
from ironflow.v1 import functions_pb2

from ._admission import event_key

# Built once: a new run's keys are inserted with every limited run created.
_INSERT_KEYS = run_concurrency_keys.insert()


@dataclass(frozen=True)
class ConcurrencyLimit:
    limit: int
    # The key expression as written ("" for a limit over all runs): with the function id and the
    # key's value it names the slots.
    scope: str
    key: Expression | None


@dataclass(frozen=True)
class RunKey:
    """One slot pool a run belongs to: the hashed (function, limit, key value), and that limit."""

    key: str
    limit: int

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "limit": self.limit}


def compile_concurrency(
    definition: functions_pb2.FunctionDefinition, *, field: str
) -> tuple[ConcurrencyLimit, ...]:
    limits = []
    for index, declared in enumerate(definition.concurrency):
        if declared.limit < 1:
            continue  # stored before validation; the registry refuses it now
        key = (
            compile_expression(declared.key, field=f"{field}.concurrency[{index}].key")
            if declared.key
            else None
        )
        limits.append(ConcurrencyLimit(limit=declared.limit, scope=declared.key, key=key))
    return tuple(limits)


def run_keys(
    function_id: str, limits: Sequence[ConcurrencyLimit], variables: Mapping[str, Any]
) -> list[RunKey]:
    """The keys a run of the function takes for an event (`variables` as trigger conditions see
    them). A key expression that fails or gives null or "" puts the run in that limit's shared
    empty key, as rate limits do. Two limits naming the same pool keep the smaller limit."""
    keys: dict[str, int] = {}
    for rule in limits:
        value_hash = event_key(rule.key, variables)
        pool = hashlib.sha256(f"{function_id}\0{rule.scope}\0{value_hash}".encode()).hexdigest()
        keys[pool] = min(keys.get(pool, rule.limit), rule.limit)
    return [RunKey(key=key, limit=limit) for key, limit in sorted(keys.items())]


def keys_of(run_input: Mapping[str, Any] | None) -> list[RunKey]:
    """The keys a run was created with (none for a run of a function without limits)."""
    stored = (run_input or {}).get("concurrency") or []
    return [RunKey(key=str(item["key"]), limit=int(item["limit"])) for item in stored]


async def hold_keys(
    conn: AsyncConnection,
    run_id: str,
    function_id: str,
    keys: Iterable[RunKey],
    *,
    dialect: str,
    new_run: bool = False,
) -> None:
    """Enter an active run's keys: a new run's (`new_run`: it cannot have rows yet, so one plain
    INSERT of them all), or a resumed one's, whose rows went when it ended."""
    rows = [
        {"run_id": run_id, "key": key.key, "function_id": function_id, "limit": key.limit} for key in keys
    ]
    if not rows:
        return
    if new_run:
        await conn.execute(_INSERT_KEYS, rows)
        return
    for row in rows:
        await conn.execute(
            insert_or_ignore(run_concurrency_keys, row, dialect=dialect, conflict_columns=["run_id", "key"])
        )


async def drop_keys(conn: AsyncConnection, run_id: str) -> None:
    """An ended run leaves its keys' rows (its slots freed already when its lease was cleared)."""
    await conn.execute(sa.delete(run_concurrency_keys).where(run_concurrency_keys.c.run_id == run_id))


def _leased() -> sa.ColumnElement[bool]:
    """Runs a worker holds (`ix_runs_leased` covers them)."""
    return sa.and_(runs.c.lease_token.is_not(None), runs.c.status == "running")


def _ticketed(now: datetime) -> sa.ColumnElement[bool]:
    """Due runs with a job ticket no gateway has used yet (`ix_runs_ticket_outstanding` covers them)."""
    return sa.and_(
        runs.c.lease_token.is_(None),
        runs.c.ticketed_sequence == runs.c.execution_sequence,
        runs.c.status.in_(("queued", "running")),
        runs.c.available_at <= now,
    )


async def _holders(
    conn: AsyncConnection,
    holding: sa.ColumnElement[bool],
    function_ids: Iterable[str],
    keys: Sequence[str] | None = None,
) -> dict[str, tuple[int, int]]:
    """key -> (its limit, how many runs in `holding` have it), for these functions' keys (or only
    `keys`). Driven from the runs side: the few leased or ticketed runs, never a key's whole queue."""
    query = (
        sa.select(run_concurrency_keys.c.key, sa.func.min(run_concurrency_keys.c.limit), sa.func.count())
        .select_from(runs.join(run_concurrency_keys, run_concurrency_keys.c.run_id == runs.c.id))
        .where(holding, runs.c.function_id.in_(sorted(set(function_ids))))
        .group_by(run_concurrency_keys.c.key)
    )
    if keys is not None:
        query = query.where(run_concurrency_keys.c.key.in_(list(keys)))
    return {key: (int(limit), int(count)) for key, limit, count in (await conn.execute(query)).all()}


async def leased_counts(
    conn: AsyncConnection, keys: Sequence[str], function_ids: Iterable[str]
) -> Counter[str]:
    """How many leased runs (of these functions) hold a slot of each key."""
    if not keys:
        return Counter()
    held = await _holders(conn, _leased(), function_ids, keys)
    return Counter({key: count for key, (_, count) in held.items()})


async def lock_keys(
    conn: AsyncConnection, keys: Iterable[str], *, dialect: str, wait: bool = True
) -> set[str]:
    """Serialise slot-taking per key across replicas until this transaction ends (Postgres; SQLite
    has one writer at a time already); returns the keys locked. Waiting, in key order, so two claims
    never wait on each other in turn; a claim that already holds locks takes more only if they are
    free (`wait=False`), for the same reason."""
    wanted = sorted(set(keys))
    if dialect != "postgresql":
        return set(wanted)
    locked = set()
    for key in wanted:
        lock_id = int.from_bytes(bytes.fromhex(key[:16]), "big", signed=True)
        if wait:
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_id)))
        elif not (await conn.execute(sa.select(sa.func.pg_try_advisory_xact_lock(lock_id)))).scalar():
            continue
        locked.add(key)
    return locked


async def admit_claims(
    conn: AsyncConnection,
    candidates: Sequence[sa.Row[Any]],
    *,
    limit: int,
    dialect: str,
    counted: Sequence[sa.Row[Any]] = (),
    wait_for_locks: bool = True,
) -> tuple[list[sa.Row[Any]], list[sa.Row[Any]], set[str]]:
    """Of locked due runs (in dispatch order), those that may be leased now without any of their
    keys going over its limit, at most `limit`: (admitted, refused, the keys found full). `counted`
    are runs this claim admitted already (not leased yet, but their slots are taken)."""
    keyed = {row.id: keys_of(row.input) for row in candidates}
    wanted = sorted({key.key for keys in keyed.values() for key in keys})
    locked = await lock_keys(conn, wanted, dialect=dialect, wait=wait_for_locks)
    held = await leased_counts(conn, sorted(locked), {row.function_id for row in candidates})
    for row in counted:
        for key in keys_of(row.input):
            held[key.key] += 1
    admitted: list[sa.Row[Any]] = []
    refused: list[sa.Row[Any]] = []
    full: set[str] = set()
    for row in candidates:
        if len(admitted) >= limit:
            break
        keys = keyed[row.id]
        blocked = [key.key for key in keys if key.key not in locked or held[key.key] >= key.limit]
        if blocked:
            refused.append(row)
            full.update(blocked)
            continue
        for key in keys:
            held[key.key] += 1
            if held[key.key] >= key.limit:
                full.add(key.key)
        admitted.append(row)
    return admitted, refused, full


def not_in_full_keys(full: Iterable[str]) -> sa.ColumnElement[bool]:
    """Runs that have no key among `full` (to look past runs that cannot be leased now)."""
    return ~sa.exists().where(
        run_concurrency_keys.c.run_id == runs.c.id, run_concurrency_keys.c.key.in_(sorted(set(full)))
    )


async def ticket_capacity(
    conn: AsyncConnection,
    candidates: Sequence[Any],
    function_ids: Collection[str],
    taken: Mapping[str, tuple[int, int]],
) -> list[Any]:
    """Of due, unticketed runs (in dispatch order), those to ticket now: each key gets as many
    tickets as it has slots not `taken` (`occupied_slots`). Approximate (nothing is locked); the
    claim decides exactly."""
    limited = [row.id for row in candidates if row.function_id in function_ids]
    if not limited:
        return list(candidates)
    rows = await conn.execute(
        sa.select(
            run_concurrency_keys.c.run_id, run_concurrency_keys.c.key, run_concurrency_keys.c.limit
        ).where(run_concurrency_keys.c.run_id.in_(limited))
    )
    keys: dict[str, list[RunKey]] = {}
    for run_id, key, limit in rows.all():
        keys.setdefault(run_id, []).append(RunKey(key=key, limit=int(limit)))
    counts = Counter({key: count for key, (_, count) in taken.items()})
    chosen = []
    for row in candidates:
        run_keys_ = keys.get(row.id, [])
        if any(counts[key.key] >= key.limit for key in run_keys_):
            continue
        for key in run_keys_:
            counts[key.key] += 1
        chosen.append(row)
    return chosen


async def occupied_slots(
    conn: AsyncConnection, function_ids: Sequence[str], *, now: datetime
) -> dict[str, tuple[int, int]]:
    """key -> (limit, slots taken) for these functions' keys, counting leased runs and due runs
    holding a job ticket a gateway has not used yet. Two queries rather than one with OR, so each
    reads its own small index."""
    taken = await _holders(conn, _leased(), function_ids)
    for key, (limit, count) in (await _holders(conn, _ticketed(now), function_ids)).items():
        known_limit, known = taken.get(key, (limit, 0))
        taken[key] = (min(known_limit, limit), known + count)
    return taken
