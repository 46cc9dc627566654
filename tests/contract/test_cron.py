"""Cron triggers on SQLite and Postgres, driven round by round with a clock the test moves: each tick
starts one run however many scheduler replicas look, missed ticks are skipped unless the trigger
catches up (and then only the latest), zones follow DST, and the run's event says when it was due."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from ironflow.services.core.firehose import FirehoseMessage
from ironflow.services.core.signals import RunNotices
from ironflow.services.core.storage import Database, cron_schedules, migrate, runs
from ironflow.services.core.storage._migrate import MIGRATIONS
from ironflow.services.core.streams import MemoryStream
from ironflow.services.scheduler import FunctionCatalog, Scheduler, SchedulerSettings
from ironflow.v1 import functions_pb2, runs_pb2
from tests.conftest import unique_name

FIREHOSE = "test:firehose"


class Clock:
    """The schedulers' clock: stands still until the test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def set(self, now: datetime) -> None:
        self.now = now


class Registry:
    """What the catalog reads: the active functions, changed by the test as the registry would be."""

    def __init__(self) -> None:
        self.functions: dict[str, functions_pb2.Function] = {}
        # Told about every change, as the real registry tells its readers (`on_change`).
        self.catalogs: list[FunctionCatalog] = []

    def register(
        self, function_id: str, schedule: str, timezone: str = "", *, catch_up: bool = False
    ) -> None:
        version = self.functions[function_id].version + 1 if function_id in self.functions else 1
        cron = functions_pb2.CronTrigger(schedule=schedule, timezone=timezone, catch_up=catch_up)
        definition = functions_pb2.FunctionDefinition(
            id=function_id, triggers=[functions_pb2.Trigger(cron=cron)], mode=functions_pb2.FUNCTION_MODE_PULL
        )
        self.functions[function_id] = functions_pb2.Function(
            definition=definition, version=version, status=functions_pb2.FUNCTION_STATUS_ACTIVE
        )
        self._changed()

    def pause(self, function_id: str) -> None:
        del self.functions[function_id]
        self._changed()

    def _changed(self) -> None:
        for catalog in self.catalogs:
            catalog.invalidate()

    async def active(self) -> list[functions_pb2.Function]:
        return list(self.functions.values())


def _scheduler(database: Database, stream: MemoryStream, registry: Registry, clock: Clock) -> Scheduler:
    """One scheduler replica: its own catalog of `registry`, over the shared database."""
    catalog = FunctionCatalog(registry.active, clock=clock)
    registry.catalogs.append(catalog)
    return Scheduler(
        db=database,
        stream=stream,
        catalog=catalog,
        notices=RunNotices(),
        settings=SchedulerSettings(firehose=FIREHOSE),
        clock=clock,
    )


async def _round(*schedulers: Scheduler) -> int:
    """Every replica looks at once, as their loops would; returns the runs they started."""
    results = await asyncio.gather(*(scheduler.cron.fire() for scheduler in schedulers))
    return sum(started for started, _ in results)


async def _ticks(database: Database, function_id: str) -> list[dict[str, Any]]:
    """The events of the function's runs, in the order they were due."""
    async with database.reading() as conn:
        rows = await conn.execute(sa.select(runs.c.input).where(runs.c.function_id == function_id))
        events = [row.input["event"] for row in rows]
    return sorted(events, key=lambda event: event["data"]["scheduled_at"])


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


