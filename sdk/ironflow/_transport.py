"""How a worker talks to the worker-gateway: a bidirectional gRPC stream, or unary long-polls.

Both give the worker the same things: jobs as slots free up, a `report()` that returns whether the
server accepted it, heartbeats that renew leases, and notice of cancelled or lost jobs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from google.protobuf import duration_pb2

from ironflow.v1 import runs_pb2, workers_pb2, workers_pb2_grpc

from ._client import grpc_channel, rpc_error
from ._errors import IronflowError

if TYPE_CHECKING:
    from ._worker import Worker

log = logging.getLogger("ironflow.worker")

POLL_WAIT_SECONDS = 20.0
DEFAULT_HEARTBEAT_SECONDS = 10.0


class TransportClosedError(Exception):
    """The connection to the server ended; the worker reconnects."""


class Transport(Protocol):
    async def open(self) -> None: ...
    async def serve(self) -> None: ...
    async def draining(self) -> None: ...
    async def close(self) -> None: ...
    async def report(self, report: runs_pb2.JobReport, *, wait: bool) -> bool: ...


def _seconds(message: duration_pb2.Duration, default: float) -> float:
    value = message.seconds + message.nanos / 1e9
    return value if value > 0 else default


class _Base:
    def __init__(
        self,
        server_url: str,
        *,
        api_key: str | None,
        registration: workers_pb2.WorkerRegistration,
        worker: Worker,
    ) -> None:
        self._server_url = server_url
        self._channel = grpc_channel(server_url)
        self._stub = workers_pb2_grpc.WorkerServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
        self._registration = registration
        self._worker = worker
        self._heartbeat_seconds = DEFAULT_HEARTBEAT_SECONDS

    async def close(self) -> None:
        await self._channel.close()

    def _closed(self, exc: grpc.aio.AioRpcError) -> Exception:
        error = rpc_error(exc, self._server_url)
        if error.code in ("UNAVAILABLE", "CANCELLED", "INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED"):
            return TransportClosedError(error.message)
        return error


class StreamTransport(_Base):
    """`WorkerService.Connect`: one long-lived bidirectional stream."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._call: Any = None
        self._outbox: asyncio.Queue[workers_pb2.ConnectRequest] = asyncio.Queue()
        # Per run, one entry per report sent: the futures its single ack answers.
        self._acks: dict[str, collections.deque[list[asyncio.Future[bool]]]] = collections.defaultdict(
            collections.deque
        )
        # Per run, the report still waiting in the outbox, which later reports join (see `report`).
        self._unsent: dict[str, tuple[workers_pb2.ConnectRequest, list[asyncio.Future[bool]]]] = {}

    async def open(self) -> None:
        self._call = self._stub.Connect(metadata=self._metadata)
        try:
            await self._call.write(workers_pb2.ConnectRequest(register=self._registration))
            first = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise self._closed(exc) from None
        if first is grpc.aio.EOF or first.WhichOneof("message") != "registered":
            raise TransportClosedError("the server ended the stream before confirming registration")
        self._heartbeat_seconds = _seconds(first.registered.heartbeat_interval, DEFAULT_HEARTBEAT_SECONDS)

    async def serve(self) -> None:
        helpers = [asyncio.create_task(self._write_forever()), asyncio.create_task(self._heartbeat_forever())]
        try:
            while True:
                try:
                    message = await self._call.read()
                except grpc.aio.AioRpcError as exc:
                    raise self._closed(exc) from None
                if message is grpc.aio.EOF:
                    raise TransportClosedError("the server closed the stream")
                self._dispatch(message)
        finally:
            for helper in helpers:
                helper.cancel()
            for waiting in self._acks.values():
                for futures in waiting:
                    for future in futures:
                        if not future.done():
                            future.set_exception(
                                TransportClosedError("disconnected before the server answered")
                            )
            self._acks.clear()
            self._unsent.clear()
            if self._call is not None:
                self._call.cancel()

    def _dispatch(self, message: workers_pb2.ConnectResponse) -> None:
        kind = message.WhichOneof("message")
        if kind == "job":
            self._worker.accept(message.job, self)
        elif kind == "report_ack":
            waiting = self._acks.get(message.report_ack.run_id)
            if waiting:
                for future in waiting.popleft():
                    if not future.done():
                        future.set_result(message.report_ack.accepted)
        elif kind == "cancel":
            self._worker.stop_job(
                message.cancel.run_id, f"cancelled ({message.cancel.reason or 'no reason'})"
            )
        elif kind == "lease_lost":
            self._worker.stop_job(message.lease_lost.run_id, "lease lost")

    async def report(self, report: runs_pb2.JobReport, *, wait: bool) -> bool:
        """Queue a report; `wait` for the server's answer. A report of a run whose previous report is
        still in the outbox (a step's start and its end, when the step is quick or the stream busy)
        joins that one: one message, one ack for both, one pass through the scheduler."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        unsent = self._unsent.get(report.run_id)
        if unsent is not None and _joinable(unsent[0].report, report):
            queued, futures = unsent
            queued.report.checkpoints.extend(report.checkpoints)
            outcome = report.WhichOneof("outcome")
            if outcome is not None:
                queued.report.MergeFrom(runs_pb2.JobReport(**{outcome: getattr(report, outcome)}))
            futures.append(future)
        else:
            request = workers_pb2.ConnectRequest(report=report)
            futures = [future]
            self._acks[report.run_id].append(futures)
            self._unsent[report.run_id] = (request, futures)
            self._outbox.put_nowait(request)
        if not wait:
            # Nobody awaits this answer; retrieve a failure so asyncio does not complain about it.
            future.add_done_callback(lambda done: done.cancelled() or done.exception())
            return True
        return await future

    async def draining(self) -> None:
        self._outbox.put_nowait(
            workers_pb2.ConnectRequest(
                heartbeat=workers_pb2.WorkerHeartbeat(leases=self._worker.leases(), free_slots=0)
            )
        )

    async def _write_forever(self) -> None:
        while True:
            request = await self._outbox.get()
            if request.HasField("report"):
                unsent = self._unsent.get(request.report.run_id)
                if unsent is not None and unsent[0] is request:
                    del self._unsent[request.report.run_id]  # from here on it cannot change
            try:
                await self._call.write(request)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                log.debug("stream write failed: %s", exc)
                return

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_seconds)
            self._outbox.put_nowait(
                workers_pb2.ConnectRequest(
                    heartbeat=workers_pb2.WorkerHeartbeat(
                        leases=self._worker.leases(), free_slots=self._worker.free_slots
                    )
                )
            )


def _joinable(queued: runs_pb2.JobReport, later: runs_pb2.JobReport) -> bool:
    """A later report may join a queued one of the same lease that carries no outcome yet (an
    outcome is the run's last word for this job)."""
    return (
        queued.lease_token == later.lease_token
        and queued.execution_sequence == later.execution_sequence
        and queued.WhichOneof("outcome") is None
    )


class PollTransport(_Base):
    """`Poll` / `Heartbeat` / `Report`: plain unary calls, for networks that cannot hold a stream."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._poll: asyncio.Future[workers_pb2.PollResponse] | None = None
        self._stopped = False

    async def open(self) -> None:
        # The first poll registers the worker's functions and surfaces a refused registration at once.
        await self._poll_once(wait=0.0)

    async def serve(self) -> None:
        heartbeat = asyncio.create_task(self._heartbeat_forever())
        try:
            while not self._stopped:
                await self._worker.wait_for_free_slot()
                await self._poll_once(wait=POLL_WAIT_SECONDS)
        finally:
            heartbeat.cancel()

    async def _poll_once(self, *, wait: float) -> None:
        request = workers_pb2.PollRequest(worker=self._registration, max_jobs=max(self._worker.free_slots, 1))
        request.wait.FromMilliseconds(int(wait * 1000))
        self._poll = asyncio.ensure_future(
            self._stub.Poll(request, timeout=wait + 30, metadata=self._metadata)
        )
        try:
            response = await self._poll
        except grpc.aio.AioRpcError as exc:
            raise self._closed(exc) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._stopped and task is not None and not task.cancelling():
                return  # draining abandoned this poll on purpose; a cancellation of our own propagates
            raise
        self._heartbeat_seconds = _seconds(response.heartbeat_interval, DEFAULT_HEARTBEAT_SECONDS)
        for job in response.jobs:
            self._worker.accept(job, self)

    async def report(self, report: runs_pb2.JobReport, *, wait: bool) -> bool:
        # Unary reports are sent in order, each after the previous one answered, even when the caller
        # does not need the answer: a step's start must not overtake its completion.
        try:
            response = await self._stub.Report(
                workers_pb2.ReportRequest(worker_id=self._registration.worker_id, reports=[report]),
                timeout=30,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise self._closed(exc) from None
        for run_id in response.cancelled_run_ids:
            self._worker.stop_job(run_id, "cancelled")
        return bool(response.accepted) and response.accepted[0]

    async def draining(self) -> None:
        self._stopped = True
        if self._poll is not None and not self._poll.done():
            self._poll.cancel()

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_seconds)
            leases = self._worker.leases()
            if not leases:
                continue
            try:
                response = await self._stub.Heartbeat(
                    workers_pb2.HeartbeatRequest(worker_id=self._registration.worker_id, leases=leases),
                    timeout=30,
                    metadata=self._metadata,
                )
            except grpc.aio.AioRpcError as exc:
                log.warning("heartbeat failed: %s", exc.details())
                continue
            cancelled = set(response.cancelled_run_ids)
            for lost in response.lost:
                self._worker.stop_job(lost.run_id, "cancelled" if lost.run_id in cancelled else "lease lost")


__all__ = ["IronflowError", "PollTransport", "StreamTransport", "Transport", "TransportClosedError"]
