"""Helpers for the debounce and batching contract tests: scheduler replicas over one database with a
clock the test moves, events stamped with that clock, and reads of what the database holds."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ironflow.services.core.firehose import FirehoseMessage
from ironflow.services.core.protojson import dict_to_struct, struct_to_dict, to_timestamp
from ironflow.services.core.storage import Database, pending_runs, runs
from ironflow.services.core.streams import MemoryStream
from ironflow.services.scheduler import Scheduler
from ironflow.v1 import common_pb2, functions_pb2, runs_pb2
from tests.conftest import unique_name
from tests.contract.scheduler_support import FIREHOSE, Clock, replica


def function(
    function_id: str,
    event: str,
    *,
    debounce: functions_pb2.Debounce | None = None,
    batching: functions_pb2.Batching | None = None,
    rate_limit: functions_pb2.RateLimit | None = None,
) -> functions_pb2.Function:
    definition = functions_pb2.FunctionDefinition(
        id=function_id,
        triggers=[functions_pb2.Trigger(event=functions_pb2.EventTrigger(event=event))],
        mode=functions_pb2.FUNCTION_MODE_PULL,
    )
    if debounce is not None:
        definition.debounce.CopyFrom(debounce)
    if batching is not None:
        definition.batching.CopyFrom(batching)
    if rate_limit is not None:
        definition.rate_limit.CopyFrom(rate_limit)
    return functions_pb2.Function(
        definition=definition, version=1, status=functions_pb2.FUNCTION_STATUS_ACTIVE
    )


def debounce(
    period: timedelta, *, key: str = "", max_wait: timedelta | None = None
) -> functions_pb2.Debounce:
    rule = functions_pb2.Debounce(key=key)
    rule.period.FromTimedelta(period)
    if max_wait is not None:
        rule.max_wait.FromTimedelta(max_wait)
    return rule


def batching(max_size: int, timeout: timedelta, *, key: str = "") -> functions_pb2.Batching:
    rule = functions_pb2.Batching(max_size=max_size, key=key)
    rule.timeout.FromTimedelta(timeout)
    return rule


def rate_limit(limit: int, period: timedelta) -> functions_pb2.RateLimit:
    rule = functions_pb2.RateLimit(limit=limit)
    rule.period.FromTimedelta(period)
    return rule


def scheduler(
    database: Database, stream: MemoryStream, functions: list[functions_pb2.Function], clock: Clock
) -> Scheduler:
    """One scheduler replica over `database`, with its own catalog of `functions`."""
    return replica(database, stream, functions, clock)


def event(name: str, data: dict[str, Any], *, at: datetime, sequence: int = 0) -> common_pb2.Event:
    """An event as ingest hands it to Trigger, stored at `at`."""
    message = common_pb2.Event(
        id=unique_name("evt"), name=name, namespace="events", data=dict_to_struct(data), sequence=sequence
    )
    message.timestamp.CopyFrom(to_timestamp(at))
    return message


async def runs_of(database: Database, function_id: str) -> list[sa.Row[Any]]:
    async with database.reading() as conn:
        rows = await conn.execute(
            sa.select(runs).where(runs.c.function_id == function_id).order_by(runs.c.created_at, runs.c.id)
        )
        return list(rows.all())


async def run_row(database: Database, run_id: str) -> sa.Row[Any]:
    async with database.reading() as conn:
        return (await conn.execute(sa.select(runs).where(runs.c.id == run_id))).one()


async def pending_rows(database: Database, function_id: str) -> list[sa.Row[Any]]:
    async with database.reading() as conn:
        rows = await conn.execute(sa.select(pending_runs).where(pending_runs.c.function_id == function_id))
        return list(rows.all())


async def lease(replica: Scheduler, function_id: str, *, max_jobs: int = 100) -> list[runs_pb2.Job]:
    """Lease what is due now, as a pull worker's gateway would."""
    request = runs_pb2.LeaseJobsRequest(worker_id="w1", function_ids=[function_id], max_jobs=max_jobs)
    return list((await replica.lease_jobs(request)).jobs)


async def created_runs(stream: MemoryStream) -> list[str]:
    """Run ids of every `system.run.<id>.created` on the firehose, in order."""
    entries = await stream.read(FIREHOSE, after="0-0", count=100_000)
    messages = [FirehoseMessage.decode(entry.fields) for entry in entries]
    return [m.data["run_id"] for m in messages if m.subject.endswith(".created")]


def data_of(job: runs_pb2.Job) -> list[dict[str, Any]]:
    """The data of each event of a batch job, in order."""
    return [struct_to_dict(e.data) for e in job.events]
