"""Cron triggers: every scheduler replica fires due ticks, and each tick starts one run, once.

State lives in `cron_schedules`: one row per (function, schedule, zone) of the active functions, with
the next tick not yet handled (`next_at`, UTC). Each round, a replica

1. syncs the rows with its catalog when the catalog's cron triggers changed (and every
   `resync_interval` as a backstop): a new schedule gets a row starting at its first tick after now,
   so registering never fires a burst of past ticks; rows of schedules that are gone, and of
   functions paused or deleted, are dropped (re-activating starts again from the next tick);
2. reads when the next tick is due and, once one is, claims the due rows (`FOR UPDATE SKIP LOCKED`
   on Postgres; on SQLite `BEGIN IMMEDIATE` serialises writers) and in the same transaction starts
   each tick's run and moves `next_at` past now. A replica that finds a row locked skips it, one that
   reads it after the commit finds it no longer due. The tick's event id is derived from (function,
   scheduled time) and runs are unique per (event, function), so even a tick handled twice (a row
   dropped and added again while two replicas' catalogs disagreed for a moment) starts one run, and
   two schedules of one function that meet at the same instant start one run between them;
3. sleeps until the next tick is due, at most `interval`.

Missed ticks. A tick is on time when it is handled within `grace` of its scheduled time (several
rounds, so a slow transaction or a restart of a few seconds is not downtime). When the latest due
tick is older than that, no scheduler was running at the time: it and any earlier missed ticks are
skipped, unless the trigger says `catch_up`, which fires the latest missed tick (only that one).

The run's event is `system.cron.<function_id>` (namespace `system`) with the scheduled time in its
data. Like an invoked run's event it is kept with the run, not in the events table (ingest owns that
table, and a tick is not something a client emitted); it is announced on the firehose, with the same
id, when its run is created.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ironflow.services.core.cron import CronSchedule
from ironflow.services.core.ids import Clock, IdSource, random_id, utc_now
from ironflow.services.core.storage import Database, UTCDateTime, cron_schedules, insert_or_ignore
from ironflow.services.core.tasks import stop_task

from ._catalog import CompiledFunction, CronTrigger, FunctionCatalog
from ._invocation import create_run
from ._system_events import SystemEvents

log = logging.getLogger("ironflow.scheduler")

CRON_EVENT_PREFIX = "system.cron."

# (function id, schedule, zone): one row of `cron_schedules`, one cron trigger of the catalog.
Key = tuple[str, str, str]
# Publishes what a committed transaction announced (the scheduler's `_after_commit`).
AfterCommit = Callable[[SystemEvents], Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class CronSettings:
    # The longest a replica sleeps between two looks at the schedules.
    interval: timedelta = timedelta(seconds=1)
    # A tick handled later than this after its scheduled time counts as missed.
    grace: timedelta = timedelta(seconds=10)
    # How often the rows are synced with the catalog even when it did not change.
    resync_interval: timedelta = timedelta(seconds=30)
    # Due schedules handled per transaction.
    batch: int = 100


@dataclass(frozen=True)
class TickDecision:
    # The tick to start a run for (None: skip).
    fire_at: datetime | None
    # Earlier ticks were skipped (missed), or `fire_at` itself is a missed tick being caught up.
    missed: bool
    # The tick to look at next (None: the schedule never fires again).
    next_at: datetime | None


def decide(
    schedule: CronSchedule, *, due_at: datetime, now: datetime, grace: timedelta, catch_up: bool
) -> TickDecision:
    """What to do with a schedule whose next tick, `due_at`, has come."""
    latest = due_at
    following = schedule.next_after(due_at)
    if following is not None and following <= now:
        # More than one tick is due: nobody was looking. Only the latest can still be on time.
        latest = max(schedule.latest_at_or_before(now) or following, following)
    next_at = schedule.next_after(now)
    if now - latest <= grace:
        return TickDecision(fire_at=latest, missed=latest != due_at, next_at=next_at)
    return TickDecision(fire_at=latest if catch_up else None, missed=True, next_at=next_at)


def cron_event(
    function_id: str, trigger: CronTrigger, scheduled_at: datetime, *, now: datetime, late: bool
) -> dict[str, Any]:
    """The event a tick's run starts from (stored form, as `event_to_json` gives)."""
    scheduled = scheduled_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    digest = hashlib.sha256(f"{function_id}@{scheduled}".encode()).hexdigest()[:40]
    return {
        "id": f"evt_cron_{digest}",
        "name": f"{CRON_EVENT_PREFIX}{function_id}",
        "namespace": "system",
        "data": {
            "scheduled_at": scheduled,
            "schedule": trigger.schedule.schedule,
            "timezone": trigger.schedule.timezone,
            "catch_up": late,
        },
        "metadata": {"function_id": function_id},
        "timestamp": now.isoformat(),
        "sequence": 0,
    }


