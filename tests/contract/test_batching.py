"""Batching on SQLite and Postgres, driven through `Scheduler.trigger` with a clock the test moves and
leased through `lease_jobs` as a worker's gateway would. Each test would fail if batching were
ignored: every event would start a run of its own, due at once, whose job has no `events`."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from ironflow.services.core.firehose import FirehoseMessage
from ironflow.services.core.storage import Database
from ironflow.services.core.streams import MemoryStream
from ironflow.services.scheduler import _pending_runs
from tests.conftest import unique_name
from tests.contract.pending_support import (
    FIREHOSE,
    Clock,
    batching,
    created_runs,
    data_of,
    event,
    function,
    lease,
    pending_rows,
    rate_limit,
    run_row,
    runs_of,
    scheduler,
)
from tests.contract.scheduler_support import second_handle

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
TIMEOUT = timedelta(minutes=1)


async def test_a_full_batch_is_due_at_once_with_its_events_in_order(database: Database) -> None:
    """max_size 3: three events join one run, which is due when the third arrives and whose job
    carries all three in arrival order (`event` is the first). The fourth opens a new batch."""
    function_id, name = unique_name("batched"), unique_name("row.inserted")
    stream, clock = MemoryStream(), Clock(T0)
    replica = scheduler(database, stream, [function(function_id, name, batching=batching(3, TIMEOUT))], clock)

    sent = []
    for n in range(3):
        sent.append(event(name, {"n": n}, at=clock.now))
        assert len(await replica.trigger(sent[-1])) == 1
        clock.advance(seconds=1)
    [run] = await runs_of(database, function_id)
    assert run.available_at == T0 + timedelta(seconds=2)
    assert [row.run_id for row in await pending_rows(database, function_id)] == [None]  # none open

    [next_batch] = await replica.trigger(event(name, {"n": 3}, at=clock.now))
    assert next_batch != run.id
    assert (await run_row(database, next_batch)).available_at == clock.now + TIMEOUT

    [job] = await lease(replica, function_id)
    assert job.run_id == run.id
    assert data_of(job) == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [e.id for e in job.events] == [e.id for e in sent]
    assert job.event.id == sent[0].id
    assert await created_runs(stream) == [run.id, next_batch]


async def test_a_partial_batch_is_due_when_its_timeout_passes(database: Database) -> None:
    """max_size 10, timeout 1 min: two events, nothing to lease a moment before the minute after the
    first, both events a moment after."""
    function_id, name = unique_name("timed"), unique_name("row.inserted")
    stream, clock = MemoryStream(), Clock(T0)
    replica = scheduler(
        database, stream, [function(function_id, name, batching=batching(10, TIMEOUT))], clock
    )
    [run_id] = await replica.trigger(event(name, {"n": 0}, at=clock.now))
    clock.advance(seconds=20)
    assert await replica.trigger(event(name, {"n": 1}, at=clock.now)) == [run_id]

    clock.now = T0 + TIMEOUT - timedelta(milliseconds=1)
    assert await lease(replica, function_id) == []
    clock.now = T0 + TIMEOUT
    [job] = await lease(replica, function_id)
    assert data_of(job) == [{"n": 0}, {"n": 1}]


async def test_each_key_batches_on_its_own(database: Database) -> None:
    function_id, name = unique_name("per-tenant"), unique_name("row.inserted")
    rule = batching(2, TIMEOUT, key="event.data.tenant")
    stream, clock = MemoryStream(), Clock(T0)
    replica = scheduler(database, stream, [function(function_id, name, batching=rule)], clock)
    for tenant, n in (("a", 0), ("b", 1), ("a", 2), ("b", 3), ("c", 4)):
        await replica.trigger(event(name, {"tenant": tenant, "n": n}, at=clock.now))

    jobs = await lease(replica, function_id)  # the full ones; c's is not due
    assert sorted(data_of(job)[0]["tenant"] for job in jobs) == ["a", "b"]
    assert sorted([d["n"] for d in data_of(job)] for job in jobs) == [[0, 2], [1, 3]]


async def test_a_replayed_event_is_not_added_twice(database: Database) -> None:
    """A replayed trigger returns the batch's run and adds nothing, also once the run was leased."""
    function_id, name = unique_name("replayed"), unique_name("row.inserted")
    stream, clock = MemoryStream(), Clock(T0)
    replica = scheduler(database, stream, [function(function_id, name, batching=batching(3, TIMEOUT))], clock)
    first, second = event(name, {"n": 0}, at=clock.now), event(name, {"n": 1}, at=clock.now)
    [run_id] = await replica.trigger(first)
    for replay in (second, first, second):
        assert await replica.trigger(replay) == [run_id]
    assert (await run_row(database, run_id)).available_at == T0 + TIMEOUT  # not full: 2 of 3

    clock.advance(minutes=1)
    [job] = await lease(replica, function_id)
    assert data_of(job) == [{"n": 0}, {"n": 1}]
    assert await replica.trigger(second) == [run_id]
    assert len(await runs_of(database, function_id)) == 1


