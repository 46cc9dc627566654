"""Pull delivery: a job ticket on the stream for every due run, taken by worker-gateways through a
consumer group.

Postgres says which runs are due; the stream decides which gateway replica hands each one to a
worker. Every pull function has a stream `<prefix>:jobs:<function_id>`; the gateways read it as one
consumer group (`gateways`), so each ticket goes to one gateway, and a ticket a gateway took but never
finished (it crashed) is claimed by another once idle. A ticket names a run and the execution
sequence it was issued for; the gateway leases exactly that run if it is still due, so a duplicate or
stale ticket costs one lookup and is dropped.

A run is ticketed when its `ticketed_sequence` differs from its `execution_sequence`: every change
that makes a run due again (a lease lapsing, a release, a retry, a resume) moves the sequence, so no
code path has to remember to ticket. The issuer claims such rows with SKIP LOCKED (scheduler
replicas never issue the same run twice), appends the tickets, then marks the rows, in one
transaction: a crash in between leaves a duplicate ticket, never a missing one.

The reconciler rebuilds what Redis may have lost. The tickets' "epoch" is an entry on its own
stream: when it is missing or changed (FLUSHALL, a Redis restart without persistence, a failover that
lost writes), every due run that counted as ticketed is ticketed again. Tickets outstanding longer
than `stale_after` (partial loss, or no worker at all for that function) are re-issued too; the
duplicates that leaves behind are dropped by the gateways.

The same rule bounds the ticket streams. A ticket older than twice `stale_after` is dead weight:
taken and acknowledged, or its run re-issued under a newer ticket long ago. So the reconciler notes
each stream's newest ticket every round and trims what preceded a note that old. Without it the
streams keep `maxlen` tickets each, which the in-process stream holds in the server's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict, deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ironflow.services.core.ids import Clock, random_id, utc_now
from ironflow.services.core.signals import RunNotices
from ironflow.services.core.storage import Database, UTCDateTime, runs
from ironflow.services.core.streams import Stream
from ironflow.services.core.tasks import stop_task

from ._catalog import FunctionCatalog
from ._concurrency import not_in_full_keys, occupied_slots, ticket_capacity
from ._priority import queue_order
from ._store import DISPATCHABLE_STATUSES

log = logging.getLogger("ironflow.scheduler")

JOBS_GROUP = "gateways"


def jobs_key(prefix: str, function_id: str) -> str:
    return f"{prefix}:jobs:{function_id}"


def epoch_key(prefix: str) -> str:
    return f"{prefix}:jobs-epoch"


@dataclass(frozen=True, kw_only=True)
class TicketSettings:
    stream_prefix: str = "ironflow"
    # Runs ticketed per transaction.
    batch: int = 500
    # Tickets kept per function stream (approximate trim); more outstanding than that are re-issued
    # by the stale rule.
    maxlen: int = 100_000
    # Due runs are looked for at least this often (another replica may have made some due).
    interval: timedelta = timedelta(seconds=1)
    reconcile_interval: timedelta = timedelta(seconds=5)
    stale_after: timedelta = timedelta(seconds=60)


class JobTickets:
    def __init__(
        self,
        *,
        db: Database,
        stream: Stream,
        catalog: FunctionCatalog,
        notices: RunNotices,
        settings: TicketSettings | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._db = db
        self._stream = stream
        self._catalog = catalog
        self._notices = notices
        self._settings = settings or TicketSettings()
        self._clock = clock
        self._wake = asyncio.Event()
        self._epoch: str | None = None
        # Per ticket stream: (when, its newest ticket id then), oldest first (see `trim_old_tickets`).
        self._newest_seen: dict[str, deque[tuple[datetime, str]]] = defaultdict(deque)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._issue_forever(), name="scheduler-tickets"),
            asyncio.create_task(self._reconcile_forever(), name="scheduler-reconciler"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            await stop_task(task)
        self._tasks = []

    def runs_due(self) -> None:
        """Something committed here made runs due: ticket them now rather than on the next round."""
        self._wake.set()

    # -- issuing ----------------------------------------------------------------------------

    async def issue(self) -> tuple[int, datetime | None]:
        """Ticket due runs of pull functions; returns (issued, when the next unticketed run is due)."""
        functions = [function for function in await self._catalog.functions() if function.mode == "pull"]
        if not functions:
            return 0, None
        pull = [function.id for function in functions]
        limited = [function.id for function in functions if function.concurrency]
        prioritised = any(function.priority is not None for function in functions)
        now = self._clock()
        settings = self._settings

        async def work(conn: AsyncConnection) -> tuple[int, datetime | None]:
            found = await _unticketed(
                conn, self._db.dialect, pull, now=now, limit=settings.batch, prioritised=prioritised
            )
            due = found
            if limited and any(row.function_id in limited for row in found):
                # Runs of full concurrency keys get no ticket until a slot frees (`_concurrency.py`):
                # look again past them, then ticket each key up to its free slots.
                taken = await occupied_slots(conn, limited, now=now)
                full = {key for key, (limit, count) in taken.items() if count >= limit}
                if full:
                    found = await _unticketed(
                        conn,
                        self._db.dialect,
                        pull,
                        now=now,
                        limit=settings.batch,
                        prioritised=prioritised,
                        full=full,
                    )
                due = await ticket_capacity(conn, found, limited, taken)
            if due:
                by_function: dict[str, list[dict[str, str]]] = defaultdict(list)
                for row in due:
                    by_function[row.function_id].append(
                        {"run_id": row.id, "sequence": str(row.execution_sequence)}
                    )
                for function_id, tickets in by_function.items():
                    await self._stream.append_many(
                        jobs_key(settings.stream_prefix, function_id), tickets, maxlen=settings.maxlen
                    )
                await conn.execute(
                    runs.update()
                    .where(runs.c.id.in_([row.id for row in due]))
                    .values(ticketed_sequence=runs.c.execution_sequence, ticketed_at=now)
                )
            if len(found) >= settings.batch:
                return len(due), now  # more are due: go again at once
            return len(due), await _next_unticketed_at(conn, pull, now=now)

        issued, next_at = await self._db.run(work)
        if issued:
            self._notices.work_available()
        return issued, next_at

    async def _issue_forever(self) -> None:
        interval = self._settings.interval.total_seconds()
        while True:
            self._wake.clear()
            try:
                _, next_at = await self.issue()
            except Exception:
                log.exception("issuing job tickets failed; retrying")
                next_at = None
            delay = interval
            if next_at is not None:
                delay = min(delay, max((next_at - self._clock()).total_seconds(), 0.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    # -- reconciling ------------------------------------------------------------------------

    async def reconcile(self) -> int:
        """Re-ticket due runs whose tickets Redis may have lost; returns how many."""
        key = epoch_key(self._settings.stream_prefix)
        latest = await self._stream.read_last(key, 1)
        lost = False
        if not latest:
            # No epoch: the first start ever, or the stream store lost everything.
            await self._stream.append(key, {"epoch": random_id("epoch")}, maxlen=10)
            latest = await self._stream.read_last(key, 1)
            lost = True
        epoch = latest[-1].fields.get("epoch") if latest else None
        if self._epoch is not None and epoch != self._epoch:
            lost = True
        self._epoch = epoch
        now = self._clock()
        stale_before = now - self._settings.stale_after

        async def work(conn: AsyncConnection) -> int:
            outstanding = sa.and_(
                runs.c.status.in_(DISPATCHABLE_STATUSES),
                runs.c.lease_token.is_(None),
                runs.c.ticketed_sequence.is_not(None),
                runs.c.available_at <= now,
            )
            if not lost:
                outstanding = sa.and_(outstanding, runs.c.ticketed_at < stale_before)
            result = await conn.execute(runs.update().where(outstanding).values(ticketed_sequence=None))
            return int(result.rowcount or 0)

        reset = await self._db.run(work)
        if reset:
            why = (
                "the stream store lost its data"
                if lost
                else f"tickets older than {self._settings.stale_after}"
            )
            log.warning("re-issuing job tickets for %d due runs (%s)", reset, why)
            self._wake.set()
        return reset

    async def trim_old_tickets(self) -> int:
        """Drop tickets appended before the newest one seen `2 * stale_after` ago; returns how many.

        Each scheduler replica trims by its own notes; trimming is idempotent, so replicas agree.
        """
        now = self._clock()
        horizon = now - 2 * self._settings.stale_after
        trimmed = 0
        for function in await self._catalog.functions():
            if function.mode != "pull":
                continue
            key = jobs_key(self._settings.stream_prefix, function.id)
            seen = self._newest_seen[key]
            newest = await self._stream.read_last(key, 1)
            if newest and (not seen or seen[-1][1] != newest[-1].id):
                seen.append((now, newest[-1].id))
            cutoff: str | None = None
            while seen and seen[0][0] <= horizon:
                cutoff = seen.popleft()[1]
            if cutoff is not None:
                # Everything before the cutoff goes; the cutoff ticket itself is kept (MINID semantics).
                trimmed += await self._stream.trim(key, min_id=cutoff)
        return trimmed

    async def _reconcile_forever(self) -> None:
        while True:
            try:
                await self.reconcile()
                await self.trim_old_tickets()
            except Exception:
                log.exception("reconciling job tickets failed; retrying")
            await asyncio.sleep(self._settings.reconcile_interval.total_seconds())


def _not_ticketed() -> Any:
    return sa.or_(runs.c.ticketed_sequence.is_(None), runs.c.ticketed_sequence != runs.c.execution_sequence)


async def _unticketed(
    conn: AsyncConnection,
    dialect: str,
    function_ids: Sequence[str],
    *,
    now: datetime,
    limit: int,
    prioritised: bool = False,
    full: Collection[str] = (),
) -> list[Any]:
    """Due runs without a ticket, in dispatch order, leaving out runs of the `full` concurrency keys."""
    query = sa.select(runs.c.id, runs.c.function_id, runs.c.execution_sequence).where(
        runs.c.status.in_(DISPATCHABLE_STATUSES),
        runs.c.lease_token.is_(None),
        runs.c.available_at <= now,
        runs.c.function_id.in_(list(function_ids)),
        _not_ticketed(),
    )
    if full:
        query = query.where(not_in_full_keys(full))
    query = query.order_by(queue_order(dialect) if prioritised else runs.c.available_at).limit(limit)
    if dialect == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return list((await conn.execute(query)).all())


async def _next_unticketed_at(
    conn: AsyncConnection, function_ids: Sequence[str], *, now: datetime
) -> datetime | None:
    query = sa.select(sa.type_coerce(sa.func.min(runs.c.available_at), UTCDateTime)).where(
        runs.c.status.in_(DISPATCHABLE_STATUSES),
        runs.c.lease_token.is_(None),
        runs.c.available_at > now,
        runs.c.function_id.in_(list(function_ids)),
        _not_ticketed(),
    )
    value: datetime | None = (await conn.execute(query)).scalar_one_or_none()
    return value