class CronTicks:
    """The cron loop of one scheduler replica."""

    def __init__(
        self,
        *,
        db: Database,
        catalog: FunctionCatalog,
        after_commit: AfterCommit,
        settings: CronSettings | None = None,
        clock: Clock = utc_now,
        ids: IdSource = random_id,
    ) -> None:
        self._db = db
        self._catalog = catalog
        self._after_commit = after_commit
        self._settings = settings or CronSettings()
        self._clock = clock
        self._ids = ids
        # What the rows were last synced to (None: never), and when.
        self._synced: frozenset[tuple[Key, bool]] | None = None
        self._synced_at: datetime | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._fire_forever(), name="scheduler-cron")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None

    async def fire(self) -> tuple[int, datetime | None]:
        """One round: sync, then handle every due tick; returns (runs started, when the next tick is due)."""
        now = self._clock()
        view: dict[Key, tuple[CompiledFunction, CronTrigger]] = {
            (function.id, *trigger.key): (function, trigger)
            for function in await self._catalog.functions()
            for trigger in function.crons
        }
        await self._sync(view, now)
        if not view:
            return 0, None
        started = 0
        while True:
            due = await self._next_due(view)
            if due is None or due > now:
                return started, due
            count, more = await self._fire_due(view, now)
            started += count
            if not more:
                return started, await self._next_due(view)

    async def _fire_forever(self) -> None:
        interval = self._settings.interval.total_seconds()
        while True:
            try:
                _, next_at = await self.fire()
            except Exception:
                log.exception("firing cron triggers failed; retrying in %s", self._settings.interval)
                next_at = None
            delay = interval
            if next_at is not None:
                delay = min(interval, max((next_at - self._clock()).total_seconds(), 0.0))
            # Still due after a round: another replica holds those rows; let its transaction finish.
            await asyncio.sleep(max(delay, 0.05))

    # -- syncing ----------------------------------------------------------------------------

    async def _sync(self, view: dict[Key, tuple[CompiledFunction, CronTrigger]], now: datetime) -> None:
        wanted = {key: trigger.catch_up for key, (_, trigger) in view.items()}
        fingerprint = frozenset(wanted.items())
        if (
            fingerprint == self._synced
            and self._synced_at is not None
            and now - self._synced_at < self._settings.resync_interval
        ):
            return
        columns = cron_schedules.c
        async with self._db.reading() as conn:
            rows = await conn.execute(
                sa.select(columns.function_id, columns.schedule, columns.timezone, columns.catch_up)
            )
            existing = {(row.function_id, row.schedule, row.timezone): row.catch_up for row in rows}
        added = [key for key in wanted if key not in existing]
        dropped = [key for key in existing if key not in wanted]
        changed = [key for key in wanted if key in existing and existing[key] != wanted[key]]
        if added or dropped or changed:

            async def work(conn: AsyncConnection) -> None:
                for key in added:
                    first = view[key][1].schedule.next_after(now)
                    if first is None:
                        continue
                    values = {
                        "function_id": key[0],
                        "schedule": key[1],
                        "timezone": key[2],
                        "catch_up": wanted[key],
                        "next_at": first,
                        "created_at": now,
                        "updated_at": now,
                    }
                    await conn.execute(
                        insert_or_ignore(
                            cron_schedules,
                            values,
                            dialect=self._db.dialect,
                            conflict_columns=["function_id", "schedule", "timezone"],
                        )
                    )
                if dropped:
                    await conn.execute(cron_schedules.delete().where(_keys_in(dropped)))
                for key in changed:
                    await conn.execute(
                        cron_schedules.update()
                        .where(_keys_in([key]))
                        .values(catch_up=wanted[key], updated_at=now)
                    )

            await self._db.run(work)
            log.info(
                "cron schedules synced: %d added, %d dropped, %d changed",
                len(added),
                len(dropped),
                len(changed),
            )
        self._synced, self._synced_at = fingerprint, now

    # -- firing -----------------------------------------------------------------------------

    async def _next_due(self, view: dict[Key, tuple[CompiledFunction, CronTrigger]]) -> datetime | None:
        # type_coerce keeps the aware-UTC conversion of the column for the aggregate (SQLite gives text).
        query = sa.select(sa.type_coerce(sa.func.min(cron_schedules.c.next_at), UTCDateTime)).where(
            _keys_in(view)
        )
        async with self._db.reading() as conn:
            value: datetime | None = (await conn.execute(query)).scalar_one_or_none()
        return value

    async def _fire_due(
        self, view: dict[Key, tuple[CompiledFunction, CronTrigger]], now: datetime
    ) -> tuple[int, bool]:
        """Claim due schedules and handle their ticks in one transaction: (runs started, more due)."""
        settings = self._settings
        query = (
            sa.select(cron_schedules)
            .where(cron_schedules.c.next_at <= now, _keys_in(view))
            .order_by(cron_schedules.c.next_at)
            .limit(settings.batch)
        )
        if self._db.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)

        async def work(conn: AsyncConnection) -> tuple[int, int, SystemEvents]:
            announced = SystemEvents(ids=self._ids, now=now)
            rows = (await conn.execute(query)).all()
            started = 0
            for row in rows:
                key = (row.function_id, row.schedule, row.timezone)
                function, trigger = view[key]
                decision = decide(
                    trigger.schedule, due_at=row.next_at, now=now, grace=settings.grace, catch_up=row.catch_up
                )
                values: dict[str, Any] = {"next_at": decision.next_at, "updated_at": now}
                if decision.missed:
                    log.warning(
                        "cron %s %r (%s): ticks before %s were missed%s",
                        function.id,
                        row.schedule,
                        row.timezone,
                        now.isoformat(),
                        "; catching up the latest" if decision.fire_at is not None else "; skipped",
                    )
                if decision.fire_at is not None:
                    late = now - decision.fire_at > settings.grace
                    event = cron_event(function.id, trigger, decision.fire_at, now=now, late=late)
                    position = len(announced.messages)
                    run_id, created = await create_run(
                        conn,
                        function,
                        event,
                        now=now,
                        ids=self._ids,
                        dialect=self._db.dialect,
                        events=announced,
                    )
                    if created:
                        announced.engine_event(event, position=position)
                        started += 1
                        log.debug("cron %s: tick %s started run %s", function.id, decision.fire_at, run_id)
                    values |= {"last_tick_at": decision.fire_at, "last_run_id": run_id}
                if decision.next_at is None:
                    log.warning("cron %s %r never fires again; dropping it", function.id, row.schedule)
                    await conn.execute(cron_schedules.delete().where(_keys_in([key])))
                else:
                    await conn.execute(cron_schedules.update().where(_keys_in([key])).values(**values))
            return started, len(rows), announced

        started, claimed, announced = await self._db.run(work)
        await self._after_commit(announced)
        return started, claimed >= settings.batch


def _keys_in(keys: Iterable[Key]) -> sa.ColumnElement[bool]:
    columns = cron_schedules.c
    return sa.tuple_(columns.function_id, columns.schedule, columns.timezone).in_(list(keys))