async def test_an_event_after_the_batch_was_leased_opens_a_new_one(database: Database) -> None:
    function_id, name = unique_name("moved-on"), unique_name("row.inserted")
    stream, clock = MemoryStream(), Clock(T0)
    replica = scheduler(database, stream, [function(function_id, name, batching=batching(5, TIMEOUT))], clock)
    [first_batch] = await replica.trigger(event(name, {"n": 0}, at=clock.now))
    clock.advance(minutes=1)
    assert await replica.trigger(event(name, {"n": 1}, at=clock.now)) == [first_batch]  # due, not taken
    [job] = await lease(replica, function_id)
    [second_batch] = await replica.trigger(event(name, {"n": 2}, at=clock.now))

    assert second_batch != first_batch
    assert data_of(job) == [{"n": 0}, {"n": 1}]
    clock.advance(minutes=1)
    [later] = await lease(replica, function_id)
    assert (later.run_id, data_of(later)) == (second_batch, [{"n": 2}])


async def test_concurrent_replicas_lose_no_event(database: Database) -> None:
    """Two schedulers (on Postgres with their own pools) trigger 23 events of each of two keys at
    once, max_size 5: every event is in exactly one batch, of its key, and per key there are four
    full batches and one of three."""
    function_id, name = unique_name("crowded"), unique_name("row.inserted")
    functions = [function(function_id, name, batching=batching(5, TIMEOUT, key="event.data.key"))]
    stream, clock = MemoryStream(), Clock(T0)
    events = [event(name, {"key": key, "n": n}, at=clock.now) for n in range(23) for key in "xy"]
    async with second_handle(database) as other:
        replicas = [scheduler(database, stream, functions, clock), scheduler(other, stream, functions, clock)]
        await asyncio.gather(*(replicas[i % 2].trigger(e) for i, e in enumerate(events)))

    clock.advance(minutes=1)
    jobs = await lease(replicas[0], function_id)
    assert sorted(len(job.events) for job in jobs) == [3, 3] + [5] * 8
    for job in jobs:
        assert len({d["key"] for d in data_of(job)}) == 1
    seen = Counter(e.id for job in jobs for e in job.events)
    assert seen == Counter({e.id: 1 for e in events})


async def test_a_batch_closes_before_it_outgrows_a_job(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event that would take the batch's event JSON over the cap makes the batch due as it is and
    starts the next one."""
    monkeypatch.setattr(_pending_runs, "MAX_BATCH_BYTES", 600)
    function_id, name = unique_name("heavy"), unique_name("blob.stored")
    stream, clock = MemoryStream(), Clock(T0)
    replica = scheduler(
        database, stream, [function(function_id, name, batching=batching(100, TIMEOUT))], clock
    )
    run_ids = [
        (await replica.trigger(event(name, {"blob": "x" * 150, "n": n}, at=clock.now)))[0] for n in range(3)
    ]
    assert run_ids[0] == run_ids[1] != run_ids[2]
    [job] = await lease(replica, function_id)
    assert [d["n"] for d in data_of(job)] == [0, 1]


async def test_a_rate_limited_event_joins_no_batch(database: Database) -> None:
    """Admission comes first: with 2 runs an hour allowed, only two events join the batch; the
    others are skipped (`system.function.<id>.skipped`)."""
    function_id, name = unique_name("limited"), unique_name("row.inserted")
    rule = batching(10, TIMEOUT)
    functions = [function(function_id, name, batching=rule, rate_limit=rate_limit(2, timedelta(hours=1)))]
    stream, clock = MemoryStream(), Clock(T0)
    replica = scheduler(database, stream, functions, clock)
    outcomes = [await replica.trigger(event(name, {"n": n}, at=clock.now)) for n in range(4)]
    assert [len(run_ids) for run_ids in outcomes] == [1, 1, 0, 0]

    clock.advance(minutes=1)
    [job] = await lease(replica, function_id)
    assert data_of(job) == [{"n": 0}, {"n": 1}]
    entries = await stream.read(FIREHOSE, after="0-0", count=1000)
    subjects = [FirehoseMessage.decode(entry.fields).subject for entry in entries]
    assert subjects.count(f"system.function.{function_id}.skipped") == 2


async def test_the_row_of_a_full_batch_is_swept_once_idle(database: Database) -> None:
    """A full batch leaves its key's row without a run; the sweeper removes it after a minute idle,
    and a later event of the key simply makes a new one."""
    function_id, name = unique_name("idle"), unique_name("row.inserted")
    stream, clock = MemoryStream(), Clock(T0)
    replica = scheduler(database, stream, [function(function_id, name, batching=batching(1, TIMEOUT))], clock)
    [run_id] = await replica.trigger(event(name, {"n": 0}, at=clock.now))
    assert (await run_row(database, run_id)).available_at == T0  # a batch of one is full at once
    clock.advance(seconds=59)
    assert await replica.sweep_admissions() == 0
    clock.advance(seconds=2)
    assert await replica.sweep_admissions() == 1
    assert await pending_rows(database, function_id) == []
    [later] = await replica.trigger(event(name, {"n": 1}, at=clock.now))
    assert later != run_id