async def test_two_replicas_start_one_run_per_tick(database: Database) -> None:
    """Two schedulers over one database look every 15 seconds for five minutes of an every-minute
    schedule. Each of the five ticks starts exactly one run, its event is `system.cron.<id>` with the
    tick's time, and the firehose announces each tick once, before its run's `created`."""
    function_id = unique_name("every-minute")
    registry, stream, clock = Registry(), MemoryStream(), Clock(_at("2026-01-05T10:00:30"))
    registry.register(function_id, "* * * * *")
    replicas = [_scheduler(database, stream, registry, clock) for _ in range(2)]

    started = 0
    while clock.now < _at("2026-01-05T10:05:30"):
        started += await _round(*replicas)
        clock.set(clock.now + timedelta(seconds=15))

    ticks = await _ticks(database, function_id)
    assert started == 5
    assert [tick["data"]["scheduled_at"] for tick in ticks] == [
        f"2026-01-05T10:0{minute}:00Z" for minute in range(1, 6)
    ]
    assert {tick["name"] for tick in ticks} == {f"system.cron.{function_id}"}
    assert len({tick["id"] for tick in ticks}) == 5
    assert ticks[0]["data"] == {
        "scheduled_at": "2026-01-05T10:01:00Z",
        "schedule": "* * * * *",
        "timezone": "UTC",
        "catch_up": False,
    }

    entries = await stream.read(FIREHOSE, after="0-0", count=10_000)
    messages = [FirehoseMessage.decode(entry.fields) for entry in entries]
    announced = [m for m in messages if m.subject == f"system.cron.{function_id}"]
    assert [m.event_id for m in announced] == [tick["id"] for tick in ticks]
    created = [m for m in messages if m.subject.endswith(".created")]
    assert len(created) == 5
    for tick in announced:
        run_created = next(m for m in created if m.data["event_id"] == tick.event_id)
        assert messages.index(tick) < messages.index(run_created)


async def test_the_worker_gets_the_system_event(database: Database) -> None:
    """A leased job carries the tick's event as a `system` engine event, data and all."""
    function_id = unique_name("nightly")
    registry, stream, clock = Registry(), MemoryStream(), Clock(_at("2026-01-05T08:59:59"))
    registry.register(function_id, "0 9 * * *", "Europe/Berlin")
    scheduler = _scheduler(database, stream, registry, clock)
    assert await _round(scheduler) == 0
    clock.set(_at("2026-01-06T08:00:02"))  # 09:00 in Berlin (CET, UTC+1)
    assert await _round(scheduler) == 1

    leased = await scheduler.lease_jobs(
        runs_pb2.LeaseJobsRequest(worker_id="w", function_ids=[function_id], max_jobs=10)
    )
    [job] = leased.jobs
    assert job.event.name == f"system.cron.{function_id}"
    assert job.event.namespace == "system"
    assert job.event.subject == f"system.cron.{function_id}"
    assert job.event.id.startswith("evt_cron_")
    assert job.event.data["scheduled_at"] == "2026-01-06T08:00:00Z"
    assert job.event.data["timezone"] == "Europe/Berlin"
    assert job.event.timestamp.ToDatetime(tzinfo=UTC) == _at("2026-01-06T08:00:02")


async def test_ticks_missed_while_no_scheduler_ran_are_skipped(database: Database) -> None:
    """The scheduler sees 10:01 fire, then nothing until 10:07:30 (it was down): the ticks of 10:02 to
    10:07 start nothing, and 10:08 fires on time."""
    function_id = unique_name("skipper")
    registry, stream, clock = Registry(), MemoryStream(), Clock(_at("2026-01-05T10:00:30"))
    registry.register(function_id, "* * * * *")
    scheduler = _scheduler(database, stream, registry, clock)
    await _round(scheduler)
    clock.set(_at("2026-01-05T10:01:01"))
    assert await _round(scheduler) == 1

    clock.set(_at("2026-01-05T10:07:30"))
    assert await _round(scheduler) == 0
    clock.set(_at("2026-01-05T10:08:00"))
    assert await _round(scheduler) == 1
    scheduled = [tick["data"]["scheduled_at"] for tick in await _ticks(database, function_id)]
    assert scheduled == ["2026-01-05T10:01:00Z", "2026-01-05T10:08:00Z"]


