"""The scheduler: turns events into runs and drives each run through its states.

States: queued -> running -> (completed | failed | cancelled), with paused when a retry policy says
so (sleeping and waiting arrive with the steps that yield). Every change is one transaction fenced by
the run's (lease token, execution sequence); the lifecycle events it causes go on the firehose after
the commit, in the order they happened.

Leases: a worker holds a run for `lease_duration` and renews it by heartbeat. A lease that lapses,
or is released because the worker's stream dropped, is cleared with a new execution sequence, so the
run is handed out again and anything the old holder still sends is rejected as stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ironflow.services.core.errors import ErrorCode, ServiceError, invalid_argument, not_found
from ironflow.services.core.firehose import FIREHOSE_STREAM
from ironflow.services.core.ids import Clock, IdSource, random_id, utc_now
from ironflow.services.core.protojson import duration_seconds, to_timestamp
from ironflow.services.core.signals import RunNotices
from ironflow.services.core.storage import Database, runs, steps
from ironflow.services.core.streams import Stream
from ironflow.v1 import common_pb2, runs_pb2

from ._catalog import FunctionCatalog
from ._convert import (
    RUN_STATUS_NAMES,
    event_from_json,
    event_to_json,
    memoized_step,
    run_to_proto,
    step_to_proto,
)
from ._reports import ReportEffects, apply_report, end_run
from ._store import (
    ACTIVE_STATUSES,
    ENDED_STATUSES,
    claim_runs,
    fenced_off,
    insert_run,
    lock_run,
    next_due_at,
    steps_of,
    update_run,
    update_runs,
)
from ._system_events import SystemEvents

log = logging.getLogger("ironflow.scheduler")

DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 1000
MAX_JOBS_PER_LEASE = 500


@dataclass(frozen=True, kw_only=True)
class SchedulerSettings:
    firehose: str = FIREHOSE_STREAM
    # How often lapsed leases and run timeouts are looked for.
    sweep_interval: timedelta = timedelta(seconds=1)
    default_lease: timedelta = timedelta(seconds=30)
    max_lease: timedelta = timedelta(minutes=10)
    # WaitForRuns re-reads at least this often (a run may end on another replica).
    wait_poll_interval: timedelta = timedelta(milliseconds=500)


class Scheduler:
    def __init__(
        self,
        *,
        db: Database,
        stream: Stream,
        catalog: FunctionCatalog,
        notices: RunNotices,
        settings: SchedulerSettings | None = None,
        clock: Clock = utc_now,
        ids: IdSource = random_id,
    ) -> None:
        self._db = db
        self._stream = stream
        self._catalog = catalog
        self._notices = notices
        self._settings = settings or SchedulerSettings()
        self._clock = clock
        self._ids = ids
        self._ended = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def catalog(self) -> FunctionCatalog:
        return self._catalog

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._sweep_forever(), name="scheduler-sweeper")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # -- triggering -------------------------------------------------------------------------

    async def trigger(self, event: common_pb2.Event) -> list[str]:
        """Create one run per matching function, idempotently; returns every run id of the event."""
        if not event.id:
            raise invalid_argument("event.id", "is required")
        if event.namespace not in ("", "events"):
            return []  # topic messages and engine events never start runs
        stored_event = event_to_json(event)
        variables = {
            "event": {
                "name": event.name,
                "data": stored_event["data"],
                "id": event.id,
                "timestamp": event.timestamp.ToDatetime(tzinfo=UTC) if event.HasField("timestamp") else None,
            }
        }
        matched = await self._catalog.match(event.name, variables)
        if not matched:
            return []
        now = self._clock()

        async def work(conn: AsyncConnection) -> tuple[list[str], SystemEvents]:
            announced = SystemEvents(ids=self._ids, now=now)
            run_ids = []
            for function in matched:
                run_id, created = await insert_run(
                    conn,
                    {
                        "id": self._ids("run"),
                        "function_id": function.id,
                        "function_version": function.version,
                        "event_id": event.id,
                        "status": "queued",
                        "attempt": 1,
                        "input": {"event": stored_event},
                        "options": function.options.to_json(),
                        "available_at": now,
                        "execution_sequence": 0,
                        "created_at": now,
                        "updated_at": now,
                    },
                    dialect=self._db.dialect,
                )
                run_ids.append(run_id)
                if created:
                    announced.run(
                        run_id,
                        "created",
                        {"function_id": function.id, "event_id": event.id, "status": "queued"},
                    )
            return run_ids, announced

        run_ids, announced = await self._db.run(work)
        await self._publish(announced)
        if announced.messages:
            self._notices.work_available()
        return run_ids

    # -- jobs -------------------------------------------------------------------------------

    async def lease_jobs(self, request: runs_pb2.LeaseJobsRequest) -> runs_pb2.LeaseJobsResponse:
        if not request.worker_id:
            raise invalid_argument("worker_id", "is required")
        if not 0 <= request.max_jobs <= MAX_JOBS_PER_LEASE:
            raise invalid_argument("max_jobs", f"must be between 0 and {MAX_JOBS_PER_LEASE}")
        duration = self._lease_duration(
            request.lease_duration if request.HasField("lease_duration") else None
        )
        function_ids = list(request.function_ids)
        if not function_ids:
            return runs_pb2.LeaseJobsResponse()
        now = self._clock()
        token = self._ids("lse")

        async def work(conn: AsyncConnection) -> tuple[list[runs_pb2.Job], datetime | None, SystemEvents]:
            announced = SystemEvents(ids=self._ids, now=now)
            claimed = (
                await claim_runs(
                    conn, dialect=self._db.dialect, function_ids=function_ids, limit=request.max_jobs, now=now
                )
                if request.max_jobs
                else []
            )
            ids = [row.id for row in claimed]
            await update_runs(
                conn,
                ids,
                status="running",
                lease_token=token,
                lease_expires_at=now + duration,
                worker_id=request.worker_id,
                execution_sequence=runs.c.execution_sequence + 1,
                updated_at=now,
            )
            first_started = [row for row in claimed if row.started_at is None]
            for row in first_started:
                timeout = row.options.get("timeout") if row.options else None
                await update_run(
                    conn,
                    row.id,
                    started_at=now,
                    timeout_at=now + timedelta(seconds=timeout) if timeout else None,
                )
                announced.run(
                    row.id,
                    "started",
                    {"function_id": row.function_id, "event_id": row.event_id, "attempt": row.attempt},
                )
            memo = await steps_of(conn, ids)
            jobs = [_job(row, memo[row.id], token=token, expires_at=now + duration) for row in claimed]
            return jobs, await next_due_at(conn, function_ids), announced

        jobs, due, announced = await self._db.run(work)
        await self._publish(announced)
        response = runs_pb2.LeaseJobsResponse(jobs=jobs)
        if due is not None:
            response.next_due_at.CopyFrom(to_timestamp(due))
        return response

    async def renew_leases(self, request: runs_pb2.RenewLeasesRequest) -> runs_pb2.RenewLeasesResponse:
        duration = self._lease_duration(
            request.lease_duration if request.HasField("lease_duration") else None
        )
        wanted = list(request.leases)
        if not wanted:
            return runs_pb2.RenewLeasesResponse()
        now = self._clock()

        async def work(conn: AsyncConnection) -> tuple[list[runs_pb2.JobLease], list[str]]:
            rows = await conn.execute(
                sa.select(runs.c.id, runs.c.lease_token, runs.c.execution_sequence, runs.c.status).where(
                    runs.c.id.in_([lease.run_id for lease in wanted])
                )
            )
            current = {row.id: row for row in rows}
            held = [lease for lease in wanted if _holds(current.get(lease.run_id), lease)]
            await update_runs(
                conn, [held_lease.run_id for held_lease in held], lease_expires_at=now + duration
            )
            lost = [lease for lease in wanted if lease not in held]
            cancelled = [
                lease.run_id
                for lease in lost
                if (row := current.get(lease.run_id)) is not None and row.status == "cancelled"
            ]
            return lost, cancelled

        lost, cancelled = await self._db.run(work)
        return runs_pb2.RenewLeasesResponse(lost=lost, cancelled_run_ids=cancelled)

    async def release_jobs(self, request: runs_pb2.ReleaseJobsRequest) -> runs_pb2.ReleaseJobsResponse:
        """Give leased runs back at once (the worker went away): they are handed out again."""
        leases = list(request.leases)
        if not leases:
            return runs_pb2.ReleaseJobsResponse()
        now = self._clock()

        async def work(conn: AsyncConnection) -> int:
            released = 0
            for lease in leases:
                result = await conn.execute(
                    runs.update()
                    .where(
                        runs.c.id == lease.run_id,
                        runs.c.lease_token == lease.lease_token,
                        runs.c.execution_sequence == lease.execution_sequence,
                        runs.c.status == "running",
                    )
                    .values(worker_id=None, available_at=now, **fenced_off(now))
                )
                released += result.rowcount
            return released

        if await self._db.run(work):
            self._notices.work_available()
        return runs_pb2.ReleaseJobsResponse()

    async def report_jobs(self, request: runs_pb2.ReportJobRequest) -> runs_pb2.ReportJobResponse:
        """Record checkpoints and outcomes, one transaction for the whole batch; stale ones are refused."""
        now = self._clock()

        async def work(
            conn: AsyncConnection,
        ) -> tuple[list[bool], list[str], ReportEffects, SystemEvents]:
            announced = SystemEvents(ids=self._ids, now=now)
            effects = ReportEffects()
            accepted: list[bool] = []
            cancelled: list[str] = []
            for report in request.reports:
                run = await lock_run(conn, report.run_id, dialect=self._db.dialect)
                lease = runs_pb2.JobLease(
                    run_id=report.run_id,
                    lease_token=report.lease_token,
                    execution_sequence=report.execution_sequence,
                )
                if not _holds(run, lease):
                    accepted.append(False)
                    if run is not None and run.status == "cancelled":
                        cancelled.append(run.id)
                    continue
                assert run is not None
                await apply_report(conn, run, report, now=now, events=announced, effects=effects)
                accepted.append(True)
            return accepted, cancelled, effects, announced

        accepted, cancelled, effects, announced = await self._db.run(work)
        await self._publish(announced)
        if effects.requeued:
            self._notices.work_available()
        if effects.ended:
            await self._announce_ended()
        return runs_pb2.ReportJobResponse(accepted=accepted, cancelled_run_ids=cancelled)

    # -- reading ----------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> runs_pb2.Run:
        if not run_id:
            raise invalid_argument("id", "is required")
        async with self._db.reading() as conn:
            row = (await conn.execute(sa.select(runs).where(runs.c.id == run_id))).first()
        if row is None:
            raise not_found("run", run_id)
        return run_to_proto(row)

    async def list_runs(self, request: runs_pb2.ListRunsRequest) -> runs_pb2.ListRunsResponse:
        if not 0 <= request.limit <= MAX_LIST_LIMIT:
            raise invalid_argument("limit", f"must be between 1 and {MAX_LIST_LIMIT}")
        limit = request.limit or DEFAULT_LIST_LIMIT
        query = sa.select(runs)
        if request.function_id:
            query = query.where(runs.c.function_id == request.function_id)
        if request.event_id:
            query = query.where(runs.c.event_id == request.event_id)
        if request.status:
            if request.status not in RUN_STATUS_NAMES:
                raise invalid_argument("status", f"unknown run status {request.status}")
            query = query.where(runs.c.status == RUN_STATUS_NAMES[request.status])
        if request.cursor:
            created_at, run_id = _parse_cursor(request.cursor)
            query = query.where(
                sa.or_(
                    runs.c.created_at < created_at,
                    sa.and_(runs.c.created_at == created_at, runs.c.id < run_id),
                )
            )
        query = query.order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit + 1)
        async with self._db.reading() as conn:
            rows = (await conn.execute(query)).all()
        page = rows[:limit]
        cursor = f"{page[-1].created_at.isoformat()}|{page[-1].id}" if len(rows) > limit else ""
        return runs_pb2.ListRunsResponse(runs=[run_to_proto(row) for row in page], next_cursor=cursor)

    async def get_run_steps(self, run_id: str) -> list[runs_pb2.Step]:
        if not run_id:
            raise invalid_argument("run_id", "is required")
        async with self._db.reading() as conn:
            exists = (await conn.execute(sa.select(runs.c.id).where(runs.c.id == run_id))).first()
            if exists is None:
                raise not_found("run", run_id)
            rows = (
                await conn.execute(
                    sa.select(steps)
                    .where(steps.c.run_id == run_id)
                    .order_by(steps.c.started_at, steps.c.step_id)
                )
            ).all()
        return [step_to_proto(row) for row in rows]

    async def wait_for_runs(
        self, run_ids: Sequence[str], within: timedelta
    ) -> tuple[list[runs_pb2.RunResult], bool]:
        """The runs' results once all have ended, or as they are when `within` has passed."""
        if not run_ids:
            return [], True
        deadline = asyncio.get_running_loop().time() + within.total_seconds()
        while True:
            async with self._db.reading() as conn:
                rows = {
                    row.id: row
                    for row in await conn.execute(sa.select(runs).where(runs.c.id.in_(list(run_ids))))
                }
            missing = [run_id for run_id in run_ids if run_id not in rows]
            if missing:
                raise not_found("run", missing[0])
            ended = all(row.status in ENDED_STATUSES for row in rows.values())
            remaining = deadline - asyncio.get_running_loop().time()
            if ended or remaining <= 0:
                results = [_result(rows[run_id]) for run_id in run_ids]
                return results, ended
            async with self._ended:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._ended.wait(),
                        timeout=min(remaining, self._settings.wait_poll_interval.total_seconds()),
                    )

    # -- control ----------------------------------------------------------------------------

    async def cancel_run(self, run_id: str, reason: str = "") -> runs_pb2.Run:
        if not run_id:
            raise invalid_argument("id", "is required")
        now = self._clock()

        async def work(conn: AsyncConnection) -> SystemEvents:
            announced = SystemEvents(ids=self._ids, now=now)
            run = await lock_run(conn, run_id, dialect=self._db.dialect)
            if run is None:
                raise not_found("run", run_id)
            if run.status in ENDED_STATUSES:
                raise ServiceError(
                    ErrorCode.FAILED_PRECONDITION, f"run {run_id!r} already ended ({run.status})"
                )
            error = {"code": "CANCELLED", "message": reason or "cancelled"}
            await end_run(conn, run, "cancelled", now=now, events=announced, error=error)
            return announced

        announced = await self._db.run(work)
        await self._publish(announced)
        self._notices.run_cancelled(run_id, reason or "cancelled")
        await self._announce_ended()
        return await self.get_run(run_id)

    # -- sweeping ---------------------------------------------------------------------------

    async def sweep(self) -> tuple[int, int]:
        """Re-queue runs whose lease lapsed and fail runs past their timeout: (re-queued, timed out)."""
        now = self._clock()

        async def work(conn: AsyncConnection) -> tuple[list[str], list[str], SystemEvents]:
            announced = SystemEvents(ids=self._ids, now=now)
            lapsed_query = (
                sa.select(runs.c.id)
                .where(
                    runs.c.status == "running",
                    runs.c.lease_token.is_not(None),
                    runs.c.lease_expires_at < now,
                )
                .limit(500)
            )
            lapsed = list((await conn.execute(lapsed_query)).scalars())
            await update_runs(conn, lapsed, worker_id=None, available_at=now, **fenced_off(now))
            overdue_query = (
                sa.select(runs).where(runs.c.status.in_(ACTIVE_STATUSES), runs.c.timeout_at < now).limit(500)
            )
            overdue = list((await conn.execute(overdue_query)).all())
            for run in overdue:
                limit = (run.options or {}).get("timeout")
                error = {
                    "code": "TIMEOUT",
                    "message": f"run exceeded its timeout of {limit:g}s",
                    "non_retryable": True,
                }
                await end_run(conn, run, "failed", now=now, events=announced, error=error)
            return lapsed, [run.id for run in overdue], announced

        lapsed, overdue, announced = await self._db.run(work)
        await self._publish(announced)
        if lapsed:
            log.info("re-queued %d runs whose lease lapsed", len(lapsed))
            self._notices.work_available()
        for run_id in overdue:
            self._notices.run_cancelled(run_id, "timed out")
        if overdue:
            await self._announce_ended()
        return len(lapsed), len(overdue)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.sweep_interval.total_seconds())
            try:
                await self.sweep()
            except Exception:
                log.exception("scheduler sweep failed; retrying in %s", self._settings.sweep_interval)

    # -- internals --------------------------------------------------------------------------

    def _lease_duration(self, requested: Any) -> timedelta:
        if requested is None:
            return self._settings.default_lease
        seconds = duration_seconds(requested)
        if seconds <= 0 or seconds > self._settings.max_lease.total_seconds():
            raise invalid_argument(
                "lease_duration",
                f"must be positive and at most {self._settings.max_lease.total_seconds():g}s",
            )
        return timedelta(seconds=seconds)

    async def _publish(self, announced: SystemEvents) -> None:
        if not announced.messages:
            return
        try:
            await self._stream.append_many(
                self._settings.firehose, [message.encode() for message in announced.messages]
            )
        except Exception:
            log.warning("could not publish %d lifecycle events", len(announced.messages), exc_info=True)

    async def _announce_ended(self) -> None:
        async with self._ended:
            self._ended.notify_all()


