"""Debounce on SQLite and Postgres, driven through `Scheduler.trigger` with a clock the test moves and
leased through `lease_jobs` as a worker's gateway would. Each test would fail if debounce were
ignored: every event would start a run of its own, due at once, with its own event."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from ironflow.services.core.protojson import struct_to_dict
from ironflow.services.core.storage import Database, accumulated_events, migrate, pending_runs
from ironflow.services.core.storage._migrate import MIGRATIONS
from ironflow.services.core.streams import MemoryStream
from ironflow.v1 import runs_pb2
from tests.conftest import unique_name
from tests.contract.pending_support import (
    Clock,
    created_runs,
    debounce,
    event,
    function,
    lease,
    pending_rows,
    run_row,
    runs_of,
    scheduler,
)
from tests.contract.scheduler_support import second_handle

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
PERIOD = timedelta(seconds=10)


async def test_a_burst_starts_one_run_with_its_last_event_after_a_quiet_period(database: Database) -> None:
    """Three events 3 s apart, period 10 s: one run, due 10 s after the third, carrying the third
    event (id and data); nothing is leased before then. `created` is announced once."""
    function_id, name = unique_name("debounced"), unique_name("profile.updated")
    stream, clock = MemoryStream(), Clock(T0)
    replica = scheduler(database, stream, [function(function_id, name, debounce=debounce(PERIOD))], clock)

    burst = []
    for n in range(3):
        burst.append(event(name, {"n": n}, at=clock.now))
        clock.advance(seconds=3)
    returned = []
    clock.now = T0
    for n, sent in enumerate(burst):
        clock.now = T0 + timedelta(seconds=3 * n)
        returned.append(await replica.trigger(sent))

    [run] = await runs_of(database, function_id)
    assert returned == [[run.id]] * 3
    assert run.event_id == burst[-1].id
    assert run.input["event"]["data"] == {"n": 2}
    assert run.available_at == T0 + timedelta(seconds=6) + PERIOD
    assert await created_runs(stream) == [run.id]

    clock.now = run.available_at - timedelta(milliseconds=1)
    assert await lease(replica, function_id) == []
    clock.now = run.available_at
    [job] = await lease(replica, function_id)
    assert (job.run_id, job.event.id, struct_to_dict(job.event.data)) == (run.id, burst[-1].id, {"n": 2})
    assert list(job.events) == []  # debounced runs have one event


async def test_max_wait_caps_the_wait_and_a_leased_run_takes_no_more_events(database: Database) -> None:
    """Period 10 s, max_wait 25 s, an event every 8 s: the run is due 25 s after the first event
    although the burst goes on; an event after that (not yet leased) still joins it; once a worker
    has it, the next event starts a new debounced run."""
    function_id, name = unique_name("capped"), unique_name("sensor.read")
    rule = debounce(PERIOD, max_wait=timedelta(seconds=25))
    stream, clock = MemoryStream(), Clock(T0)
    replica = scheduler(database, stream, [function(function_id, name, debounce=rule)], clock)

    due = []
    for second in (0, 8, 16, 24, 32):
        clock.now = T0 + timedelta(seconds=second)
        [run_id] = await replica.trigger(event(name, {"at": second}, at=clock.now))
        due.append((await run_row(database, run_id)).available_at - T0)
    assert due == [timedelta(seconds=s) for s in (10, 18, 25, 25, 25)]

    [job] = await lease(replica, function_id)  # at T0 + 32 s
    assert struct_to_dict(job.event.data) == {"at": 32}
    clock.advance(seconds=1)
    [second_run] = await replica.trigger(event(name, {"at": 33}, at=clock.now))
    assert second_run != job.run_id
    assert (await run_row(database, second_run)).available_at == clock.now + PERIOD
    assert len(await runs_of(database, function_id)) == 2


async def test_each_key_debounces_on_its_own(database: Database) -> None:
    """Keyed by user: alice's events gather in one run, bob's in another; events without the field
    share the empty key."""
    function_id, name = unique_name("per-user"), unique_name("profile.updated")
    rule = debounce(PERIOD, key="event.data.userId")
    stream, clock = MemoryStream(), Clock(T0)
    replica = scheduler(database, stream, [function(function_id, name, debounce=rule)], clock)

    async def run_of(data: dict[str, object]) -> str:
        clock.advance(seconds=1)
        [run_id] = await replica.trigger(event(name, data, at=clock.now))
        return run_id

    alice = [await run_of({"userId": "alice", "n": n}) for n in range(2)]
    bob = await run_of({"userId": "bob"})
    alice.append(await run_of({"userId": "alice", "n": 2}))
    nobody = [await run_of({}), await run_of({"userId": None})]
    assert len(set(alice)) == 1
    assert len({alice[0], bob, nobody[0]}) == 3
    assert nobody[0] == nobody[1]
    runs = {row.id: row for row in await runs_of(database, function_id)}
    assert len(runs) == 3
    assert runs[alice[0]].input["event"]["data"] == {"userId": "alice", "n": 2}


async def test_an_older_or_replayed_event_never_replaces_a_newer_one(database: Database) -> None:
    """e1 then e2 (newer): the run carries e2. A replayed trigger of e1 returns the run and changes
    nothing (not even the due time); an event stamped before e2 that reaches the scheduler only now
    joins the run and extends the wait, but the run keeps e2. After the run started, replaying e1 or
    e2 still answers with that run and starts none."""
    function_id, name = unique_name("ordered"), unique_name("doc.saved")
    stream, clock = MemoryStream(), Clock(T0)
    replica = scheduler(database, stream, [function(function_id, name, debounce=debounce(PERIOD))], clock)

    late = event(name, {"v": "late"}, at=T0 + timedelta(seconds=1))  # stored before e2, triggered after
    first = event(name, {"v": 1}, at=T0)
    [run_id] = await replica.trigger(first)
    clock.advance(seconds=2)
    second = event(name, {"v": 2}, at=clock.now)
    assert await replica.trigger(second) == [run_id]
    clock.advance(seconds=1)
    assert await replica.trigger(first) == [run_id]
    run = await run_row(database, run_id)
    assert (run.event_id, run.available_at) == (second.id, T0 + timedelta(seconds=2) + PERIOD)

    clock.advance(seconds=1)
    assert await replica.trigger(late) == [run_id]
    run = await run_row(database, run_id)
    assert (run.event_id, run.available_at) == (second.id, clock.now + PERIOD)

    clock.now = run.available_at
    [job] = await lease(replica, function_id)
    assert job.event.id == second.id
    assert await replica.trigger(first) == [run_id]
    assert await replica.trigger(second) == [run_id]
    assert len(await runs_of(database, function_id)) == 1


async def test_two_replicas_debouncing_one_key_at_once_make_one_run(database: Database) -> None:
    """Two schedulers (on Postgres each with its own pool) trigger 12 events of one key and 12 of
    another, all at once: one run per key, every event answered with it, carrying the newest event."""
    function_id, name = unique_name("raced"), unique_name("cart.changed")
    functions = [function(function_id, name, debounce=debounce(PERIOD, key="event.data.cart"))]
    stream, clock = MemoryStream(), Clock(T0)
    events = [
        event(name, {"cart": cart, "n": n}, at=T0 + timedelta(milliseconds=n))
        for n in range(12)
        for cart in "ab"
    ]
    async with second_handle(database) as other:
        replicas = [scheduler(database, stream, functions, clock), scheduler(other, stream, functions, clock)]
        results = await asyncio.gather(*(replicas[i % 2].trigger(e) for i, e in enumerate(events)))

    runs = {row.id: row for row in await runs_of(database, function_id)}
    assert len(runs) == 2
    for cart in "ab":
        answers = {results[i][0] for i, e in enumerate(events) if e.data["cart"] == cart}
        assert len(answers) == 1
        [run_id] = answers
        assert runs[run_id].input["event"]["data"] == {"cart": cart, "n": 11}
    async with database.reading() as conn:
        joined = (await conn.execute(sa.select(sa.func.count()).select_from(accumulated_events))).scalar_one()
    assert joined == 24


async def test_a_ticket_issued_for_the_old_due_time_is_issued_again(database: Database) -> None:
    """The run fell due and was ticketed for pull workers, but no worker took it yet: a new event
    joins it and moves it into the future, so the old ticket finds it not due and a new ticket is
    issued when it is due again."""
    function_id, name = unique_name("ticketed"), unique_name("doc.saved")
    stream, clock = MemoryStream(), Clock(T0)
    replica = scheduler(database, stream, [function(function_id, name, debounce=debounce(PERIOD))], clock)
    [run_id] = await replica.trigger(event(name, {"v": 1}, at=clock.now))
    assert (await replica.tickets.issue())[0] == 0
    clock.advance(seconds=10)
    assert (await replica.tickets.issue())[0] == 1
    clock.advance(seconds=1)
    assert await replica.trigger(event(name, {"v": 2}, at=clock.now)) == [run_id]

    ticket = runs_pb2.LeaseJobsRequest(
        worker_id="w1", function_ids=[function_id], run_ids=[run_id], max_jobs=1
    )
    assert list((await replica.lease_jobs(ticket)).jobs) == []  # the old ticket: not due
    assert (await replica.tickets.issue())[0] == 0
    clock.advance(seconds=10)
    assert (await replica.tickets.issue())[0] == 1
    [job] = (await replica.lease_jobs(ticket)).jobs
    assert struct_to_dict(job.event.data) == {"v": 2}


async def test_invocations_are_not_debounced(database: Database) -> None:
    """Invoke starts a run due at once, even of a debounced function, and it joins no pending run."""
    function_id, name = unique_name("invoked"), unique_name("doc.saved")
    stream, clock = MemoryStream(), Clock(T0)
    replica = scheduler(database, stream, [function(function_id, name, debounce=debounce(PERIOD))], clock)
    [pending] = await replica.trigger(event(name, {}, at=clock.now))
    invoked = await replica.invoke(runs_pb2.InvokeRequest(function_id=function_id))
    assert invoked != pending
    assert (await run_row(database, invoked)).available_at == T0


async def test_sweeping_deletes_the_rows_of_runs_that_were_taken(database: Database) -> None:
    function_id, name = unique_name("swept"), unique_name("doc.saved")
    rule = debounce(PERIOD, key="event.data.doc")
    stream, clock = MemoryStream(), Clock(T0)
    replica = scheduler(database, stream, [function(function_id, name, debounce=rule)], clock)
    await replica.trigger(event(name, {"doc": "a"}, at=clock.now))
    clock.advance(seconds=5)
    [waiting] = await replica.trigger(event(name, {"doc": "b"}, at=clock.now))
    clock.advance(seconds=5)
    [taken] = await lease(replica, function_id)  # doc a's run
    assert await replica.sweep_admissions() == 1
    assert [row.run_id for row in await pending_rows(database, function_id)] == [waiting]
    assert taken.run_id != waiting


async def test_migration_eleven_adds_the_tables_to_an_older_database(database: Database) -> None:
    async with database.transaction() as conn:
        for table in ("pending_runs", "accumulated_events"):
            await conn.execute(sa.text(f"DROP TABLE {table}"))
        await conn.execute(sa.text("DELETE FROM ironflow_schema_versions WHERE version >= 11"))
    assert await migrate(database) == MIGRATIONS[-1].version == 11
    async with database.reading() as conn:
        for table in (pending_runs, accumulated_events):
            assert (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one() == 0
