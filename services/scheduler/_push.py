"""The push dispatcher: runs of push-mode functions are POSTed, signed, to their endpoint.

Each request carries one execution segment (a `PushRequest`: the job, as a pull worker would get
it, plus a time budget) and the answer is the `JobReport` a pull worker would send. The dispatcher
leases jobs exactly as the worker-gateway does, so fencing, retries, timers and waits are shared.

- Timeout: the function's `timeout`, capped by `request_timeout` [30s]. The endpoint gets a
  slightly smaller budget so it answers before we give up.
- Concurrency: at most `concurrency` requests in flight per endpoint.
- Transport failures (connection errors, timeouts, non-2xx answers) are not failures of user code:
  the run goes back to the queue with jittered exponential backoff and no retry attempt is spent.
  The endpoint's circuit breaker counts them (`_circuit.py`); while it is open the runs stay queued.
- An answer without an outcome means the budget ran out between steps: the checkpoints are
  recorded and the run is due again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import httpx
from google.protobuf import json_format

from ironflow.services.core.errors import ServiceError
from ironflow.services.core.ids import Clock
from ironflow.services.core.job_reports import check_report
from ironflow.services.core.signals import RunNotices
from ironflow.services.core.signing import SIGNATURE_HEADER, sign
from ironflow.services.core.storage import Database
from ironflow.v1 import runs_pb2

from ._catalog import CompiledFunction, FunctionCatalog
from ._circuit import CircuitBreakers

log = logging.getLogger("ironflow.scheduler.push")

# A lease outlives its request by this much, so a slow answer is still accepted.
_LEASE_MARGIN = timedelta(seconds=10)
# The endpoint's budget leaves this share of the request timeout (at most 5 s) for the answer.
_ANSWER_SHARE = 0.2
_MAX_ANSWER_RESERVE = 5.0
_MAX_ERROR_TEXT = 500


@dataclass(frozen=True, kw_only=True)
class PushSettings:
    # Shared with the endpoints (`ironflow.serve(signing_key=...)`); None sends unsigned requests.
    signing_key: str | None = None
    request_timeout: timedelta = timedelta(seconds=30)
    concurrency: int = 10
    breaker_threshold: int = 5
    breaker_reset: timedelta = timedelta(seconds=30)
    retry_initial: timedelta = timedelta(seconds=1)
    retry_max: timedelta = timedelta(seconds=60)
    # Queued push runs are looked for at least this often (a notice may come from another process).
    idle_interval: timedelta = timedelta(seconds=1)


class JobsApi(Protocol):
    """What the dispatcher needs of the scheduler."""

    async def lease_jobs(self, request: runs_pb2.LeaseJobsRequest) -> runs_pb2.LeaseJobsResponse: ...
    async def report_jobs(self, request: runs_pb2.ReportJobRequest) -> runs_pb2.ReportJobResponse: ...
    async def release_jobs(self, request: runs_pb2.ReleaseJobsRequest) -> runs_pb2.ReleaseJobsResponse: ...
    async def defer_delivery(
        self, lease: runs_pb2.JobLease, *, delay: timedelta, error: dict[str, Any], endpoint: str
    ) -> bool: ...


class DeliveryError(Exception):
    """A request that did not produce a usable answer: its code and message go on the run's event."""

    def __init__(self, code: str, message: str, *, transport: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # False when the endpoint answered but the answer was unusable: not the endpoint's health.
        self.transport = transport


class PushDispatcher:
    def __init__(
        self,
        *,
        jobs: JobsApi,
        catalog: FunctionCatalog,
        notices: RunNotices,
        db: Database,
        settings: PushSettings,
        clock: Clock,
    ) -> None:
        self._jobs = jobs
        self._catalog = catalog
        self._notices = notices
        self._settings = settings
        self.breakers = CircuitBreakers(
            db, threshold=settings.breaker_threshold, reset=settings.breaker_reset, clock=clock
        )
        self._worker_id = f"push:{socket.gethostname()}:{os.getpid()}"[:128]
        self._in_flight: dict[str, int] = defaultdict(int)
        # Consecutive delivery failures of each run, for its backoff (cleared when one succeeds).
        self._run_failures: dict[str, int] = {}
        self._deliveries: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._http: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._warned_unsigned = False
        self._redirects_seen: set[str] = set()

    async def start(self) -> None:
        await self.breakers.load()
        # Connection pooling per host; each request sets its own timeout.
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=100)
        )
        self._task = asyncio.create_task(self._dispatch_forever(), name="push-dispatcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for delivery in list(self._deliveries):
            delivery.cancel()
        await asyncio.gather(*self._deliveries, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- dispatching --------------------------------------------------------------------------

    async def _dispatch_forever(self) -> None:
        idle = self._settings.idle_interval.total_seconds()
        while True:
            self._slot_freed.clear()
            try:
                await self.dispatch_once()
            except Exception:
                log.exception("push dispatch failed; retrying in %gs", idle)
            notified = asyncio.ensure_future(self._notices.work.wait(idle))
            freed = asyncio.ensure_future(self._slot_freed.wait())
            try:
                await asyncio.wait({notified, freed}, timeout=idle, return_when=asyncio.FIRST_COMPLETED)
            finally:
                notified.cancel()
                freed.cancel()

    async def dispatch_once(self) -> int:
        """Lease what each endpoint can take now and send it; returns the number of requests sent."""
        endpoints: dict[str, list[CompiledFunction]] = defaultdict(list)
        for function in await self._catalog.functions():
            if function.mode == "push" and function.endpoint_url:
                endpoints[function.endpoint_url].append(function)
        sent = 0
        for url, functions in endpoints.items():
            room = await self.breakers.admits(url, self._in_flight[url], self._settings.concurrency)
            if room <= 0:
                continue
            request = runs_pb2.LeaseJobsRequest(
                worker_id=self._worker_id, function_ids=[f.id for f in functions], max_jobs=room
            )
            request.lease_duration.FromTimedelta(self._settings.request_timeout + _LEASE_MARGIN)
            leased = await self._jobs.lease_jobs(request)
            by_id = {function.id: function for function in functions}
            for job in leased.jobs:
                self._in_flight[url] += 1
                task = asyncio.create_task(self._deliver(url, job, by_id[job.function_id]))
                self._deliveries.add(task)
                task.add_done_callback(self._deliveries.discard)
                sent += 1
        return sent

    async def _deliver(self, url: str, job: runs_pb2.Job, function: CompiledFunction) -> None:
        lease = runs_pb2.JobLease(
            run_id=job.run_id, lease_token=job.lease_token, execution_sequence=job.execution_sequence
        )
        try:
            try:
                report = await self._post(url, job, self._request_timeout(function))
                await self._record(report)
            except DeliveryError as failure:
                await self._failed(url, lease, failure)
            else:
                self._run_failures.pop(job.run_id, None)
                await self.breakers.succeeded(url)
        except asyncio.CancelledError:
            # Stopping: hand the run back now rather than when its lease lapses.
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self._jobs.release_jobs(
                        runs_pb2.ReleaseJobsRequest(worker_id=self._worker_id, leases=[lease])
                    )
                )
            raise
        except Exception:
            log.exception("run %s: could not record the answer of %s", job.run_id, url)
        finally:
            self._in_flight[url] -= 1
            self._slot_freed.set()

    async def _post(self, url: str, job: runs_pb2.Job, seconds: float) -> runs_pb2.JobReport:
        assert self._http is not None, "start() first"
        push = runs_pb2.PushRequest(job=job)
        push.budget.FromTimedelta(
            timedelta(seconds=seconds - min(seconds * _ANSWER_SHARE, _MAX_ANSWER_RESERVE))
        )
        body = json_format.MessageToJson(push, preserving_proto_field_name=True, indent=None).encode()
        headers = {"content-type": "application/json", "user-agent": "ironflow-scheduler"}
        if self._settings.signing_key:
            headers[SIGNATURE_HEADER] = sign(self._settings.signing_key, body)
        elif not self._warned_unsigned:
            self._warned_unsigned = True
            log.warning(
                "push requests are sent unsigned: set IRONFLOW_SIGNING_KEY on the server and the apps"
            )
        timeout = httpx.Timeout(seconds, connect=min(seconds, 5.0))
        try:
            response = await self._http.post(url, content=body, headers=headers, timeout=timeout)
            target = _same_origin_redirect(response)
            if target is not None:
                # Frameworks redirect `/api/ironflow` to `/api/ironflow/` (a mounted app): follow that,
                # but never to another host, which would receive a signed request it could replay.
                self._warn_redirect(url, target)
                response = await self._http.post(target, content=body, headers=headers, timeout=timeout)
        except httpx.TimeoutException:
            raise DeliveryError("TIMEOUT", f"no answer from {url} within {seconds:g}s") from None
        except httpx.HTTPError as exc:
            raise DeliveryError("UNREACHABLE", f"{url}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise DeliveryError(f"HTTP_{response.status_code}", _describe(response))
        report = runs_pb2.JobReport()
        try:
            json_format.Parse(response.content, report, ignore_unknown_fields=True)
            # The endpoint cannot speak for another run or lease: the job's own identity is used.
            report.run_id, report.lease_token = job.run_id, job.lease_token
            report.execution_sequence = job.execution_sequence
            check_report(report, field="answer")
        except (json_format.ParseError, ServiceError) as exc:
            raise DeliveryError("INVALID_ANSWER", f"{url} answered with {exc}", transport=False) from None
        return report

    def _warn_redirect(self, url: str, target: str) -> None:
        if url not in self._redirects_seen:
            self._redirects_seen.add(url)
            log.warning(
                "push endpoint %s redirects to %s: register that URL to save a round trip", url, target
            )

    async def _record(self, report: runs_pb2.JobReport) -> None:
        answer = await self._jobs.report_jobs(
            runs_pb2.ReportJobRequest(worker_id=self._worker_id, reports=[report])
        )
        if answer.accepted and answer.accepted[0] and report.WhichOneof("outcome") is None:
            # Out of budget between steps: the next segment is due at once.
            lease = runs_pb2.JobLease(
                run_id=report.run_id,
                lease_token=report.lease_token,
                execution_sequence=report.execution_sequence,
            )
            await self._jobs.release_jobs(
                runs_pb2.ReleaseJobsRequest(worker_id=self._worker_id, leases=[lease])
            )

    async def _failed(self, url: str, lease: runs_pb2.JobLease, failure: DeliveryError) -> None:
        error = {"code": failure.code, "message": failure.message[:_MAX_ERROR_TEXT]}
        if failure.transport:
            await self.breakers.failed(url, error)
        attempt = self._run_failures.get(lease.run_id, 0) + 1
        self._run_failures[lease.run_id] = attempt
        delay = self._backoff(attempt)
        log.warning(
            "run %s: push to %s failed (%s: %s); again in %.1fs",
            lease.run_id,
            url,
            failure.code,
            failure.message,
            delay.total_seconds(),
        )
        deferred = await self._jobs.defer_delivery(
            lease, delay=delay, error={**error, "delivery_attempt": attempt}, endpoint=url
        )
        if not deferred:
            self._run_failures.pop(lease.run_id, None)  # cancelled or ended meanwhile: it will not return

    def _backoff(self, attempt: int) -> timedelta:
        """Exponential, the upper half jittered, so runs that failed together do not come back together."""
        ceiling = min(
            self._settings.retry_initial.total_seconds() * 2 ** (attempt - 1),
            self._settings.retry_max.total_seconds(),
        )
        return timedelta(seconds=random.uniform(ceiling / 2, ceiling))

    def _request_timeout(self, function: CompiledFunction) -> float:
        cap = self._settings.request_timeout.total_seconds()
        own = function.options.timeout
        return min(own, cap) if own else cap


def _same_origin_redirect(response: httpx.Response) -> str | None:
    """Where a 307/308 (which keep the method and body) points, if it is the same scheme, host and port."""
    if response.status_code not in (307, 308) or "location" not in response.headers:
        return None
    target = response.request.url.join(response.headers["location"])
    source = response.request.url
    if (target.scheme, target.host, target.port) != (source.scheme, source.host, source.port):
        return None
    return str(target)


def _describe(response: httpx.Response) -> str:
    """An error answer in one line: its JSON `code`/`message` when it has them, else the start of it."""
    try:
        document = response.json()
    except ValueError:
        document = None
    if isinstance(document, dict) and "message" in document:
        return f"{response.status_code} {document.get('code', '')}: {document['message']}"[:_MAX_ERROR_TEXT]
    return f"{response.status_code}: {response.text[:200]}"
