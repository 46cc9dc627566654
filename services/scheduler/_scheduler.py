"""The scheduler: turns events into runs and drives each run through its states.

States: queued -> running -> (completed | failed | cancelled), with paused when a retry policy says
so, and sleeping / waiting while a run is suspended on steps that yield (`_yields.py`). Every change
is one transaction fenced by the run's (lease token, execution sequence); the lifecycle events it
causes go on the firehose after the commit, in the order they happened.

Leases: a worker holds a run for `lease_duration` and renews it by heartbeat. A lease that lapses,
or is released because the worker's stream dropped, is cleared with a new execution sequence, so the
run is handed out again and anything the old holder still sends is rejected as stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ironflow.services.core.errors import ErrorCode, ServiceError, invalid_argument, not_found
from ironflow.services.core.firehose import DEFAULT_FIREHOSE_MAXLEN, FIREHOSE_STREAM
from ironflow.services.core.ids import Clock, IdSource, random_id, utc_now
from ironflow.services.core.protojson import duration_seconds, struct_to_dict, to_timestamp
from ironflow.services.core.signals import RunNotices
from ironflow.services.core.storage import Database, runs
from ironflow.services.core.streams import Stream
from ironflow.v1 import common_pb2, runs_pb2

from . import _queries
from ._admission import sweep_admissions
from ._catalog import CompiledFunction, FunctionCatalog
from ._convert import event_to_json, job_of
from ._cron import CronSettings, CronTicks
from ._invocation import invoked_event, start_run
from ._matchers import MatchCache, event_variables
from ._matching import has_open_waits, resume_waits, runs_to_cancel
from ._pending_runs import BATCHED, batch_events, sweep_pending_runs
from ._push import PushDispatcher, PushSettings
from ._reports import apply_report, end_run
from ._resume import resume
from ._store import (
    ACTIVE_STATUSES,
    ENDED_STATUSES,
    claim_runs,
    fenced_off,
    give_back,
    lock_run,
    next_due_at,
    steps_of,
    untick,
    update_run,
    update_runs,
)
from ._system_events import SystemEvents
from ._throttle import sweep_throttles
from ._tickets import JobTickets, TicketSettings
from ._timers import fire_due_waits
from ._triggering import EventKeys, run_for_event
from ._waits import next_timer_at
from ._yields import YieldContext

# When every event stored before the returned time has been through Trigger (None: all of them).
# Event waits only time out behind this mark, so an event that was stored in time but triggered late
# (the scheduler was down) still resumes its wait.
EventWatermark = Callable[[], Awaitable[datetime | None]]

log = logging.getLogger("ironflow.scheduler")

MAX_JOBS_PER_LEASE = 500
MAX_TIMERS_PER_ROUND = 500


@dataclass(frozen=True, kw_only=True)
class SchedulerSettings:
    firehose: str = FIREHOSE_STREAM
    # Lifecycle events trim the firehose too: runs can make many of them with no user event between.
    firehose_maxlen: int = DEFAULT_FIREHOSE_MAXLEN
    # How often lapsed leases and run timeouts are looked for.
    sweep_interval: timedelta = timedelta(seconds=1)
    default_lease: timedelta = timedelta(seconds=30)
    max_lease: timedelta = timedelta(minutes=10)
    # The timer loop looks for due timers at least this often (another replica may have added one).
    timer_interval: timedelta = timedelta(seconds=1)
    # Event waits time out only behind the ingest's trigger watermark, but never later than this
    # (an event the scheduler keeps refusing must not hold every other wait's timeout back forever).
    max_event_wait_hold: timedelta = timedelta(minutes=5)
    # WaitForRuns is woken by each run's end; this is only a backstop for runs ended by another replica.
    wait_recheck_interval: timedelta = timedelta(seconds=5)
    # The dispatcher that POSTs runs of push-mode functions to their endpoints.
    push: PushSettings = field(default_factory=PushSettings)
    # Job tickets for pull workers (their stream keys use the deployment's stream prefix).
    tickets: TicketSettings = field(default_factory=TicketSettings)
    # Cron triggers: how often they are looked at, and how late a tick may be before it counts as missed.
    cron: CronSettings = field(default_factory=CronSettings)
    # How often expired idempotency keys, idle rate limit and throttle keys and stale pending-run rows
    # are deleted (expired ones already count as free, stale ones are passed over; sweeping only
    # reclaims space).
    admission_sweep_interval: timedelta = timedelta(minutes=1)


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
        event_watermark: EventWatermark | None = None,
    ) -> None:
        self._db = db
        self._stream = stream
        self._catalog = catalog
        self._notices = notices
        self._settings = settings or SchedulerSettings()
        self._clock = clock
        self._ids = ids
        self._event_watermark = event_watermark
        self._matchers = MatchCache()
        # Callers of wait_for_runs, woken by the end of any run they wait for.
        self._run_waiters: dict[str, set[asyncio.Event]] = {}
        # A run may end in another scheduler replica; its notice wakes the waiters here too.
        notices.on_run_ended(self._wake_run_waiters)
        self._timers_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.push = PushDispatcher(
            jobs=self, catalog=catalog, notices=notices, db=db, settings=self._settings.push, clock=clock
        )
        self.tickets = JobTickets(
            db=db,
            stream=stream,
            catalog=catalog,
            notices=notices,
            settings=self._settings.tickets,
            clock=clock,
        )
        self.cron = CronTicks(
            db=db,
            catalog=catalog,
            after_commit=self._after_commit,
            settings=self._settings.cron,
            clock=clock,
            ids=ids,
        )

    @property
    def catalog(self) -> FunctionCatalog:
        return self._catalog

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._sweep_forever(), name="scheduler-sweeper"),
            asyncio.create_task(self._fire_timers_forever(), name="scheduler-timers"),
            asyncio.create_task(self._sweep_admissions_forever(), name="scheduler-admission-sweeper"),
        ]
        await self.push.start()
        await self.tickets.start()
        await self.cron.start()

    async def stop(self) -> None:
        await self.cron.stop()
        await self.tickets.stop()
        await self.push.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # -- triggering -------------------------------------------------------------------------

    async def trigger(self, event: common_pb2.Event) -> list[str]:
        """Create one run per matching function, idempotently; resume the waits the event matches and
        cancel the runs it cancels. Returns every run id the event started. A function whose rate
        limit or idempotency key refuses the event starts none; `system.function.<id>.skipped` says
        why (`_admission.py`). A throttled function's run is created due later (`_throttle.py`). A
        function that debounces or batches gives the id of the pending run the event joined
        (`_pending_runs.py`)."""
        if not event.id:
            raise invalid_argument("event.id", "is required")
        if event.namespace not in ("", "events"):
            return []  # topic messages and engine events never start runs
        stored_event = event_to_json(event)
        functions = await self._catalog.functions()
        variables = {"event": event_variables(stored_event)}
        matched = [f for f in functions if f.matches(event.name, variables)]
        cancelling = [f for f in functions if f.cancelled_by(event.name)]
        if not matched and not cancelling:
            async with self._db.reading() as conn:
                if not await has_open_waits(conn, event.name):
                    return []
        now = self._clock()
        # Keys are evaluated before the transaction opens: it holds locks, CEL needs none.
        keys = {function.id: EventKeys.of(function, variables) for function in matched}

        async def work(conn: AsyncConnection) -> tuple[list[str], list[str], SystemEvents]:
            announced = SystemEvents(ids=self._ids, now=now)
            run_ids = []
            for function in matched:
                run_id = await run_for_event(
                    conn,
                    function,
                    stored_event,
                    keys[function.id],
                    now=now,
                    ids=self._ids,
                    dialect=self._db.dialect,
                    events=announced,
                )
                if run_id is not None:
                    run_ids.append(run_id)
            await resume_waits(
                conn,
                stored_event,
                now=now,
                events=announced,
                matchers=self._matchers,
                dialect=self._db.dialect,
            )
            cancelled = []
            for run in await runs_to_cancel(conn, cancelling, stored_event):
                locked = await lock_run(conn, run.id, dialect=self._db.dialect)
                if locked is None or locked.status not in ACTIVE_STATUSES:
                    continue
                error = {"code": "CANCELLED", "message": f"cancelled by event {event.name} ({event.id})"}
                await end_run(conn, locked, "cancelled", now=now, events=announced, error=error)
                cancelled.append(run.id)
            return run_ids, cancelled, announced

        run_ids, cancelled, announced = await self._db.run(work)
        for run_id in cancelled:
            self._notices.run_cancelled(run_id, f"cancelled by event {event.name}")
        await self._after_commit(announced)
        return run_ids

    async def invoke(self, request: runs_pb2.InvokeRequest) -> str:
        """Start a run of a function directly (no event); returns its id. The same idempotency key
        returns the same run."""
        function = await self._active_function(request.function_id, field="function_id")
        now = self._clock()
        parent = (request.parent_run_id, request.parent_step_id) if request.parent_run_id else None
        event = invoked_event(
            self._ids("evt"),
            function_id=function.id,
            data=struct_to_dict(request.data),
            now=now,
            parent=parent,
            idempotency_key=request.idempotency_key,
        )

        async def work(conn: AsyncConnection) -> tuple[str, SystemEvents]:
            announced = SystemEvents(ids=self._ids, now=now)
            run_id = await start_run(
                conn,
                function,
                event,
                now=now,
                ids=self._ids,
                dialect=self._db.dialect,
                events=announced,
                parent_run_id=request.parent_run_id or None,
                parent_step_id=request.parent_step_id or None,
            )
            return run_id, announced

        run_id, announced = await self._db.run(work)
        await self._after_commit(announced)
        return run_id

    async def _active_function(self, function_id: str, *, field: str) -> CompiledFunction:
        if not function_id:
            raise invalid_argument(field, "is required")
        function = await self._catalog.get(function_id)
        if function is None:
            raise ServiceError(
                ErrorCode.NOT_FOUND, f"function {function_id!r} not found (or not active); register it first"
            )
        return function

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
        known = await self._catalog.known()
        prioritised = any((f := known.get(i)) is not None and f.priority is not None for i in function_ids)
        ticketed = list(request.run_ids)
        # A ticket of a prioritised function leases the function's best due run rather than the
        # one it names: tickets are issued in the order runs became due, priority may reorder them.
        substitute = bool(ticketed) and prioritised

        async def work(conn: AsyncConnection) -> tuple[list[runs_pb2.Job], datetime | None, SystemEvents]:
            announced = SystemEvents(ids=self._ids, now=now)
            claimed = (
                await claim_runs(
                    conn,
                    dialect=self._db.dialect,
                    function_ids=function_ids,
                    limit=min(request.max_jobs, len(ticketed)) if substitute else request.max_jobs,
                    now=now,
                    run_ids=(ticketed or None) if not substitute else None,
                    prioritised=prioritised,
                )
                if request.max_jobs
                else []
            )
            if substitute:
                taken = {row.id for row in claimed}
                passed_over = [run_id for run_id in ticketed if run_id not in taken]
                await untick(conn, passed_over)
                announced.due = announced.due or bool(passed_over)  # ticket them again
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
            batches = await batch_events(conn, [row.id for row in claimed if row.input.get(BATCHED)])
            jobs = [
                job_of(row, memo[row.id], token=token, expires_at=now + duration, batch=batches.get(row.id))
                for row in claimed
            ]
            # Due runs this claim left are not to be had now (their concurrency keys are full, or
            # another claim holds them): say when the next one is due later, not "now" again.
            short = len(claimed) < request.max_jobs
            return jobs, await next_due_at(conn, function_ids, after=now if short else None), announced

        jobs, due, announced = await self._db.run(work)
        await self._after_commit(announced)
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
            return sum([await give_back(conn, lease, available_at=now, now=now) for lease in leases])

        if await self._db.run(work):
            self._notices.work_available()
        return runs_pb2.ReleaseJobsResponse()

    async def defer_delivery(
        self, lease: runs_pb2.JobLease, *, delay: timedelta, error: dict[str, Any], endpoint: str
    ) -> bool:
        """A push request failed in transport (the endpoint is down, slow or answered nonsense): give
        the run back, due again after `delay`. User code did not fail, so no retry attempt is spent.
        False when the lease was no longer held (the run was cancelled or timed out meanwhile)."""
        now = self._clock()

        async def work(conn: AsyncConnection) -> tuple[bool, SystemEvents]:
            announced = SystemEvents(ids=self._ids, now=now)
            deferred = await give_back(conn, lease, available_at=now + delay, now=now)
            if deferred:
                retry_at = (now + delay).isoformat()
                announced.run(
                    lease.run_id, "delivery_failed", {"endpoint": endpoint, "retry_at": retry_at, **error}
                )
            return deferred, announced

        deferred, announced = await self._db.run(work)
        await self._after_commit(announced)
        return deferred

    async def report_jobs(self, request: runs_pb2.ReportJobRequest) -> runs_pb2.ReportJobResponse:
        """Record checkpoints and outcomes, one transaction for the whole batch; stale ones are refused."""
        now = self._clock()
        functions = await self._invoke_targets(request.reports)

        async def work(conn: AsyncConnection) -> tuple[list[bool], list[str], SystemEvents]:
            announced = SystemEvents(ids=self._ids, now=now)
            ctx = YieldContext(
                now=now,
                events=announced,
                dialect=self._db.dialect,
                ids=self._ids,
                matchers=self._matchers,
                functions=functions,
            )
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
                await apply_report(conn, run, report, ctx)
                accepted.append(True)
            return accepted, cancelled, announced

        accepted, cancelled, announced = await self._db.run(work)
        await self._after_commit(announced)
        return runs_pb2.ReportJobResponse(accepted=accepted, cancelled_run_ids=cancelled)

    async def _invoke_targets(
        self, reports: Sequence[runs_pb2.JobReport]
    ) -> dict[str, CompiledFunction | None]:
        """The functions yielded invokes start, looked up before the transaction opens."""
        wanted = {
            step_yield.invoke.function_id
            for report in reports
            if report.WhichOneof("outcome") == "yielded"
            for step_yield in report.yielded.yields
            if step_yield.WhichOneof("kind") == "invoke"
        }
        return {function_id: await self._catalog.get(function_id) for function_id in wanted}

    # -- reading ----------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> runs_pb2.Run:
        return await _queries.get_run(self._db, run_id)

    async def list_runs(self, request: runs_pb2.ListRunsRequest) -> runs_pb2.ListRunsResponse:
        return await _queries.list_runs(self._db, request)

    async def get_run_steps(self, run_id: str) -> list[runs_pb2.Step]:
        return await _queries.get_run_steps(self._db, run_id)

    async def wait_for_runs(
        self, run_ids: Sequence[str], within: timedelta
    ) -> tuple[list[runs_pb2.RunResult], bool]:
        """The runs' results once all have ended, or as they are when `within` has passed (those
        still going are marked `timed_out`). Woken by each run's end, not by polling."""
        if not run_ids:
            return [], True
        wanted = list(dict.fromkeys(run_ids))
        woken = asyncio.Event()
        for run_id in wanted:
            self._run_waiters.setdefault(run_id, set()).add(woken)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within.total_seconds()
        try:
            while True:
                woken.clear()
                rows = await _queries.read_runs(self._db, wanted)
                missing = [run_id for run_id in wanted if run_id not in rows]
                if missing:
                    raise not_found("run", missing[0])
                ended = all(row.status in ENDED_STATUSES for row in rows.values())
                remaining = deadline - loop.time()
                if ended or remaining <= 0:
                    results = [
                        _queries.run_result(rows[run_id], timed_out=rows[run_id].status not in ENDED_STATUSES)
                        for run_id in run_ids
                    ]
                    return results, ended
                recheck = min(remaining, self._settings.wait_recheck_interval.total_seconds())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), timeout=recheck)
        finally:
            for run_id in wanted:
                waiters = self._run_waiters.get(run_id)
                if waiters is not None:
                    waiters.discard(woken)
                    if not waiters:
                        del self._run_waiters[run_id]

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
        self._notices.run_cancelled(run_id, reason or "cancelled")
        await self._after_commit(announced)
        return await self.get_run(run_id)

    async def resume_run(self, run_id: str, from_step: str = "") -> runs_pb2.Run:
        """Requeue a failed or paused run; steps that completed stay memoized."""
        if not run_id:
            raise invalid_argument("id", "is required")
        now = self._clock()

        async def work(conn: AsyncConnection) -> SystemEvents:
            announced = SystemEvents(ids=self._ids, now=now)
            run = await lock_run(conn, run_id, dialect=self._db.dialect)
            if run is None:
                raise not_found("run", run_id)
            await resume(conn, run, from_step, now=now, events=announced, dialect=self._db.dialect)
            return announced

        await self._after_commit(await self._db.run(work))
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
        if lapsed:
            log.info("re-queued %d runs whose lease lapsed", len(lapsed))
            announced.due = True
        for run_id in overdue:
            self._notices.run_cancelled(run_id, "timed out")
        await self._after_commit(announced)
        return len(lapsed), len(overdue)

    async def fire_timers(self) -> tuple[int, datetime | None]:
        """Fire every due timer; returns (fired, when the next one is due)."""
        now = self._clock()
        oldest_hold = now - self._settings.max_event_wait_hold
        try:
            watermark = await self._event_watermark() if self._event_watermark is not None else None
        except ServiceError as exc:
            # Ingest is out of reach: assume triggering is as far behind as we ever wait for it.
            # Sleeps and invoke timeouts still fire; only event-wait timeouts are held back.
            log.debug("trigger watermark unavailable (%s); holding event-wait timeouts", exc.message)
            watermark = oldest_hold
        seen_until = now if watermark is None else min(now, max(watermark, oldest_hold))

        async def work(conn: AsyncConnection) -> tuple[int, int, datetime | None, SystemEvents]:
            announced = SystemEvents(ids=self._ids, now=now)
            fired = await fire_due_waits(
                conn,
                now=now,
                events_seen_until=seen_until,
                events=announced,
                dialect=self._db.dialect,
                limit=MAX_TIMERS_PER_ROUND,
            )
            return fired.fired, fired.skipped, await next_timer_at(conn), announced

        fired, skipped, next_at, announced = await self._db.run(work)
        await self._after_commit(announced)
        if skipped or fired >= MAX_TIMERS_PER_ROUND:
            next_at = now  # more are due: go again at once
        return fired, next_at

    async def sweep_admissions(self) -> int:
        """Delete expired idempotency keys, idle rate limit and throttle keys, and pending-run rows
        whose run was taken or ended (a batch of each); returns how many."""
        now = self._clock()

        async def work(conn: AsyncConnection) -> int:
            swept = await sweep_admissions(conn, now=now) + await sweep_throttles(conn, now=now)
            return swept + await sweep_pending_runs(conn, now=now)

        return await self._db.run(work)

    async def _sweep_admissions_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.admission_sweep_interval.total_seconds())
            try:
                await self.sweep_admissions()
            except Exception:
                log.exception(
                    "sweeping admission keys failed; retrying in %s", self._settings.admission_sweep_interval
                )

    async def _fire_timers_forever(self) -> None:
        interval = self._settings.timer_interval.total_seconds()
        while True:
            self._timers_changed.clear()
            try:
                fired, next_at = await self.fire_timers()
            except Exception:
                log.exception("firing timers failed; retrying in %s", self._settings.timer_interval)
                fired, next_at = 0, None
            delay = interval
            if next_at is not None:
                delay = min(interval, max((next_at - self._clock()).total_seconds(), 0.0))
            if fired == 0 and delay <= 0:
                delay = 0.05  # due timers whose runs are busy: let their transactions finish
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timers_changed.wait(), timeout=delay)

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
                self._settings.firehose,
                [message.encode() for message in announced.messages],
                maxlen=self._settings.firehose_maxlen,
            )
        except Exception:
            log.warning("could not publish %d lifecycle events", len(announced.messages), exc_info=True)

    def _wake_run_waiters(self, run_id: str) -> None:
        for woken in self._run_waiters.get(run_id, ()):
            woken.set()

    async def _after_commit(self, announced: SystemEvents) -> None:
        """Tell everyone what a committed transaction did: subscribers, waiters, dispatchers, timers."""
        await self._publish(announced)
        for run_id in announced.ended:
            self._notices.run_ended(run_id)
        if announced.due:
            self.tickets.runs_due()
            self._notices.work_available()
        if announced.earliest_timer is not None:
            self._timers_changed.set()


def _holds(run: Any, lease: runs_pb2.JobLease) -> bool:
    return (
        run is not None
        and run.status == "running"
        and run.lease_token == lease.lease_token
        and run.execution_sequence == lease.execution_sequence
    )