async def test_a_tick_a_few_seconds_late_is_still_on_time(database: Database) -> None:
    """Within the grace (10 s by default) a tick is late, not missed: a short restart loses nothing."""
    function_id = unique_name("late")
    registry, stream, clock = Registry(), MemoryStream(), Clock(_at("2026-01-05T10:00:30"))
    registry.register(function_id, "* * * * *")
    scheduler = _scheduler(database, stream, registry, clock)
    await _round(scheduler)
    clock.set(_at("2026-01-05T10:01:09"))
    assert await _round(scheduler) == 1
    [tick] = await _ticks(database, function_id)
    assert tick["data"]["catch_up"] is False


async def test_catch_up_fires_only_the_latest_missed_tick(database: Database) -> None:
    """With `catch_up`, coming back at 10:07:30 after missing 10:02 to 10:07 fires 10:07 alone (marked
    as a catch-up); 10:08 then fires as usual."""
    function_id = unique_name("catcher")
    registry, stream, clock = Registry(), MemoryStream(), Clock(_at("2026-01-05T10:00:30"))
    registry.register(function_id, "* * * * *", catch_up=True)
    scheduler = _scheduler(database, stream, registry, clock)
    await _round(scheduler)
    clock.set(_at("2026-01-05T10:01:01"))
    assert await _round(scheduler) == 1

    clock.set(_at("2026-01-05T10:07:30"))
    assert await _round(scheduler) == 1
    assert await _round(scheduler) == 0  # looking again changes nothing
    clock.set(_at("2026-01-05T10:08:00"))
    assert await _round(scheduler) == 1
    ticks = await _ticks(database, function_id)
    assert [(t["data"]["scheduled_at"], t["data"]["catch_up"]) for t in ticks] == [
        ("2026-01-05T10:01:00Z", False),
        ("2026-01-05T10:07:00Z", True),
        ("2026-01-05T10:08:00Z", False),
    ]


async def test_a_zone_with_dst_fires_at_local_time(database: Database) -> None:
    """`0 9 * * *` in Europe/Berlin is 08:00 UTC in winter and 07:00 UTC from the last Sunday of March
    (2026-03-29). `30 2 * * *` falls into the hour skipped that night: like Debian's cron, it fires
    once, right after the change (03:00 CEST, 01:00 UTC)."""
    nine, half_two = unique_name("nine"), unique_name("half-two")
    registry, stream, clock = Registry(), MemoryStream(), Clock(_at("2026-03-27T12:00:00"))
    registry.register(nine, "0 9 * * *", "Europe/Berlin")
    registry.register(half_two, "30 2 * * *", "Europe/Berlin")
    scheduler = _scheduler(database, stream, registry, clock)
    await _round(scheduler)
    async with database.reading() as conn:
        rows = await conn.execute(sa.select(cron_schedules.c.function_id, cron_schedules.c.next_at))
        next_at = {row.function_id: row.next_at for row in rows}
    assert next_at == {nine: _at("2026-03-28T08:00:00"), half_two: _at("2026-03-28T01:30:00")}

    for moment in (
        "2026-03-28T01:30:01",
        "2026-03-28T08:00:01",
        "2026-03-29T01:00:01",
        "2026-03-29T07:00:01",
    ):
        clock.set(_at(moment))
        assert await _round(scheduler) == 1, moment
    assert [t["data"]["scheduled_at"] for t in await _ticks(database, nine)] == [
        "2026-03-28T08:00:00Z",
        "2026-03-29T07:00:00Z",
    ]
    assert [t["data"]["scheduled_at"] for t in await _ticks(database, half_two)] == [
        "2026-03-28T01:30:00Z",
        "2026-03-29T01:00:00Z",
    ]


