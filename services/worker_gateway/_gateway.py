"""The worker-gateway: hands jobs to pull workers and carries their results to the scheduler.

Two transports with one meaning:
- `Connect`, a bidirectional stream: the worker registers, then receives jobs as slots free up and
  sends checkpoints, outcomes and heartbeats; the gateway acknowledges reports and can cancel a job.
  When the stream drops, the jobs it held are released at once and handed to another worker.
- `Poll` / `Heartbeat` / `Report`, unary calls for workers that cannot hold a stream: a poll waits
  up to 25 s for jobs; jobs of a worker that vanishes come back when their lease lapses.

The gateway keeps no durable state. Sessions live in memory; leases, fencing and retries are the
scheduler's, reached through `SchedulerApi` (the scheduler object in one process, gRPC otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from google.protobuf import duration_pb2

from ironflow.services.core.errors import ErrorCode, ServiceError, invalid_argument
from ironflow.services.core.ids import IdSource, random_id
from ironflow.services.core.job_reports import check_report
from ironflow.services.core.protojson import duration_seconds
from ironflow.services.core.signals import RunNotices
from ironflow.services.core.streams import Stream
from ironflow.services.core.telemetry import record_dispatch
from ironflow.v1 import functions_pb2, runs_pb2, workers_pb2

from ._batcher import Batcher
from ._session import StreamSession
from ._tickets import Ticket, TicketReader

log = logging.getLogger("ironflow.worker_gateway")

MAX_CONCURRENT_JOBS = 1000
# The most runs one LeaseJobs call may ask for (the scheduler refuses more).
LEASE_BATCH = 500
DEFAULT_CONCURRENT_JOBS = 10


class SchedulerApi(Protocol):
    """The job half of SchedulerService, as the gateway uses it."""

    async def lease_jobs(self, request: runs_pb2.LeaseJobsRequest) -> runs_pb2.LeaseJobsResponse: ...
    async def renew_leases(self, request: runs_pb2.RenewLeasesRequest) -> runs_pb2.RenewLeasesResponse: ...
    async def report_jobs(self, request: runs_pb2.ReportJobRequest) -> runs_pb2.ReportJobResponse: ...
    async def release_jobs(self, request: runs_pb2.ReleaseJobsRequest) -> runs_pb2.ReleaseJobsResponse: ...


# RegistryService.RegisterFunctions for a worker's functions: (definitions, takeover).
RegisterFunctions = Callable[[Sequence[functions_pb2.FunctionDefinition], bool], Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class GatewaySettings:
    lease_duration: timedelta = timedelta(seconds=30)
    heartbeat_interval: timedelta = timedelta(seconds=10)
    # Looked at even when nothing announced work (a notice may come from another process).
    idle_dispatch_interval: timedelta = timedelta(seconds=1)
    # Job tickets are read from `<stream_prefix>:jobs:<function_id>`; one taken by a replica that
    # then went silent is claimed by another after `ticket_claim_after`.
    stream_prefix: str = "ironflow"
    ticket_claim_after: timedelta = timedelta(seconds=10)
    default_poll_wait: timedelta = timedelta(seconds=20)
    max_poll_wait: timedelta = timedelta(seconds=25)


@dataclass(frozen=True)
class _ReportAnswer:
    accepted: bool
    cancelled: bool


class WorkerGateway:
    def __init__(
        self,
        *,
        scheduler: SchedulerApi,
        stream: Stream,
        register_functions: RegisterFunctions,
        notices: RunNotices,
        settings: GatewaySettings | None = None,
        ids: IdSource = random_id,
    ) -> None:
        self._scheduler = scheduler
        self._register_functions = register_functions
        self._notices = notices
        self._settings = settings or GatewaySettings()
        self._ids = ids
        self._tickets = TicketReader(
            stream=stream,
            prefix=self._settings.stream_prefix,
            consumer=ids("gw"),
            claim_after=self._settings.ticket_claim_after,
        )
        self._sessions: dict[str, StreamSession] = {}
        self._registered: dict[str, str] = {}  # worker id -> digest of what it registered
        self._reports: Batcher[runs_pb2.JobReport, _ReportAnswer] = Batcher(self._flush_reports)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        notices.on_run_cancelled(self._on_run_cancelled)

    @property
    def settings(self) -> GatewaySettings:
        return self._settings

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._reports.start()
        self._tasks = [asyncio.create_task(self._dispatch_forever(), name="gateway-dispatcher")]

    def begin_shutdown(self) -> None:
        """The server is draining: end streams (their jobs are released) and answer waiting polls now,
        so in-flight requests finish instead of holding the shutdown open."""
        self._closing = True
        for session in list(self._sessions.values()):
            session.close()
        self._notices.work_available()

    async def stop(self) -> None:
        self.begin_shutdown()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for session in list(self._sessions.values()):
            session.close()
        await self._reports.stop()

    # -- stream transport ---------------------------------------------------------------------

    async def connect(
        self, requests: AsyncIterator[workers_pb2.ConnectRequest]
    ) -> AsyncIterator[workers_pb2.ConnectResponse]:
        if self._closing:
            raise ServiceError(ErrorCode.UNAVAILABLE, "the server is shutting down")
        first = await anext(requests, None)
        if first is None or first.WhichOneof("message") != "register":
            raise invalid_argument(
                "register", "the first message on a Connect stream must register the worker"
            )
        registration = first.register
        max_jobs = await self._register(registration)
        loop = asyncio.get_running_loop()
        session = StreamSession(
            session_id=self._ids("wss"),
            worker_id=registration.worker_id,
            function_ids=[definition.id for definition in registration.functions],
            max_jobs=max_jobs,
            last_seen=loop.time(),
        )
        self._sessions[session.session_id] = session
        log.info(
            "worker %s connected (%d functions, %d slots)",
            session.worker_id,
            len(session.function_ids),
            session.max_jobs,
        )
        reader = asyncio.create_task(self._read(session, requests), name=f"gateway-read-{session.worker_id}")
        try:
            yield workers_pb2.ConnectResponse(
                registered=workers_pb2.Registered(
                    session_id=session.session_id,
                    heartbeat_interval=_duration(self._settings.heartbeat_interval),
                    lease_duration=_duration(self._settings.lease_duration),
                )
            )
            self._notices.work_available()  # new capacity
            while True:
                message = await session.outbox.get()
                if message is None:
                    break
                yield message
            failure = reader.exception() if reader.done() and not reader.cancelled() else None
            if failure is not None:
                raise failure
        finally:
            session.close()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self._sessions.pop(session.session_id, None)
            await self._release(session)
            log.info("worker %s disconnected", session.worker_id)

    async def _read(
        self, session: StreamSession, requests: AsyncIterator[workers_pb2.ConnectRequest]
    ) -> None:
        """Handle what the worker sends; reports run concurrently so one slow commit stalls nothing."""
        pending: set[asyncio.Task[None]] = set()
        try:
            async for request in requests:
                session.last_seen = asyncio.get_running_loop().time()
                kind = request.WhichOneof("message")
                if kind == "heartbeat":
                    await self._stream_heartbeat(session, request.heartbeat)
                elif kind == "report":
                    check_report(request.report, field="report")
                    task = asyncio.create_task(self._stream_report(session, request.report))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                else:
                    raise invalid_argument(
                        "message", f"unexpected {kind or 'empty'} message after registration"
                    )
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            session.close()

    async def _stream_report(self, session: StreamSession, report: runs_pb2.JobReport) -> None:
        try:
            answer = await self._reports.submit(report)
        except Exception:
            # The scheduler could not take it (e.g. the database is down): the worker's lease will lapse
            # and the run is retried elsewhere; tell the worker not to wait for an ack forever.
            log.exception("could not record a report for run %s", report.run_id)
            answer = _ReportAnswer(accepted=False, cancelled=False)
        ends_job = report.WhichOneof("outcome") is not None or not answer.accepted
        if ends_job and session.release(report.run_id):
            self._notices.work_available()  # a slot is free
        session.send(
            workers_pb2.ConnectResponse(
                report_ack=workers_pb2.ReportAck(
                    run_id=report.run_id,
                    execution_sequence=report.execution_sequence,
                    accepted=answer.accepted,
                )
            )
        )
        if answer.cancelled:
            session.send(
                workers_pb2.ConnectResponse(
                    cancel=workers_pb2.CancelJob(run_id=report.run_id, reason="cancelled")
                )
            )

    async def _stream_heartbeat(self, session: StreamSession, heartbeat: workers_pb2.WorkerHeartbeat) -> None:
        session.reported_free = max(heartbeat.free_slots, 0)
        leases = list(heartbeat.leases) or list(session.held.values())
        if not leases:
            self._notices.work_available()
            return
        response = await self._scheduler.renew_leases(
            runs_pb2.RenewLeasesRequest(
                worker_id=session.worker_id,
                leases=leases,
                lease_duration=_duration(self._settings.lease_duration),
            )
        )
        cancelled = set(response.cancelled_run_ids)
        for lost in response.lost:
            session.release(lost.run_id)
            if lost.run_id in cancelled:
                session.send(
                    workers_pb2.ConnectResponse(
                        cancel=workers_pb2.CancelJob(run_id=lost.run_id, reason="cancelled")
                    )
                )
            else:
                session.send(workers_pb2.ConnectResponse(lease_lost=lost))
        self._notices.work_available()

    async def _release(self, session: StreamSession) -> None:
        leases, session.held = list(session.held.values()), {}
        if not leases:
            return
        try:
            await self._scheduler.release_jobs(
                runs_pb2.ReleaseJobsRequest(worker_id=session.worker_id, leases=leases)
            )
            log.info("released %d jobs of worker %s", len(leases), session.worker_id)
        except Exception:
            log.exception(
                "could not release the jobs of worker %s; their leases will lapse", session.worker_id
            )

    def _on_run_cancelled(self, run_id: str, reason: str) -> None:
        for session in self._sessions.values():
            if session.release(run_id):
                session.send(
                    workers_pb2.ConnectResponse(cancel=workers_pb2.CancelJob(run_id=run_id, reason=reason))
                )
                self._notices.work_available()

    # -- dispatch -----------------------------------------------------------------------------

    async def _dispatch_forever(self) -> None:
        while True:
            wait = self._settings.idle_dispatch_interval.total_seconds()
            try:
                next_due = await self.dispatch()
            except Exception:
                log.exception("job dispatch failed; retrying")
                next_due = None
            if next_due is not None:
                wait = min(wait, max(next_due, 0.0))
            await self._notices.work.wait(wait)

    async def dispatch(self) -> float | None:
        """Take job tickets for the functions stream sessions with free slots serve, and lease the
        runs they name to those sessions. (Tickets carry their own due times, so this never has to
        come back at a particular moment: None.)"""
        loop = asyncio.get_running_loop()
        stale_after = self._settings.lease_duration.total_seconds()
        demand: dict[str, int] = {}
        for session in list(self._sessions.values()):
            if loop.time() - session.last_seen > stale_after:
                log.warning("worker %s went silent; closing its session", session.worker_id)
                session.close()
                continue
            for function_id in session.function_ids:
                demand[function_id] = demand.get(function_id, 0) + session.free_slots
        for function_id, wanted in demand.items():
            if wanted > 0:
                tickets = await self._tickets.take(function_id, min(wanted, LEASE_BATCH))
                if tickets:
                    await self._deliver(function_id, tickets)
        return None

    async def _deliver(self, function_id: str, tickets: list[Ticket]) -> None:
        """Lease the ticketed runs to sessions with free slots. A ticket is done once its run was
        leased or found not due any more (a duplicate, or the run moved on); the rest go back."""
        remaining = tickets
        done: list[Ticket] = []
        try:
            for session in list(self._sessions.values()):
                free = session.free_slots
                if not remaining or free <= 0 or function_id not in session.function_ids:
                    continue
                batch, remaining = remaining[:free], remaining[free:]
                response = await self._scheduler.lease_jobs(
                    runs_pb2.LeaseJobsRequest(
                        worker_id=session.worker_id,
                        function_ids=[function_id],
                        run_ids=[ticket.run_id for ticket in batch],
                        max_jobs=len(batch),
                        lease_duration=_duration(self._settings.lease_duration),
                    )
                )
                done.extend(batch)
                if session.closed:
                    # It went away while we leased: give the runs straight back (they are due again
                    # under a new sequence, so the scheduler tickets them anew).
                    leases = [_lease_of(job) for job in response.jobs]
                    if leases:
                        await self._scheduler.release_jobs(
                            runs_pb2.ReleaseJobsRequest(worker_id=session.worker_id, leases=leases)
                        )
                    continue
                for job in response.jobs:
                    session.assign(job)
        finally:
            await self._tickets.done(function_id, done)
            await self._tickets.give_back(function_id, [ticket for ticket in tickets if ticket not in done])

    # -- long-poll transport ------------------------------------------------------------------

    async def poll(self, request: workers_pb2.PollRequest) -> workers_pb2.PollResponse:
        registration = request.worker
        max_jobs = await self._register(registration)
        if request.max_jobs < 0:
            raise invalid_argument("max_jobs", "must not be negative")
        want = min(request.max_jobs or max_jobs, LEASE_BATCH)
        wait = self._settings.default_poll_wait.total_seconds()
        if request.HasField("wait"):
            wait = duration_seconds(request.wait)
            if not 0 <= wait <= self._settings.max_poll_wait.total_seconds():
                raise invalid_argument(
                    "wait", f"must be between 0 and {self._settings.max_poll_wait.total_seconds():g}s"
                )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        function_ids = [definition.id for definition in registration.functions]
        while True:
            response = await self._scheduler.lease_jobs(
                runs_pb2.LeaseJobsRequest(
                    worker_id=registration.worker_id,
                    function_ids=function_ids,
                    max_jobs=want,
                    lease_duration=_duration(self._settings.lease_duration),
                )
            )
            remaining = deadline - loop.time()
            if response.jobs or remaining <= 0 or self._closing:
                for job in response.jobs:
                    record_dispatch(job, worker_id=registration.worker_id, transport="poll")
                return workers_pb2.PollResponse(
                    jobs=response.jobs, heartbeat_interval=_duration(self._settings.heartbeat_interval)
                )
            pause = min(remaining, self._settings.idle_dispatch_interval.total_seconds())
            if response.HasField("next_due_at"):
                pause = min(pause, max(response.next_due_at.ToDatetime().timestamp() - _wall_clock(), 0.0))
            await self._notices.work.wait(pause)

    async def heartbeat(self, request: workers_pb2.HeartbeatRequest) -> workers_pb2.HeartbeatResponse:
        if not request.worker_id:
            raise invalid_argument("worker_id", "is required")
        if not request.leases:
            return workers_pb2.HeartbeatResponse()
        response = await self._scheduler.renew_leases(
            runs_pb2.RenewLeasesRequest(
                worker_id=request.worker_id,
                leases=request.leases,
                lease_duration=_duration(self._settings.lease_duration),
            )
        )
        return workers_pb2.HeartbeatResponse(lost=response.lost, cancelled_run_ids=response.cancelled_run_ids)

    async def report(self, request: workers_pb2.ReportRequest) -> workers_pb2.ReportResponse:
        if not request.worker_id:
            raise invalid_argument("worker_id", "is required")
        for index, report in enumerate(request.reports):
            check_report(report, field=f"reports[{index}]")
        answers = await asyncio.gather(*(self._reports.submit(report) for report in request.reports))
        return workers_pb2.ReportResponse(
            accepted=[answer.accepted for answer in answers],
            cancelled_run_ids=[
                report.run_id
                for report, answer in zip(request.reports, answers, strict=True)
                if answer.cancelled
            ],
        )

    # -- internals ----------------------------------------------------------------------------

    async def _register(self, registration: workers_pb2.WorkerRegistration) -> int:
        """Validate a worker's registration and register its functions; returns its job slots."""
        if not registration.worker_id:
            raise invalid_argument("worker.worker_id", "is required")
        if not registration.functions:
            raise invalid_argument("worker.functions", "a worker must register at least one function")
        if not 0 <= registration.max_concurrent_jobs <= MAX_CONCURRENT_JOBS:
            raise invalid_argument(
                "worker.max_concurrent_jobs", f"must be between 1 and {MAX_CONCURRENT_JOBS}"
            )
        digest = hashlib.sha256(
            b"".join(
                definition.SerializeToString(deterministic=True) for definition in registration.functions
            )
            + bytes([registration.takeover])
        ).hexdigest()
        if self._registered.get(registration.worker_id) != digest:
            await self._register_functions(list(registration.functions), registration.takeover)
            self._registered[registration.worker_id] = digest
        return registration.max_concurrent_jobs or DEFAULT_CONCURRENT_JOBS

    async def _flush_reports(self, reports: Sequence[runs_pb2.JobReport]) -> list[_ReportAnswer]:
        response = await self._scheduler.report_jobs(runs_pb2.ReportJobRequest(reports=reports))
        cancelled = set(response.cancelled_run_ids)
        return [
            _ReportAnswer(accepted=accepted, cancelled=report.run_id in cancelled)
            for report, accepted in zip(reports, response.accepted, strict=True)
        ]


def _lease_of(job: runs_pb2.Job) -> runs_pb2.JobLease:
    return runs_pb2.JobLease(
        run_id=job.run_id, lease_token=job.lease_token, execution_sequence=job.execution_sequence
    )


def _duration(value: timedelta) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromTimedelta(value)
    return message


def _wall_clock() -> float:
    return time.time()
