"""The scheduler's waits on SQLite and Postgres, driven through its own API (no worker process):
timers fire exactly once across replicas, the event index finds exactly the matching wait among
thousands, and an event stored before a wait's deadline wins over the timeout even when it reaches
the scheduler late."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from ironflow.services.core.cel_keys import key_text
from ironflow.services.core.firehose import FirehoseMessage
from ironflow.services.core.protojson import dict_to_struct, to_timestamp
from ironflow.services.core.signals import RunNotices
from ironflow.services.core.storage import Database, runs, steps, waits
from ironflow.services.core.streams import MemoryStream
from ironflow.services.ingest import Ingest, IngestSettings, StoredEvent, event_to_proto
from ironflow.services.scheduler import FunctionCatalog, Scheduler, SchedulerSettings
from ironflow.v1 import common_pb2, functions_pb2, runs_pb2
from tests.conftest import unique_name

FIREHOSE = "test:firehose"


def _function(function_id: str, event: str) -> functions_pb2.Function:
    definition = functions_pb2.FunctionDefinition(
        id=function_id,
        triggers=[functions_pb2.Trigger(event=functions_pb2.EventTrigger(event=event))],
        mode=functions_pb2.FUNCTION_MODE_PULL,
    )
    return functions_pb2.Function(
        definition=definition, version=1, status=functions_pb2.FUNCTION_STATUS_ACTIVE
    )


def _scheduler(
    database: Database,
    stream: MemoryStream,
    functions: list[functions_pb2.Function],
    *,
    clock: Callable[[], datetime] | None = None,
    **options: Any,
) -> Scheduler:
    async def source() -> list[functions_pb2.Function]:
        return functions

    extra: dict[str, Any] = {"clock": clock} if clock is not None else {}
    return Scheduler(
        db=database,
        stream=stream,
        catalog=FunctionCatalog(source),
        notices=RunNotices(),
        settings=SchedulerSettings(firehose=FIREHOSE),
        **extra,
        **options,
    )


def _event(name: str, data: dict[str, Any]) -> common_pb2.Event:
    event = common_pb2.Event(id=unique_name("evt"), name=name, namespace="events", data=dict_to_struct(data))
    event.timestamp.CopyFrom(to_timestamp(datetime.now(UTC)))
    return event


async def _suspend(
    scheduler: Scheduler, function_id: str, yields: Callable[[str], runs_pb2.StepYield]
) -> None:
    """Lease every queued run of `function_id` and report that it yields."""
    while True:
        leased = await scheduler.lease_jobs(
            runs_pb2.LeaseJobsRequest(worker_id="w", function_ids=[function_id], max_jobs=200)
        )
        if not leased.jobs:
            return
        reports = [
            runs_pb2.JobReport(
                run_id=job.run_id,
                lease_token=job.lease_token,
                execution_sequence=job.execution_sequence,
                yielded=runs_pb2.YieldList(yields=[yields(job.run_id)]),
            )
            for job in leased.jobs
        ]
        response = await scheduler.report_jobs(runs_pb2.ReportJobRequest(worker_id="w", reports=reports))
        assert all(response.accepted)


def _wait_yield(event: str, match: str, timeout: timedelta = timedelta(hours=1)) -> runs_pb2.StepYield:
    step_yield = runs_pb2.StepYield(
        step_id="reply", name="reply", wait_for_event=runs_pb2.YieldWaitForEvent(event=event, match=match)
    )
    step_yield.wait_for_event.timeout.FromTimedelta(timeout)
    return step_yield


def _sleep_yield(_run_id: str) -> runs_pb2.StepYield:
    step_yield = runs_pb2.StepYield(step_id="nap", name="nap")
    step_yield.sleep.duration.FromTimedelta(timedelta(0))
    return step_yield


async def _statuses(database: Database, function_id: str) -> Counter[str]:
    async with database.reading() as conn:
        rows = await conn.execute(sa.select(runs.c.status).where(runs.c.function_id == function_id))
        return Counter(rows.scalars())


async def test_one_event_resumes_exactly_one_of_ten_thousand_keyed_waits(database: Database) -> None:
    """Three runs wait through the real yield path; 10,000 more waits (stored the way the scheduler
    stores them, keyed by `data.orderId`) are bulk-inserted around them. One event with one run's key
    resumes that run only."""
    function_id, trigger, reply = unique_name("waiter"), unique_name("order"), unique_name("shipment")
    stream = MemoryStream()
    scheduler = _scheduler(database, stream, [_function(function_id, trigger)])
    for key in ("a", "b", "c"):
        await scheduler.trigger(_event(trigger, {"orderId": key}))
    match = "async.data.orderId == event.data.orderId"
    await _suspend(scheduler, function_id, lambda _run_id: _wait_yield(reply, match))
    assert await _statuses(database, function_id) == Counter({"waiting": 3})

    now = datetime.now(UTC)
    async with database.transaction() as conn:
        await conn.execute(
            waits.insert(),
            [
                {
                    "id": f"wait_bulk_{n}",
                    "run_id": f"run_bulk_{n}",
                    "step_id": "reply",
                    "kind": "event",
                    "event_name": reply,
                    "match": match,
                    "match_path": "data.orderId",
                    "match_value": key_text(f"bulk-{n}"),
                    "created_at": now,
                }
                for n in range(10_000)
            ],
        )

    await scheduler.trigger(_event(reply, {"orderId": "b"}))

    async with database.reading() as conn:
        resolved = (
            await conn.execute(sa.select(waits.c.run_id).where(waits.c.resolved_at.is_not(None)))
        ).all()
        waiting = {
            row.run_id: row.status
            for row in await conn.execute(
                sa.select(runs.c.id.label("run_id"), runs.c.status).where(runs.c.function_id == function_id)
            )
        }
    assert len(resolved) == 1
    assert Counter(waiting.values()) == Counter({"running": 1, "waiting": 2})
    assert waiting[resolved[0].run_id] == "running"


@pytest.mark.parametrize("replicas", [2])
async def test_two_schedulers_firing_timers_together_fire_each_exactly_once(
    database: Database, replicas: int
) -> None:
    """200 runs sleep with a wake time that has passed. Two scheduler instances (as two replicas
    would) fire timers at the same moment, round after round, until none is due. Each sleep step
    completes once: one `completed` notice per run, and the fired counts add up to 200."""
    function_id, trigger = unique_name("sleeper"), unique_name("nap")
    stream = MemoryStream()
    functions = [_function(function_id, trigger)]
    first = _scheduler(database, stream, functions)
    for n in range(200):
        await first.trigger(_event(trigger, {"n": n}))
    await _suspend(first, function_id, _sleep_yield)
    assert await _statuses(database, function_id) == Counter({"sleeping": 200})

    schedulers = [first, *(_scheduler(database, stream, functions) for _ in range(replicas - 1))]
    fired = 0
    for _ in range(50):
        rounds = await asyncio.gather(*(scheduler.fire_timers() for scheduler in schedulers))
        fired += sum(count for count, _ in rounds)
        if fired >= 200 and all(count == 0 for count, _ in rounds):
            break
    assert fired == 200
    assert await _statuses(database, function_id) == Counter({"running": 200})
    entries = await stream.read(FIREHOSE, after="0-0", count=100_000)
    subjects = [FirehoseMessage.decode(entry.fields).subject for entry in entries]
    completed = Counter(s.split(".")[2] for s in subjects if s.endswith(".step.nap.completed"))
    assert len(completed) == 200
    assert set(completed.values()) == {1}
    ours = sa.select(runs.c.id).where(runs.c.function_id == function_id)
    async with database.reading() as conn:
        rows = await conn.execute(sa.select(steps.c.status).where(steps.c.run_id.in_(ours)))
        statuses = Counter(rows.scalars())
    assert statuses == Counter({"completed": 200})


class DownThenUp:
    """SchedulerService.Trigger as ingest sees it: unreachable until `up`."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.up = False

    async def trigger(self, event: StoredEvent) -> list[str]:
        if not self.up:
            raise ConnectionError("scheduler restarting")
        return await self.scheduler.trigger(event_to_proto(event))


