"""The worker's stream transport sends one message for reports of a run that queue up before the
stream writes them: later ones join the queued report, and its one ack answers them all. A report
that already left is never changed, and an outcome is the last word of its report."""

from __future__ import annotations

import asyncio

from ironflow._transport import StreamTransport
from ironflow.v1 import runs_pb2, workers_pb2


def _transport() -> StreamTransport:
    # The channel is created lazily and never dialled here: only the queueing is exercised.
    return StreamTransport(
        "http://127.0.0.1:1",
        api_key=None,
        registration=workers_pb2.WorkerRegistration(),
        worker=None,  # type: ignore[arg-type]  # jobs never arrive here
    )


def _report(step_id: str, status: int, *, run_id: str = "run_1", done: bool = False) -> runs_pb2.JobReport:
    report = runs_pb2.JobReport(
        run_id=run_id,
        lease_token="t",
        execution_sequence=1,
        checkpoints=[runs_pb2.StepCheckpoint(step_id=step_id, status=status)],  # type: ignore[arg-type]
    )
    if done:
        report.completed.string_value = "ok"
    return report


def _queued(transport: StreamTransport) -> list[workers_pb2.ConnectRequest]:
    return list(transport._outbox._queue)  # type: ignore[attr-defined]


def _ack(transport: StreamTransport, run_id: str = "run_1") -> None:
    transport._dispatch(
        workers_pb2.ConnectResponse(report_ack=workers_pb2.ReportAck(run_id=run_id, accepted=True))
    )


async def test_queued_reports_of_one_run_travel_as_one_and_one_ack_answers_both() -> None:
    transport = _transport()
    try:
        await transport.report(_report("a", runs_pb2.STEP_STATUS_RUNNING), wait=False)
        waiting = asyncio.create_task(
            transport.report(_report("a", runs_pb2.STEP_STATUS_COMPLETED, done=True), wait=True)
        )
        await asyncio.sleep(0)  # let the second report queue
        [request] = _queued(transport)
        assert [c.status for c in request.report.checkpoints] == [
            runs_pb2.STEP_STATUS_RUNNING,
            runs_pb2.STEP_STATUS_COMPLETED,
        ]
        assert request.report.completed.string_value == "ok"
        _ack(transport)
        assert await asyncio.wait_for(waiting, 5) is True
    finally:
        await transport.close()


async def test_nothing_joins_a_report_with_an_outcome_or_of_another_run() -> None:
    transport = _transport()
    try:
        await transport.report(_report("a", runs_pb2.STEP_STATUS_COMPLETED, done=True), wait=False)
        await transport.report(_report("b", runs_pb2.STEP_STATUS_RUNNING), wait=False)
        await transport.report(_report("a", runs_pb2.STEP_STATUS_RUNNING, run_id="run_2"), wait=False)
        assert [len(request.report.checkpoints) for request in _queued(transport)] == [1, 1, 1]
    finally:
        await transport.close()


async def test_a_report_the_writer_took_is_not_changed_afterwards() -> None:
    transport = _transport()
    try:
        await transport.report(_report("a", runs_pb2.STEP_STATUS_RUNNING), wait=False)
        written: list[workers_pb2.ConnectRequest] = []
        wrote = asyncio.Event()

        class Call:
            async def write(self, request: workers_pb2.ConnectRequest) -> None:
                written.append(request)
                wrote.set()

        transport._call = Call()
        writer = asyncio.create_task(transport._write_forever())
        await asyncio.wait_for(wrote.wait(), 5)  # the writer took the queued report
        wrote.clear()
        await transport.report(_report("a", runs_pb2.STEP_STATUS_COMPLETED), wait=False)
        await asyncio.wait_for(wrote.wait(), 5)
        writer.cancel()
        assert [len(request.report.checkpoints) for request in written] == [1, 1]
    finally:
        await transport.close()
