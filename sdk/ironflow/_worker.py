"""`ironflow.Worker`: a pull worker that dials out to Ironflow and runs jobs of its functions.

Lifecycle: `await worker.run()` until stopped (SIGTERM or SIGINT drain in-flight jobs first), or
`worker.start()` / `await worker.stop()` to run inside another application's event loop. When the
server goes away the worker reconnects with jittered exponential backoff; jobs it was running are
stopped, because the server hands them to another worker as soon as the connection drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry.trace import TracerProvider
from tenacity import AsyncRetrying, retry_if_exception, retry_if_exception_type, wait_random_exponential

from ironflow.v1 import runs_pb2, workers_pb2

from ._client import Client, resolve_server_url
from ._errors import IronflowError
from ._execution import execute
from ._function import Function
from ._models import PublishResult
from ._steps import JobChannel
from ._tracing import get_tracer
from ._transport import PollTransport, StreamTransport, Transport, TransportClosedError

log = logging.getLogger("ironflow.worker")

SDK_NAME = "ironflow-python"
# Answers that will not change on a retry: the worker stops and raises them.
_REFUSALS = (
    "INVALID_ARGUMENT",
    "FAILED_PRECONDITION",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "UNIMPLEMENTED",
)
# A session that lasted this long counts as healthy; reconnect at once after it ends.
_STABLE_SESSION = 10.0


@dataclass
class _Running:
    job: runs_pb2.Job
    task: asyncio.Task[None]


class Worker:
    def __init__(
        self,
        server_url: str | None = None,
        functions: Sequence[Function] = (),
        *,
        max_concurrent_jobs: int = 10,
        transport: Literal["stream", "poll"] = "stream",
        worker_id: str | None = None,
        api_key: str | None = None,
        drain_timeout: float = 30.0,
        takeover: bool = False,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        if not functions:
            raise ValueError("functions: a worker needs at least one @ironflow.function")
        by_id: dict[str, Function] = {}
        for index, function in enumerate(functions):
            if not isinstance(function, Function):
                raise ValueError(f"functions[{index}]: not an @ironflow.function ({function!r})")
            if function.mode != "pull":
                raise ValueError(
                    f"functions[{index}]: {function.id!r} is a push-mode function; serve it instead"
                )
            if function.id in by_id:
                raise ValueError(f"functions[{index}]: function id {function.id!r} appears twice")
            by_id[function.id] = function
        if isinstance(max_concurrent_jobs, bool) or not 1 <= max_concurrent_jobs <= 1000:
            raise ValueError(f"max_concurrent_jobs: must be between 1 and 1000, got {max_concurrent_jobs!r}")
        if transport not in ("stream", "poll"):
            raise ValueError(f"transport: must be 'stream' or 'poll', got {transport!r}")
        self.server_url = resolve_server_url(server_url)
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.functions = by_id
        self.max_concurrent_jobs = max_concurrent_jobs
        self.transport_name = transport
        self._api_key = api_key or os.environ.get("IRONFLOW_API_KEY")
        self._drain_timeout = drain_timeout
        self._takeover = takeover
        # Spans for runs and steps (no-ops unless a provider is given or set up globally).
        self._tracer = get_tracer(tracer_provider)
        self._running: dict[str, _Running] = {}
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._draining = False
        self._task: asyncio.Task[None] | None = None
        self._transport: Transport | None = None
        # For `step.publish`: opened with the first publish, closed when the worker stops.
        self._client: Client | None = None
        self.connected = asyncio.Event()

    # -- public lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        """Run until `stop()` or SIGTERM/SIGINT; in-flight jobs get `drain_timeout` to finish."""
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, self._request_stop)
                installed.append(signum)
        try:
            await self._run_sessions()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)

    def start(self) -> None:
        """Run in the background of the current event loop (for embedding in an app)."""
        if self._task is not None and not self._task.done():
            raise RuntimeError("the worker is already running")
        self._stopping.clear()
        self._task = asyncio.get_running_loop().create_task(
            self._run_sessions(), name=f"ironflow-worker-{self.worker_id}"
        )

    async def stop(self) -> None:
        """Stop taking jobs, let in-flight ones finish (up to `drain_timeout`), then disconnect."""
        self._request_stop()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def running_jobs(self) -> int:
        return len(self._running)

    @property
    def free_slots(self) -> int:
        return 0 if self._draining else max(self.max_concurrent_jobs - len(self._running), 0)

    # -- sessions -----------------------------------------------------------------------------

    def _request_stop(self) -> None:
        if not self._stopping.is_set():
            log.info("worker %s stopping: draining %d jobs", self.worker_id, len(self._running))
        self._stopping.set()

    def _registration(self) -> workers_pb2.WorkerRegistration:
        return workers_pb2.WorkerRegistration(
            worker_id=self.worker_id,
            functions=[function.definition() for function in self.functions.values()],
            max_concurrent_jobs=self.max_concurrent_jobs,
            takeover=self._takeover,
            sdk=SDK_NAME,
        )

    def _make_transport(self) -> Transport:
        cls = StreamTransport if self.transport_name == "stream" else PollTransport
        return cls(self.server_url, api_key=self._api_key, registration=self._registration(), worker=self)

    async def _run_sessions(self) -> None:
        stop_waiter = asyncio.create_task(self._stopping.wait())
        loop = asyncio.get_running_loop()
        quick_failures = 0
        try:
            while not self._stopping.is_set():
                started = loop.time()
                transport = self._make_transport()
                self._transport = transport
                session = asyncio.create_task(self._connect_and_serve(transport))
                await asyncio.wait({session, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
                if session.done() and not session.cancelled():
                    refused = session.exception()
                    if isinstance(refused, IronflowError) and refused.code in _REFUSALS:
                        await transport.close()
                        raise refused
                if self._stopping.is_set():
                    await self._drain(transport)
                    session.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await session
                    await transport.close()
                    break
                failure = session.exception() if not session.cancelled() else None
                await transport.close()
                # The connection dropped: the server re-queues our jobs, so stop running them here.
                await self._abandon_jobs("the connection to the server dropped")
                log.warning("worker %s: disconnected (%s); reconnecting", self.worker_id, failure)
                quick_failures = quick_failures + 1 if loop.time() - started < _STABLE_SESSION else 0
                if quick_failures:
                    # Sessions that die at once (a server restarting) must not spin.
                    await asyncio.wait({stop_waiter}, timeout=min(0.2 * 2**quick_failures, 10.0))
        finally:
            stop_waiter.cancel()
            self.connected.clear()
            await self._abandon_jobs("the worker stopped")
            if self._client is not None:
                await self._client.close()
                self._client = None

    async def _connect_and_serve(self, transport: Transport) -> None:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransportClosedError)
            | retry_if_exception(lambda exc: isinstance(exc, IronflowError) and exc.code not in _REFUSALS),
            wait=wait_random_exponential(multiplier=0.25, max=10),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                try:
                    await transport.open()
                except IronflowError as exc:
                    if exc.code in _REFUSALS:
                        # A registration the server refuses will be refused again: give up loudly.
                        log.error("worker %s: registration refused: %s", self.worker_id, exc)
                        raise
                    log.warning("worker %s: cannot connect (%s); retrying", self.worker_id, exc.message)
                    raise
        log.info("worker %s connected to %s (%s)", self.worker_id, self.server_url, self.transport_name)
        self.connected.set()
        try:
            await transport.serve()
        finally:
            self.connected.clear()

    async def _drain(self, transport: Transport) -> None:
        self._draining = True
        await transport.draining()
        if self._running:
            tasks = [running.task for running in self._running.values()]
            _, pending = await asyncio.wait(tasks, timeout=self._drain_timeout)
            if pending:
                log.warning(
                    "worker %s: %d jobs did not finish within the drain timeout", self.worker_id, len(pending)
                )

    async def _abandon_jobs(self, reason: str) -> None:
        running = list(self._running.values())
        for entry in running:
            entry.task.cancel()
        if running:
            log.info("worker %s: stopped %d jobs (%s)", self.worker_id, len(running), reason)
            await asyncio.gather(*(entry.task for entry in running), return_exceptions=True)

    # -- called by transports -----------------------------------------------------------------

    def accept(self, job: runs_pb2.Job, channel: JobChannel) -> bool:
        """Start a job the server assigned; False if this worker cannot take it (it lapses back)."""
        function = self.functions.get(job.function_id)
        if function is None or self._draining or job.run_id in self._running:
            log.warning("worker %s: not taking job for run %s", self.worker_id, job.run_id)
            return False
        task = asyncio.get_running_loop().create_task(
            self._execute(job, function, channel), name=f"run-{job.run_id}"
        )
        self._running[job.run_id] = _Running(job=job, task=task)
        return True

    async def _publish(self, topic: str, data: dict[str, Any], idempotency_key: str) -> PublishResult:
        if self._client is None:
            self._client = Client(self.server_url, api_key=self._api_key)
        return await self._client.publish(topic, data, idempotency_key=idempotency_key)

    async def _execute(self, job: runs_pb2.Job, function: Function, channel: JobChannel) -> None:
        try:
            await execute(job, function, channel, self._publish, tracer=self._tracer)
        except asyncio.CancelledError:
            log.info("run %s stopped on this worker", job.run_id)
            raise
        except Exception:
            # Reporting failed (e.g. the connection dropped): the lease lapses and the run moves on.
            log.exception("run %s: could not finish reporting", job.run_id)
        finally:
            self._running.pop(job.run_id, None)
            self._slot_freed.set()

    def stop_job(self, run_id: str, reason: str) -> None:
        """The server cancelled the run or took the lease away: stop it without reporting."""
        entry = self._running.get(run_id)
        if entry is not None:
            log.info("run %s: %s", run_id, reason)
            entry.task.cancel()

    def leases(self) -> list[runs_pb2.JobLease]:
        return [
            runs_pb2.JobLease(
                run_id=entry.job.run_id,
                lease_token=entry.job.lease_token,
                execution_sequence=entry.job.execution_sequence,
            )
            for entry in self._running.values()
        ]

    async def wait_for_free_slot(self) -> None:
        while self.free_slots <= 0:
            self._slot_freed.clear()
            await self._slot_freed.wait()
