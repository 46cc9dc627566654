"""Throttles on SQLite and Postgres, driven through `Scheduler.trigger` with a clock the test moves (no
worker: runs stay queued, and their `available_at` is the start time the throttle gave them). Each test
would fail if the throttle were ignored: every run would be due at once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ironflow.services.core.firehose import FirehoseMessage
from ironflow.services.core.protojson import dict_to_struct, to_timestamp
from ironflow.services.core.storage import Database, migrate, runs, throttle_keys
from ironflow.services.core.storage._migrate import MIGRATIONS
from ironflow.services.core.streams import MemoryStream
from ironflow.services.scheduler import Scheduler
from ironflow.v1 import common_pb2, functions_pb2, runs_pb2
from tests.conftest import unique_name
from tests.contract.scheduler_support import FIREHOSE, Clock, replica, second_handle

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


def _function(
    function_id: str,
    event: str,
    *,
    limit: int,
    period: timedelta,
    burst: int = 0,
    key: str = "",
    rate_limit: functions_pb2.RateLimit | None = None,
) -> functions_pb2.Function:
    definition = functions_pb2.FunctionDefinition(
        id=function_id,
        triggers=[functions_pb2.Trigger(event=functions_pb2.EventTrigger(event=event))],
        mode=functions_pb2.FUNCTION_MODE_PULL,
        throttle=functions_pb2.Throttle(limit=limit, key=key, burst=burst),
    )
    definition.throttle.period.FromTimedelta(period)
    if rate_limit is not None:
        definition.rate_limit.CopyFrom(rate_limit)
    return functions_pb2.Function(
        definition=definition, version=1, status=functions_pb2.FUNCTION_STATUS_ACTIVE
    )


def _scheduler(
    database: Database, stream: MemoryStream, functions: list[functions_pb2.Function], clock: Clock
) -> Scheduler:
    return replica(database, stream, functions, clock)


_second_handle = second_handle


def _event(name: str, data: dict[str, Any] | None = None) -> common_pb2.Event:
    event = common_pb2.Event(
        id=unique_name("evt"), name=name, namespace="events", data=dict_to_struct(data or {})
    )
    event.timestamp.CopyFrom(to_timestamp(datetime.now(UTC)))
    return event


async def _starts(database: Database, function_id: str) -> dict[str, tuple[datetime, str]]:
    """event id -> (the run's available_at, its status)."""
    async with database.reading() as conn:
        rows = await conn.execute(
            sa.select(runs.c.event_id, runs.c.available_at, runs.c.status).where(
                runs.c.function_id == function_id
            )
        )
        return {row.event_id: (row.available_at, row.status) for row in rows}


async def _trigger_each(
    scheduler: Scheduler, database: Database, events: Sequence[common_pb2.Event]
) -> list[datetime]:
    """Trigger the events one after another; the start time each one's run got, in that order."""
    run_ids = []
    for event in events:
        [run_id] = await scheduler.trigger(event)
        run_ids.append(run_id)
    async with database.reading() as conn:
        rows = await conn.execute(sa.select(runs.c.id, runs.c.available_at).where(runs.c.id.in_(run_ids)))
        available = {row.id: row.available_at for row in rows}
    return [available[run_id] for run_id in run_ids]


def _most_in_any_window(times: Sequence[datetime], period: timedelta) -> int:
    """The most start times that fall in one window [t, t + period)."""
    ordered = sorted(times)
    return max(
        (sum(1 for other in ordered if start <= other < start + period) for start in ordered), default=0
    )


def _after(*seconds: float) -> list[datetime]:
    return [T0 + timedelta(seconds=s) for s in seconds]


async def _created(stream: MemoryStream) -> dict[str, dict[str, Any]]:
    """event id -> the data of its run's `created` lifecycle event."""
    entries = await stream.read(FIREHOSE, after="0-0", count=100_000)
    messages = [FirehoseMessage.decode(entry.fields) for entry in entries]
    return {m.data["event_id"]: m.data for m in messages if m.subject.endswith(".created")}


# -- the schedule -----------------------------------------------------------------------------------


async def test_runs_beyond_the_limit_are_delayed_not_dropped(database: Database) -> None:
    """2 per 10 s, no burst: seven events at once start seven runs, released one every 5 s, so no
    window of 10 s holds more than 2. The delayed ones say when in their `created` event."""
    function_id, name = unique_name("paced"), unique_name("sync.requested")
    functions = [_function(function_id, name, limit=2, period=timedelta(seconds=10))]
    stream, clock = MemoryStream(), Clock(T0)
    scheduler = _scheduler(database, stream, functions, clock)

    events = [_event(name, {"n": n}) for n in range(7)]
    starts = await _trigger_each(scheduler, database, events)

    assert starts == _after(0, 5, 10, 15, 20, 25, 30)
    assert _most_in_any_window(starts, timedelta(seconds=10)) == 2
    assert {status for _, status in (await _starts(database, function_id)).values()} == {"queued"}
    created = await _created(stream)
    assert "available_at" not in created[events[0].id]
    assert [created[e.id]["available_at"] for e in events[1:]] == [at.isoformat() for at in starts[1:]]
    assert {created[e.id]["status"] for e in events} == {"queued"}


async def test_burst_starts_extra_runs_at_once_and_recovers_after_quiet(database: Database) -> None:
    """3 per 30 s (one every 10 s) with burst 2: six events at once start three runs at once and the
    rest 10 s apart, so a window of 30 s holds at most limit + burst = 5. An event halfway through the
    backlog waits its turn; once the schedule has run out the burst is there again."""
    function_id, name = unique_name("bursty"), unique_name("sync.requested")
    period = timedelta(seconds=30)
    functions = [_function(function_id, name, limit=3, period=period, burst=2)]
    stream, clock = MemoryStream(), Clock(T0)
    scheduler = _scheduler(database, stream, functions, clock)

    first = await _trigger_each(scheduler, database, [_event(name) for _ in range(6)])
    assert first == _after(0, 0, 0, 10, 20, 30)
    clock.advance(seconds=45)  # the schedule runs until T0 + 60: one more may start now, not three
    partial = await _trigger_each(scheduler, database, [_event(name) for _ in range(2)])
    assert partial == _after(45, 50)
    clock.now = T0 + timedelta(seconds=80)  # schedule ran out at T0 + 80
    recovered = await _trigger_each(scheduler, database, [_event(name) for _ in range(4)])
    assert recovered == _after(80, 80, 80, 90)

    every = first + partial + recovered
    assert _most_in_any_window(every, period) == 5
    assert len(await _starts(database, function_id)) == 12


async def test_keys_have_their_own_schedules_in_trigger_order(database: Database) -> None:
    """1 per 10 s per user: interleaved events of two users each get their own schedule, in the
    order they came; events without the key share the empty key's."""
    function_id, name = unique_name("keyed"), unique_name("sync.requested")
    functions = [_function(function_id, name, limit=1, period=timedelta(seconds=10), key="event.data.userId")]
    stream, clock = MemoryStream(), Clock(T0)
    scheduler = _scheduler(database, stream, functions, clock)

    users = ["alice", "bob", "alice", None, "alice", "bob", None]
    events = [_event(name, {"userId": user} if user else {}) for user in users]
    starts = await _trigger_each(scheduler, database, events)

    by_user: dict[str | None, list[datetime]] = {}
    for user, at in zip(users, starts, strict=True):
        by_user.setdefault(user, []).append(at)
    assert by_user == {
        "alice": _after(0, 10, 20),
        "bob": _after(0, 10),
        None: _after(0, 10),
    }


async def test_a_replayed_trigger_takes_no_second_slot(database: Database) -> None:
    """The sweeper re-triggering an event that already has its run gets that run back, and the next
    event's start time is the one it would have had without the replay."""
    function_id, name = unique_name("replayed"), unique_name("sync.requested")
    functions = [_function(function_id, name, limit=1, period=timedelta(seconds=10))]
    stream, clock = MemoryStream(), Clock(T0)
    scheduler = _scheduler(database, stream, functions, clock)

    first, second, third = (_event(name, {"n": n}) for n in range(3))
    [first_run] = await scheduler.trigger(first)
    [second_run] = await scheduler.trigger(second)
    assert await scheduler.trigger(first) == [first_run]
    replays = await asyncio.gather(scheduler.trigger(second), scheduler.trigger(second))
    assert replays == [[second_run], [second_run]]
    await scheduler.trigger(third)

    starts = await _starts(database, function_id)
    assert [starts[e.id][0] for e in (first, second, third)] == _after(0, 10, 20)


async def test_two_replicas_triggering_at_once_keep_the_exact_schedule(database: Database) -> None:
    """Two schedulers (on Postgres each with its own connection pool) trigger 15 events for each of
    two users, all at once; 3 per 30 s with burst 1. Every event gets a run, and each user's start
    times are exactly the schedule one scheduler would have given: two at T0, then one every 10 s."""
    function_id, name = unique_name("raced"), unique_name("sync.requested")
    period = timedelta(seconds=30)
    functions = [_function(function_id, name, limit=3, period=period, burst=1, key="event.data.userId")]
    stream, clock = MemoryStream(), Clock(T0)
    async with _second_handle(database) as second_db:
        replicas = [
            _scheduler(database, stream, functions, clock),
            _scheduler(second_db, stream, functions, clock),
        ]
        events = [_event(name, {"userId": user}) for _ in range(15) for user in ("alice", "bob")]
        results = await asyncio.gather(
            *(replicas[index % 2].trigger(event) for index, event in enumerate(events))
        )

    assert all(len(run_ids) == 1 for run_ids in results)
    starts = await _starts(database, function_id)
    for user in ("alice", "bob"):
        times = sorted(starts[e.id][0] for e in events if e.data["userId"] == user)
        assert times == _after(0, 0, *range(10, 140, 10))
        assert _most_in_any_window(times, period) == 3 + 1


# -- scope ------------------------------------------------------------------------------------------


async def test_invocations_and_rate_limited_events_take_no_slot(database: Database) -> None:
    """Invoked runs start at once and leave the schedule alone; an event the rate limit skips takes
    no place in the throttle either."""
    function_id, name = unique_name("scoped"), unique_name("sync.requested")
    rate = functions_pb2.RateLimit(limit=2)
    rate.period.FromTimedelta(timedelta(minutes=1))
    functions = [_function(function_id, name, limit=1, period=timedelta(seconds=10), rate_limit=rate)]
    stream, clock = MemoryStream(), Clock(T0)
    scheduler = _scheduler(database, stream, functions, clock)

    invoked = [
        await scheduler.invoke(runs_pb2.InvokeRequest(function_id=function_id, idempotency_key=str(n)))
        for n in range(3)
    ]
    events = [_event(name, {"n": n}) for n in range(3)]
    outcomes = [len(await scheduler.trigger(event)) for event in events]
    assert outcomes == [1, 1, 0]  # the third is over the rate limit

    async with database.reading() as conn:
        rows = await conn.execute(sa.select(runs.c.id, runs.c.available_at).where(runs.c.id.in_(invoked)))
        assert {row.available_at for row in rows} == {T0}
    starts = await _starts(database, function_id)
    assert [starts[e.id][0] for e in events[:2]] == _after(0, 10)
    clock.advance(minutes=1)
    # The schedule ran out at T0 + 20 s.
    assert await _trigger_each(scheduler, database, [_event(name)]) == _after(60)


# -- upkeep -----------------------------------------------------------------------------------------


async def test_sweeping_removes_keys_idle_for_the_grace_only(database: Database) -> None:
    """A key whose schedule ran out five minutes ago is deleted; a busy key's row stays, and its
    next run still waits its turn."""
    function_id, name = unique_name("swept"), unique_name("sync.requested")
    functions = [_function(function_id, name, limit=1, period=timedelta(minutes=10), key="event.data.userId")]
    stream, clock = MemoryStream(), Clock(T0)
    scheduler = _scheduler(database, stream, functions, clock)
    # The idle key's schedule runs out at T0 + 10 m, the busy key's at T0 + 30 m.
    await _trigger_each(scheduler, database, [_event(name, {"userId": "idle"})])
    await _trigger_each(scheduler, database, [_event(name, {"userId": "busy"}) for _ in range(3)])

    clock.now = T0 + timedelta(minutes=14, seconds=59)
    assert await scheduler.sweep_admissions() == 0
    clock.now = T0 + timedelta(minutes=15)
    assert await scheduler.sweep_admissions() == 1

    async with database.reading() as conn:
        query = sa.select(sa.func.count()).select_from(throttle_keys)
        assert (await conn.execute(query.where(throttle_keys.c.function_id == function_id))).scalar_one() == 1
    busy = await _trigger_each(scheduler, database, [_event(name, {"userId": "busy"})])
    assert busy == [T0 + timedelta(minutes=30)]
    idle = await _trigger_each(scheduler, database, [_event(name, {"userId": "idle"})])
    assert idle == [clock.now]


async def test_migration_ten_adds_the_table_to_a_version_eight_database(database: Database) -> None:
    async with database.transaction() as conn:
        await conn.execute(sa.text("DROP TABLE throttle_keys"))
        await conn.execute(sa.text("DELETE FROM ironflow_schema_versions WHERE version >= 10"))
    assert await migrate(database) == MIGRATIONS[-1].version
    async with database.reading() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(throttle_keys))).scalar_one() == 0
