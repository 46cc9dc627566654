"""Rate limits and idempotency keys on SQLite and Postgres, driven through `Scheduler.trigger` with a
clock the test moves (no worker: runs stay queued). Each test would fail if the control were ignored:
it counts the runs that exist, and checks the skipped events were announced with their reason."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from ironflow.services.core.firehose import FirehoseMessage
from ironflow.services.core.protojson import dict_to_struct, to_timestamp
from ironflow.services.core.storage import (
    Database,
    idempotency_keys,
    migrate,
    rate_limit_admissions,
    rate_limit_keys,
    runs,
)
from ironflow.services.core.storage._migrate import MIGRATIONS
from ironflow.services.core.streams import MemoryStream
from ironflow.services.scheduler import Scheduler
from ironflow.v1 import common_pb2, functions_pb2
from tests.conftest import unique_name
from tests.contract.scheduler_support import FIREHOSE, Clock, replica, second_handle

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


def _function(
    function_id: str,
    event: str,
    *,
    rate_limit: functions_pb2.RateLimit | None = None,
    idempotency: functions_pb2.Idempotency | None = None,
) -> functions_pb2.Function:
    definition = functions_pb2.FunctionDefinition(
        id=function_id,
        triggers=[functions_pb2.Trigger(event=functions_pb2.EventTrigger(event=event))],
        mode=functions_pb2.FUNCTION_MODE_PULL,
    )
    if rate_limit is not None:
        definition.rate_limit.CopyFrom(rate_limit)
    if idempotency is not None:
        definition.idempotency.CopyFrom(idempotency)
    return functions_pb2.Function(
        definition=definition, version=1, status=functions_pb2.FUNCTION_STATUS_ACTIVE
    )


def _rate_limit(limit: int, period: timedelta, key: str = "") -> functions_pb2.RateLimit:
    rate = functions_pb2.RateLimit(limit=limit, key=key)
    rate.period.FromTimedelta(period)
    return rate


def _idempotency(key: str, window: timedelta | None = None) -> functions_pb2.Idempotency:
    idempotency = functions_pb2.Idempotency(key=key)
    if window is not None:
        idempotency.window.FromTimedelta(window)
    return idempotency


def _scheduler(
    database: Database, stream: MemoryStream, functions: list[functions_pb2.Function], clock: Clock
) -> Scheduler:
    return replica(database, stream, functions, clock)


_second_handle = second_handle


def _event(name: str, data: dict[str, Any]) -> common_pb2.Event:
    event = common_pb2.Event(id=unique_name("evt"), name=name, namespace="events", data=dict_to_struct(data))
    event.timestamp.CopyFrom(to_timestamp(datetime.now(UTC)))
    return event


async def _runs_by_event(database: Database, function_id: str) -> dict[str, str]:
    async with database.reading() as conn:
        rows = await conn.execute(
            sa.select(runs.c.event_id, runs.c.id).where(runs.c.function_id == function_id)
        )
        return {row.event_id: row.id for row in rows}


async def _skipped(stream: MemoryStream, function_id: str) -> dict[str, str]:
    """event id -> reason, from the `system.function.<id>.skipped` messages on the firehose."""
    entries = await stream.read(FIREHOSE, after="0-0", count=100_000)
    messages = [FirehoseMessage.decode(entry.fields) for entry in entries]
    return {
        message.data["event_id"]: message.data["reason"]
        for message in messages
        if message.subject == f"system.function.{function_id}.skipped"
    }


# -- idempotency ------------------------------------------------------------------------------------


async def test_a_second_event_with_the_key_starts_no_run_until_the_window_ends(database: Database) -> None:
    """`idempotency.key = event.data.orderId`, window 1 h: the first event of an order starts a run,
    the second (five minutes later) none, another order its own; once the hour is over the order may
    start a run again. A replayed trigger of the first event still answers with its run."""
    function_id, name = unique_name("once"), unique_name("order.placed")
    functions = [
        _function(function_id, name, idempotency=_idempotency("event.data.orderId", timedelta(hours=1)))
    ]
    stream, clock = MemoryStream(), Clock(T0)
    scheduler = _scheduler(database, stream, functions, clock)

    first = _event(name, {"orderId": "ord_1"})
    [run_id] = await scheduler.trigger(first)
    clock.advance(minutes=5)
    duplicate = _event(name, {"orderId": "ord_1", "note": "sent twice"})
    assert await scheduler.trigger(duplicate) == []
    other = _event(name, {"orderId": "ord_2"})
    assert len(await scheduler.trigger(other)) == 1
    assert await scheduler.trigger(first) == [run_id]  # triggering is idempotent per (event, function)

    clock.now = T0 + timedelta(hours=1)  # the first claim's window is over
    later = _event(name, {"orderId": "ord_1"})
    assert len(await scheduler.trigger(later)) == 1

    started = await _runs_by_event(database, function_id)
    assert set(started) == {first.id, other.id, later.id}
    assert await _skipped(stream, function_id) == {duplicate.id: "idempotent"}


async def test_keys_follow_cel_values_and_a_missing_field_is_the_shared_empty_key(database: Database) -> None:
    """Numbers are keys by value (1 and 1.0 are one key, "1" another); events without the field share
    one empty key, as do events whose key is null."""
    function_id, name = unique_name("keys"), unique_name("paid")
    functions = [_function(function_id, name, idempotency=_idempotency("event.data.id"))]
    stream, clock = MemoryStream(), Clock(T0)
    scheduler = _scheduler(database, stream, functions, clock)

    outcomes = [
        len(await scheduler.trigger(_event(name, data)))
        for data in (
            {"id": 1},
            {"id": 1.0},
            {"id": "1"},
            {"other": True},
            {"other": False},
            {"id": None},
        )
    ]
    assert outcomes == [1, 0, 1, 1, 0, 0]


async def test_two_replicas_triggering_at_once_start_one_run_per_key(database: Database) -> None:
    """Two schedulers (on Postgres each with its own connection pool) trigger 8 events for each of 5
    keys, all at once: exactly one run per key."""
    function_id, name = unique_name("raced"), unique_name("order.placed")
    functions = [_function(function_id, name, idempotency=_idempotency("event.data.orderId"))]
    stream, clock = MemoryStream(), Clock(T0)
    async with _second_handle(database) as second_db:
        replicas = [
            _scheduler(database, stream, functions, clock),
            _scheduler(second_db, stream, functions, clock),
        ]
        events = [_event(name, {"orderId": f"ord_{key}"}) for _ in range(8) for key in range(5)]
        results = await asyncio.gather(
            *(replicas[index % 2].trigger(event) for index, event in enumerate(events))
        )

    assert sum(len(run_ids) for run_ids in results) == 5
    started = await _runs_by_event(database, function_id)
    by_key = Counter(next(e for e in events if e.id == event_id).data["orderId"] for event_id in started)
    assert by_key == Counter({f"ord_{key}": 1 for key in range(5)})
    skipped = await _skipped(stream, function_id)
    assert len(skipped) == 35
    assert set(skipped.values()) == {"idempotent"}


# -- rate limit -------------------------------------------------------------------------------------


async def test_rate_limit_admits_limit_per_period_per_key(database: Database) -> None:
    """3 per minute per user: five events of one user start 3 runs, another user's events their own
    3; a minute after the first runs started, the user's events start runs again. The window slides:
    runs started 30 s into the minute hold their places until 30 s into the next."""
    function_id, name = unique_name("limited"), unique_name("sync.requested")
    rate = _rate_limit(3, timedelta(minutes=1), key="event.data.userId")
    functions = [_function(function_id, name, rate_limit=rate)]
    stream, clock = MemoryStream(), Clock(T0)
    scheduler = _scheduler(database, stream, functions, clock)

    async def started(user: str, count: int) -> int:
        return sum([len(await scheduler.trigger(_event(name, {"userId": user}))) for _ in range(count)])

    assert await started("alice", 2) == 2
    clock.advance(seconds=30)
    assert await started("alice", 3) == 1  # the third place of the minute
    assert await started("bob", 4) == 3  # bob has his own
    clock.advance(seconds=29)
    assert await started("alice", 1) == 0
    clock.advance(seconds=1)  # T0 + 60 s: the two runs of T0 leave the window
    assert await started("alice", 3) == 2
    clock.advance(seconds=29)
    assert await started("alice", 1) == 0
    clock.advance(seconds=1)  # T0 + 90 s: the run of T0 + 30 s leaves it
    assert await started("alice", 2) == 1

    assert len(await _runs_by_event(database, function_id)) == 9
    skipped = await _skipped(stream, function_id)
    assert len(skipped) == 2 + 1 + 1 + 1 + 1 + 1
    assert set(skipped.values()) == {"rate_limited"}


async def test_rate_limit_without_a_key_is_one_shared_limit(database: Database) -> None:
    function_id, name = unique_name("shared"), unique_name("ping")
    functions = [_function(function_id, name, rate_limit=_rate_limit(2, timedelta(hours=1)))]
    stream, clock = MemoryStream(), Clock(T0)
    scheduler = _scheduler(database, stream, functions, clock)
    outcomes = [len(await scheduler.trigger(_event(name, {"n": n}))) for n in range(4)]
    assert outcomes == [1, 1, 0, 0]


async def test_rate_limit_is_exact_under_concurrent_replicas(database: Database) -> None:
    """Two schedulers (on Postgres with their own pools) trigger 12 events for each of 2 keys at once,
    limit 3 per minute: exactly 3 runs per key."""
    function_id, name = unique_name("crowded"), unique_name("sync.requested")
    rate = _rate_limit(3, timedelta(minutes=1), key="event.data.userId")
    functions = [_function(function_id, name, rate_limit=rate)]
    stream, clock = MemoryStream(), Clock(T0)
    async with _second_handle(database) as second_db:
        replicas = [
            _scheduler(database, stream, functions, clock),
            _scheduler(second_db, stream, functions, clock),
        ]
        events = [_event(name, {"userId": user}) for _ in range(12) for user in ("alice", "bob")]
        await asyncio.gather(*(replicas[index % 2].trigger(event) for index, event in enumerate(events)))

    started = await _runs_by_event(database, function_id)
    users = Counter(next(e for e in events if e.id == event_id).data["userId"] for event_id in started)
    assert users == Counter({"alice": 3, "bob": 3})
    assert len(await _skipped(stream, function_id)) == 18


async def test_a_rate_limited_event_claims_no_idempotency_key(database: Database) -> None:
    """1 run a minute, one per order: order 2 is refused by the rate limit (not as a duplicate), and
    when it comes again after the minute it runs; a duplicate of order 1 takes no place in the limit."""
    function_id, name = unique_name("both"), unique_name("order.placed")
    functions = [
        _function(
            function_id,
            name,
            rate_limit=_rate_limit(1, timedelta(minutes=1)),
            idempotency=_idempotency("event.data.orderId"),
        )
    ]
    stream, clock = MemoryStream(), Clock(T0)
    scheduler = _scheduler(database, stream, functions, clock)

    assert len(await scheduler.trigger(_event(name, {"orderId": 1}))) == 1
    refused = _event(name, {"orderId": 2})
    assert await scheduler.trigger(refused) == []
    clock.advance(minutes=1)
    duplicate = _event(name, {"orderId": 1})
    assert await scheduler.trigger(duplicate) == []
    assert len(await scheduler.trigger(_event(name, {"orderId": 2}))) == 1

    skipped = await _skipped(stream, function_id)
    assert skipped == {refused.id: "rate_limited", duplicate.id: "idempotent"}


# -- upkeep -----------------------------------------------------------------------------------------


async def test_sweeping_removes_only_what_expired(database: Database) -> None:
    """Keys whose window or period is over are deleted; live ones stay and keep refusing."""
    function_id, name = unique_name("swept"), unique_name("order.placed")
    functions = [
        _function(
            function_id,
            name,
            rate_limit=_rate_limit(5, timedelta(minutes=1), key="event.data.orderId"),
            idempotency=_idempotency("event.data.orderId", timedelta(minutes=10)),
        )
    ]
    stream, clock = MemoryStream(), Clock(T0)
    scheduler = _scheduler(database, stream, functions, clock)
    assert len(await scheduler.trigger(_event(name, {"orderId": "old"}))) == 1
    clock.advance(minutes=5)
    assert len(await scheduler.trigger(_event(name, {"orderId": "new"}))) == 1

    clock.advance(minutes=5, seconds=30)  # old: window over; new: period over, window not
    assert await scheduler.sweep_admissions() == 1 + 2

    async def count(table: sa.Table) -> int:
        async with database.reading() as conn:
            query = sa.select(sa.func.count()).select_from(table).where(table.c.function_id == function_id)
            return int((await conn.execute(query)).scalar_one())

    assert [await count(t) for t in (idempotency_keys, rate_limit_keys, rate_limit_admissions)] == [1, 0, 0]
    assert await scheduler.trigger(_event(name, {"orderId": "new"})) == []
    assert len(await scheduler.trigger(_event(name, {"orderId": "old"}))) == 1


async def test_migration_eight_adds_the_tables_to_a_version_seven_database(database: Database) -> None:
    async with database.transaction() as conn:
        for table in ("idempotency_keys", "rate_limit_keys", "rate_limit_admissions"):
            await conn.execute(sa.text(f"DROP TABLE {table}"))
        await conn.execute(sa.text("DELETE FROM ironflow_schema_versions WHERE version >= 8"))
    assert await migrate(database) == MIGRATIONS[-1].version
    async with database.reading() as conn:
        for table in (idempotency_keys, rate_limit_keys, rate_limit_admissions):
            assert (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one() == 0


@pytest.mark.parametrize("limit", [1, 4])
async def test_a_burst_from_one_replica_stops_at_the_limit(database: Database, limit: int) -> None:
    """Concurrent triggers within one process (one pool) are as exact as across replicas."""
    function_id, name = unique_name("burst"), unique_name("tick")
    functions = [_function(function_id, name, rate_limit=_rate_limit(limit, timedelta(seconds=10)))]
    stream, clock = MemoryStream(), Clock(T0)
    scheduler = _scheduler(database, stream, functions, clock)
    results = await asyncio.gather(*(scheduler.trigger(_event(name, {"n": n})) for n in range(10)))
    assert sum(len(run_ids) for run_ids in results) == limit