async def test_an_event_stored_before_the_deadline_beats_the_timeout_even_when_triggered_late(
    database: Database,
) -> None:
    """A run waits with a 2 s timeout. The matching event is emitted while the scheduler cannot be
    reached (stored, not triggered). Time passes the deadline, yet the timer does not fire: the
    ingest's trigger watermark is still before the deadline. When the scheduler is back the sweeper
    hands the event over and the wait resolves with it."""
    function_id, trigger, reply = unique_name("waiter"), unique_name("order"), unique_name("paid")
    stream = MemoryStream()
    later = {"offset": timedelta(0)}

    def clock() -> datetime:
        return datetime.now(UTC) + later["offset"]

    watermark: list[Ingest] = []

    async def trigger_watermark() -> datetime | None:
        return await watermark[0].trigger_watermark()

    scheduler = _scheduler(
        database, stream, [_function(function_id, trigger)], clock=clock, event_watermark=trigger_watermark
    )
    link = DownThenUp(scheduler)
    ingest = Ingest(
        db=database, stream=stream, trigger=link.trigger, settings=IngestSettings(outbox_grace=timedelta(0))
    )
    watermark.append(ingest)

    link.up = True
    _, (run_id,) = await ingest.emit(trigger, {"orderId": "o-7"})
    match = "async.data.orderId == event.data.orderId"
    await _suspend(scheduler, function_id, lambda _run_id: _wait_yield(reply, match, timedelta(seconds=2)))

    link.up = False
    paid, run_ids = await ingest.emit(reply, {"orderId": "o-7"})
    assert run_ids == []  # stored, but the scheduler never saw it

    later["offset"] = timedelta(minutes=1)  # well past the wait's deadline
    fired, _ = await scheduler.fire_timers()
    assert fired == 0
    assert await _statuses(database, function_id) == Counter({"waiting": 1})

    link.up = True
    assert await ingest.sweep_untriggered() >= 1
    async with database.reading() as conn:
        wait = (await conn.execute(sa.select(waits).where(waits.c.run_id == run_id))).one()
        step = (
            await conn.execute(sa.select(steps).where(steps.c.run_id == run_id, steps.c.step_id == "reply"))
        ).one()
    assert wait.resolved_event_id == paid.event.id
    assert step.status == "completed"
    assert step.output["data"] == {"orderId": "o-7"}
    assert await _statuses(database, function_id) == Counter({"running": 1})


async def test_a_due_wait_times_out_with_none_once_every_earlier_event_is_triggered(
    database: Database,
) -> None:
    function_id, trigger, reply = unique_name("waiter"), unique_name("order"), unique_name("paid")
    stream = MemoryStream()
    later = {"offset": timedelta(0)}
    scheduler = _scheduler(
        database, stream, [_function(function_id, trigger)], clock=lambda: datetime.now(UTC) + later["offset"]
    )
    (run_id,) = await scheduler.trigger(_event(trigger, {"orderId": "o-1"}))
    await _suspend(scheduler, function_id, lambda _run_id: _wait_yield(reply, "", timedelta(seconds=5)))
    assert (await scheduler.fire_timers())[0] == 0  # not due yet
    later["offset"] = timedelta(seconds=6)
    assert (await scheduler.fire_timers())[0] == 1
    async with database.reading() as conn:
        step = (
            await conn.execute(sa.select(steps).where(steps.c.run_id == run_id, steps.c.step_id == "reply"))
        ).one()
    assert step.status == "completed"
    assert step.output is None
