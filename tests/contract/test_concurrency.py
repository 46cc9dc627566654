"""Concurrency limits and priority on SQLite and Postgres, driven through the scheduler's own calls
(trigger, lease, report, cancel, sweep, tickets) with a clock the test moves and no worker. Each
test would fail if the control were ignored: it counts what was leased, or checks the order."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ironflow.services.core.protojson import dict_to_struct, to_timestamp
from ironflow.services.core.storage import Database, run_concurrency_keys, runs
from ironflow.services.core.streams import MemoryStream
from ironflow.services.scheduler import Scheduler
from ironflow.services.scheduler._tickets import jobs_key
from ironflow.v1 import common_pb2, functions_pb2, runs_pb2
from tests.conftest import unique_name
from tests.contract.scheduler_support import Clock, replica, second_handle

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
PREFIX = "test-concurrency"


def _function(
    function_id: str,
    event: str,
    *,
    concurrency: list[tuple[int, str]] = (),  # type: ignore[assignment]
    priority: str = "",
) -> functions_pb2.Function:
    definition = functions_pb2.FunctionDefinition(
        id=function_id,
        triggers=[functions_pb2.Trigger(event=functions_pb2.EventTrigger(event=event))],
        mode=functions_pb2.FUNCTION_MODE_PULL,
        concurrency=[functions_pb2.ConcurrencyLimit(limit=limit, key=key) for limit, key in concurrency],
        priority=priority,
    )
    return functions_pb2.Function(
        definition=definition, version=1, status=functions_pb2.FUNCTION_STATUS_ACTIVE
    )


def _scheduler(
    database: Database,
    functions: list[functions_pb2.Function],
    clock: Clock,
    stream: MemoryStream | None = None,
) -> Scheduler:
    return replica(database, stream or MemoryStream(), functions, clock, ticket_prefix=PREFIX)


_second_handle = second_handle


def _event(name: str, data: dict[str, Any]) -> common_pb2.Event:
    event = common_pb2.Event(id=unique_name("evt"), name=name, namespace="events", data=dict_to_struct(data))
    event.timestamp.CopyFrom(to_timestamp(datetime.now(UTC)))
    return event


async def _lease(
    scheduler: Scheduler, function_id: str, max_jobs: int = 50, run_ids: list[str] | None = None
) -> list[runs_pb2.Job]:
    response = await scheduler.lease_jobs(
        runs_pb2.LeaseJobsRequest(
            worker_id="w1", function_ids=[function_id], max_jobs=max_jobs, run_ids=run_ids or []
        )
    )
    return list(response.jobs)


async def _complete(scheduler: Scheduler, job: runs_pb2.Job) -> None:
    report = runs_pb2.JobReport(
        run_id=job.run_id, lease_token=job.lease_token, execution_sequence=job.execution_sequence
    )
    report.completed.string_value = "done"
    response = await scheduler.report_jobs(runs_pb2.ReportJobRequest(reports=[report]))
    assert list(response.accepted) == [True]


def _customer(job: runs_pb2.Job) -> str:
    return str(job.event.data["customerId"])


async def test_runs_over_a_key_limit_wait_in_order_and_start_as_slots_free(database: Database) -> None:
    """Limit 2 per customer: of 4 runs for A and 1 for B, a claim takes A's first two and B's; A's
    others wait, and each completion lets the oldest waiting one go."""
    function_id, name = unique_name("limited"), unique_name("order.placed")
    clock = Clock(T0)
    scheduler = _scheduler(
        database, [_function(function_id, name, concurrency=[(2, "event.data.customerId")])], clock
    )
    a_runs = []
    for index in range(4):
        [run_id] = await scheduler.trigger(_event(name, {"customerId": "A", "n": index}))
        a_runs.append(run_id)
        clock.advance(seconds=1)
    [b_run] = await scheduler.trigger(_event(name, {"customerId": "B"}))

    first = await _lease(scheduler, function_id)
    assert sorted(job.run_id for job in first) == sorted([a_runs[0], a_runs[1], b_run])
    assert await _lease(scheduler, function_id) == []  # A is full; nothing else is due

    await _complete(scheduler, next(job for job in first if job.run_id == a_runs[1]))
    [third] = await _lease(scheduler, function_id)
    assert third.run_id == a_runs[2]
    assert await _lease(scheduler, function_id) == []
    await _complete(scheduler, next(job for job in first if job.run_id == b_run))
    assert await _lease(scheduler, function_id) == []  # B's slot is no use to A
    await _complete(scheduler, third)
    [fourth] = await _lease(scheduler, function_id)
    assert fourth.run_id == a_runs[3]


async def test_slots_free_on_failure_cancellation_suspension_and_a_lapsed_lease(database: Database) -> None:
    """A global limit of 1: the slot frees when the run holding it fails for good, is cancelled, sleeps,
    or its worker goes away (the lease lapses); each time the next run goes, and never two at once."""
    function_id, name = unique_name("single"), unique_name("job")
    clock = Clock(T0)
    scheduler = _scheduler(database, [_function(function_id, name, concurrency=[(1, "")])], clock)
    run_ids = []
    for index in range(5):
        run_ids.extend(await scheduler.trigger(_event(name, {"n": index})))
        clock.advance(seconds=1)

    [job] = await _lease(scheduler, function_id)
    assert job.run_id == run_ids[0]
    assert await _lease(scheduler, function_id) == []
    failed = runs_pb2.JobReport(
        run_id=job.run_id, lease_token=job.lease_token, execution_sequence=job.execution_sequence
    )
    failed.failed.CopyFrom(common_pb2.ErrorInfo(message="boom", non_retryable=True))
    await scheduler.report_jobs(runs_pb2.ReportJobRequest(reports=[failed]))

    [job] = await _lease(scheduler, function_id)
    assert job.run_id == run_ids[1]
    await scheduler.cancel_run(job.run_id, "no longer wanted")

    [job] = await _lease(scheduler, function_id)
    assert job.run_id == run_ids[2]
    sleeping = runs_pb2.JobReport(
        run_id=job.run_id, lease_token=job.lease_token, execution_sequence=job.execution_sequence
    )
    step_yield = sleeping.yielded.yields.add(step_id="nap")
    step_yield.sleep.wake_at.CopyFrom(to_timestamp(clock.now + timedelta(hours=1)))
    await scheduler.report_jobs(runs_pb2.ReportJobRequest(reports=[sleeping]))

    [job] = await _lease(scheduler, function_id)
    assert job.run_id == run_ids[3]
    clock.advance(minutes=5)  # past the 30 s lease: the worker is gone
    assert await scheduler.sweep() == (1, 0)
    [again] = await _lease(scheduler, function_id)
    assert again.run_id in (run_ids[3], run_ids[4])
    assert await _lease(scheduler, function_id) == []


async def test_a_busy_key_does_not_starve_other_keys(database: Database) -> None:
    """60 runs of customer A (limit 1) queued before one of B: a claim of 5 takes A's oldest and
    looks past the rest of A's to B's."""
    function_id, name = unique_name("fair"), unique_name("order.placed")
    clock = Clock(T0)
    scheduler = _scheduler(
        database, [_function(function_id, name, concurrency=[(1, "event.data.customerId")])], clock
    )
    for index in range(60):
        await scheduler.trigger(_event(name, {"customerId": "A", "n": index}))
    clock.advance(seconds=1)
    await scheduler.trigger(_event(name, {"customerId": "B"}))

    jobs = await _lease(scheduler, function_id, max_jobs=5)
    assert sorted(_customer(job) for job in jobs) == ["A", "B"]


async def test_several_limits_all_hold(database: Database) -> None:
    """At most 3 in all and at most 1 per customer: 3 customers with 3 runs each give 3 leases, one
    per customer; a fourth customer waits for the global limit."""
    function_id, name = unique_name("layered"), unique_name("order.placed")
    clock = Clock(T0)
    limits = [(3, ""), (1, "event.data.customerId")]
    scheduler = _scheduler(database, [_function(function_id, name, concurrency=limits)], clock)
    for customer in ("A", "B", "C", "D"):
        for index in range(3):
            await scheduler.trigger(_event(name, {"customerId": customer, "n": index}))
            clock.advance(seconds=1)

    jobs = await _lease(scheduler, function_id)
    assert sorted(_customer(job) for job in jobs) == ["A", "B", "C"]
    await _complete(scheduler, jobs[0])
    [next_job] = await _lease(scheduler, function_id)
    assert _customer(next_job) in {_customer(jobs[0]), "D"}


async def test_two_replicas_leasing_at_once_never_exceed_the_limit(database: Database) -> None:
    """Two schedulers (on Postgres each with its own pool) lease 5 customers' 50 runs with many claims
    at once, limit 2 per customer: exactly 2 per customer end up leased."""
    function_id, name = unique_name("raced"), unique_name("order.placed")
    functions = [_function(function_id, name, concurrency=[(2, "event.data.customerId")])]
    clock = Clock(T0)
    async with _second_handle(database) as other:
        first, second = _scheduler(database, functions, clock), _scheduler(other, functions, clock)
        for index in range(50):
            await first.trigger(_event(name, {"customerId": f"c{index % 5}", "n": index}))
        batches = await asyncio.gather(
            *[_lease(replica, function_id, max_jobs=3) for replica in (first, second) for _ in range(8)]
        )
    leased = Counter(_customer(job) for batch in batches for job in batch)
    assert leased == Counter({f"c{n}": 2 for n in range(5)})
    async with database.reading() as conn:
        running = (
            await conn.execute(
                sa.select(sa.func.count()).where(
                    runs.c.function_id == function_id, runs.c.lease_token.is_not(None)
                )
            )
        ).scalar_one()
    assert running == 10


async def test_tickets_are_issued_only_for_free_slots_and_a_blocked_ticket_is_reissued(
    database: Database,
) -> None:
    """Pull delivery: 6 runs of one customer under limit 2 get 2 tickets; a completion lets the issuer
    ticket one more. A ticket presented for a run whose key is full leases nothing and the run is
    ticketed again later."""
    function_id, name = unique_name("ticketed"), unique_name("order.placed")
    stream, clock = MemoryStream(), Clock(T0)
    scheduler = _scheduler(
        database, [_function(function_id, name, concurrency=[(2, "event.data.customerId")])], clock, stream
    )
    run_ids = []
    for index in range(6):
        run_ids.extend(await scheduler.trigger(_event(name, {"customerId": "A", "n": index})))
        clock.advance(seconds=1)
    key = jobs_key(PREFIX, function_id)

    async def ticketed() -> list[str]:
        return [entry.fields["run_id"] for entry in await stream.read(key, after="0-0", count=100)]

    await scheduler.tickets.issue()
    assert await ticketed() == run_ids[:2]
    await scheduler.tickets.issue()
    assert await ticketed() == run_ids[:2]  # nothing more while the two tickets are outstanding

    jobs = await _lease(scheduler, function_id, run_ids=run_ids[:2])
    assert sorted(job.run_id for job in jobs) == sorted(run_ids[:2])
    # A ticket for a run the key has no room for (as an issuer in another replica might give).
    assert await _lease(scheduler, function_id, run_ids=[run_ids[2]]) == []
    await _complete(scheduler, jobs[0])
    await scheduler.tickets.issue()
    assert (await ticketed())[2:] == [run_ids[2]]
    [job] = await _lease(scheduler, function_id, run_ids=[run_ids[2]])
    assert job.run_id == run_ids[2]


async def test_a_resumed_run_is_limited_again(database: Database) -> None:
    """A failed run that is resumed takes its place in its key again (its rows went when it ended)."""
    function_id, name = unique_name("resumed"), unique_name("job")
    clock = Clock(T0)
    scheduler = _scheduler(database, [_function(function_id, name, concurrency=[(1, "")])], clock)
    [first] = await scheduler.trigger(_event(name, {}))
    [job] = await _lease(scheduler, function_id)
    failed = runs_pb2.JobReport(
        run_id=job.run_id, lease_token=job.lease_token, execution_sequence=job.execution_sequence
    )
    failed.failed.CopyFrom(common_pb2.ErrorInfo(message="boom", non_retryable=True))
    await scheduler.report_jobs(runs_pb2.ReportJobRequest(reports=[failed]))
    async with database.reading() as conn:
        left = await conn.execute(
            sa.select(run_concurrency_keys).where(run_concurrency_keys.c.run_id == first)
        )
        assert left.all() == []

    clock.advance(seconds=1)
    [second] = await scheduler.trigger(_event(name, {}))
    [job] = await _lease(scheduler, function_id)
    assert job.run_id == second
    await scheduler.resume_run(first)
    assert await _lease(scheduler, function_id) == []
    await _complete(scheduler, job)
    [job] = await _lease(scheduler, function_id)
    assert job.run_id == first


# -- priority -----------------------------------------------------------------------------------


async def test_higher_priority_runs_are_leased_first(database: Database) -> None:
    """`event.data.tier == 'gold' ? 100 : 0`: two gold runs queued after five bronze ones go first,
    then the bronze ones in the order they came."""
    function_id, name = unique_name("tiers"), unique_name("ticket.opened")
    clock = Clock(T0)
    priority = "event.data.tier == 'gold' ? 100 : 0"
    scheduler = _scheduler(database, [_function(function_id, name, priority=priority)], clock)
    order = []
    for index in range(5):
        order.extend(await scheduler.trigger(_event(name, {"tier": "bronze", "n": index})))
        clock.advance(seconds=1)
    gold = [run for _ in range(2) for run in await scheduler.trigger(_event(name, {"tier": "gold"}))]
    leased = [job.run_id for _ in range(7) for job in await _lease(scheduler, function_id, max_jobs=1)]
    assert leased == gold + order


async def test_priority_is_bounded_by_how_long_a_run_has_waited(database: Database) -> None:
    """Priority is seconds of head start: a gold run (100) passes a bronze one that became due 50 s
    before it, not one that has waited 200 s. No run starves."""
    function_id, name = unique_name("aged"), unique_name("ticket.opened")
    clock = Clock(T0)
    scheduler = _scheduler(
        database, [_function(function_id, name, priority="event.data.tier == 'gold' ? 100 : 0")], clock
    )
    [old_bronze] = await scheduler.trigger(_event(name, {"tier": "bronze"}))
    clock.advance(seconds=150)
    [recent_bronze] = await scheduler.trigger(_event(name, {"tier": "bronze"}))
    clock.advance(seconds=50)
    [gold] = await scheduler.trigger(_event(name, {"tier": "gold"}))
    leased = [job.run_id for _ in range(3) for job in await _lease(scheduler, function_id, max_jobs=1)]
    assert leased == [old_bronze, gold, recent_bronze]


async def test_a_ticket_leases_the_best_run_of_a_prioritised_function(database: Database) -> None:
    """Tickets go out in the order runs became due; a gateway presenting a bronze run's ticket gets the
    gold run queued after it (which has no ticket yet), and the bronze run is ticketed again."""
    function_id, name = unique_name("swapped"), unique_name("ticket.opened")
    stream, clock = MemoryStream(), Clock(T0)
    scheduler = _scheduler(
        database,
        [_function(function_id, name, priority="event.data.tier == 'gold' ? 100 : 0")],
        clock,
        stream,
    )
    [bronze] = await scheduler.trigger(_event(name, {"tier": "bronze"}))
    await scheduler.tickets.issue()
    clock.advance(seconds=1)
    [gold] = await scheduler.trigger(_event(name, {"tier": "gold"}))
    [job] = await _lease(scheduler, function_id, run_ids=[bronze], max_jobs=1)
    assert job.run_id == gold
    await scheduler.tickets.issue()
    entries = await stream.read(jobs_key(PREFIX, function_id), after="0-0", count=100)
    assert [entry.fields["run_id"] for entry in entries] == [bronze, bronze]


async def test_integer_priority_and_invoked_runs(database: Database) -> None:
    """A constant priority applies to every run, invoked ones too; a function without priority keeps
    oldest-first."""
    low_id, high_id, name = unique_name("low"), unique_name("high"), unique_name("job")
    clock = Clock(T0)
    functions = [_function(low_id, name), _function(high_id, unique_name("never"), priority="30")]
    scheduler = _scheduler(database, functions, clock)
    await scheduler.trigger(_event(name, {}))
    invoked = await scheduler.invoke(runs_pb2.InvokeRequest(function_id=high_id))
    async with database.reading() as conn:
        priorities = dict(
            (
                await conn.execute(
                    sa.select(runs.c.function_id, runs.c.priority).where(
                        runs.c.function_id.in_([low_id, high_id])
                    )
                )
            ).all()
        )
    assert priorities[low_id] in (0, None)
    assert priorities[high_id] == 30
    response = await scheduler.lease_jobs(
        runs_pb2.LeaseJobsRequest(worker_id="w", function_ids=[low_id, high_id], max_jobs=1)
    )
    assert [job.run_id for job in response.jobs] == [invoked]