async def test_registering_starts_at_the_next_tick_and_pausing_stops(database: Database) -> None:
    """A schedule registered at 10:00:30 with every minute long past fires no burst: its first tick is
    10:01. Paused (no longer active), it stops; active again, it starts from its next tick rather than
    replaying the ones it slept through, even with `catch_up`. A changed schedule takes over at once."""
    function_id = unique_name("toggled")
    registry, stream, clock = Registry(), MemoryStream(), Clock(_at("2026-01-05T10:00:30"))
    registry.register(function_id, "* * * * *", catch_up=True)
    scheduler = _scheduler(database, stream, registry, clock)
    assert await _round(scheduler) == 0
    clock.set(_at("2026-01-05T10:01:00"))
    assert await _round(scheduler) == 1

    registry.pause(function_id)
    for moment in ("2026-01-05T10:02:00", "2026-01-05T10:03:00"):
        clock.set(_at(moment))
        assert await _round(scheduler) == 0
    async with database.reading() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(cron_schedules))).scalar_one() == 0

    registry.register(function_id, "* * * * *", catch_up=True)
    clock.set(_at("2026-01-05T10:05:30"))
    assert await _round(scheduler) == 0
    clock.set(_at("2026-01-05T10:06:00"))
    assert await _round(scheduler) == 1

    registry.register(function_id, "*/10 * * * *")
    clock.set(_at("2026-01-05T10:07:00"))
    assert await _round(scheduler) == 0
    clock.set(_at("2026-01-05T10:10:00"))
    assert await _round(scheduler) == 1
    scheduled = [tick["data"]["scheduled_at"] for tick in await _ticks(database, function_id)]
    assert scheduled == ["2026-01-05T10:01:00Z", "2026-01-05T10:06:00Z", "2026-01-05T10:10:00Z"]


async def test_replicas_that_disagree_about_a_schedule_still_start_one_run(database: Database) -> None:
    """Replica A already knows the function; replica B's catalog lags and drops the row A created,
    then catches up and creates it again. The tick is handled by both, yet starts one run: the event
    id is derived from (function, scheduled time)."""
    function_id = unique_name("racy")
    fresh, stale = Registry(), Registry()
    fresh.register(function_id, "* * * * *")
    stream, clock = MemoryStream(), Clock(_at("2026-01-05T10:00:30"))
    a = _scheduler(database, stream, fresh, clock)
    b = _scheduler(database, stream, stale, clock)
    await _round(a)
    clock.set(_at("2026-01-05T10:01:00"))
    assert await _round(a) == 1
    # A tick handled, then its row lost and re-created at the same tick (B drops it, then adds it
    # back once it knows the function, while the clock still reads 10:00:59 there).
    clock.set(_at("2026-01-05T10:00:59"))
    await _round(b)
    stale.register(function_id, "* * * * *")
    await _round(b)
    clock.set(_at("2026-01-05T10:01:01"))
    assert await _round(a, b) == 0
    async with database.reading() as conn:
        statuses = Counter(
            (await conn.execute(sa.select(runs.c.status).where(runs.c.function_id == function_id))).scalars()
        )
    assert statuses == Counter({"queued": 1})


@pytest.mark.parametrize("replicas", [3])
async def test_many_schedules_due_at_once_are_each_fired_once(database: Database, replicas: int) -> None:
    """250 functions share a schedule (more than one claim batch); three replicas look at once."""
    registry, stream, clock = Registry(), MemoryStream(), Clock(_at("2026-01-05T10:00:30"))
    prefix = unique_name("bulk")
    for n in range(250):
        registry.register(f"{prefix}-{n}", "* * * * *")
    schedulers = [_scheduler(database, stream, registry, clock) for _ in range(replicas)]
    await _round(*schedulers)
    clock.set(_at("2026-01-05T10:01:02"))
    assert await _round(*schedulers) == 250
    async with database.reading() as conn:
        counted = (
            await conn.execute(sa.select(runs.c.function_id, sa.func.count()).group_by(runs.c.function_id))
        ).all()
    assert len(counted) == 250
    assert {count for _, count in counted} == {1}


async def test_migration_seven_adds_the_schedules_to_a_version_six_database(database: Database) -> None:
    async with database.transaction() as conn:
        await conn.execute(sa.text("DROP TABLE cron_schedules"))
        await conn.execute(sa.text("DELETE FROM ironflow_schema_versions WHERE version >= 7"))
    assert await migrate(database) == MIGRATIONS[-1].version
    async with database.reading() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(cron_schedules))).scalar_one() == 0