def _holds(run: Any, lease: runs_pb2.JobLease) -> bool:
    return (
        run is not None
        and run.status == "running"
        and run.lease_token == lease.lease_token
        and run.execution_sequence == lease.execution_sequence
    )


def _job(row: Any, memo_rows: list[Any], *, token: str, expires_at: datetime) -> runs_pb2.Job:
    event = event_from_json(row.input["event"])
    memo = [step for step in (memoized_step(r) for r in memo_rows) if step is not None]
    job = runs_pb2.Job(
        run_id=row.id,
        function_id=row.function_id,
        function_version=row.function_version,
        event=event,
        steps=memo,
        attempt=max(row.attempt, 1),
        lease_token=token,
        execution_sequence=row.execution_sequence + 1,
        parent_run_id=row.parent_run_id or "",
    )
    job.lease_expires_at.CopyFrom(to_timestamp(expires_at))
    return job


def _result(row: Any) -> runs_pb2.RunResult:
    run = run_to_proto(row)
    return runs_pb2.RunResult(
        run_id=run.id, function_id=run.function_id, status=run.status, output=run.output, error=run.error
    )


def _parse_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created_at, run_id = cursor.split("|", 1)
        return datetime.fromisoformat(created_at), run_id
    except ValueError:
        raise invalid_argument("cursor", "is not a cursor returned by a previous page") from None
