"""A step's start is reported with its outcome when the step is quick, and on its own (first) when
it runs longer than START_NOTICE_DELAY_S; either way the server gets RUNNING before the outcome."""

from __future__ import annotations

import asyncio

import pytest

from ironflow._signals import StepFailedSignal
from ironflow._steps import START_NOTICE_DELAY_S, Steps
from ironflow.v1 import runs_pb2


class ReportLog:
    def __init__(self) -> None:
        self.reports: list[list[tuple[str, int]]] = []
        self.arrived = asyncio.Event()

    async def report(self, report: runs_pb2.JobReport, *, wait: bool) -> bool:
        self.reports.append([(c.step_id, c.status) for c in report.checkpoints])
        self.arrived.set()
        return True


RUNNING, COMPLETED, FAILED = (
    runs_pb2.STEP_STATUS_RUNNING,
    runs_pb2.STEP_STATUS_COMPLETED,
    runs_pb2.STEP_STATUS_FAILED,
)


def _steps(log: ReportLog) -> Steps:
    return Steps(runs_pb2.Job(run_id="run_1", lease_token="t", execution_sequence=1), log)


async def test_a_quick_step_sends_its_start_with_its_outcome_in_one_report() -> None:
    log = ReportLog()
    assert await _steps(log).run("quick", lambda: 42) == 42
    assert log.reports == [[("quick", RUNNING), ("quick", COMPLETED)]]


async def test_a_long_step_reports_its_start_while_it_runs() -> None:
    log = ReportLog()
    started_seen = asyncio.Event()

    async def slow() -> str:
        # Runs until its start notice is out (after the delay), then finishes.
        await asyncio.wait_for(log.arrived.wait(), START_NOTICE_DELAY_S + 5)
        started_seen.set()
        return "done"

    assert await _steps(log).run("slow", slow) == "done"
    assert started_seen.is_set()
    assert log.reports == [[("slow", RUNNING)], [("slow", COMPLETED)]]


async def test_a_quick_failure_carries_its_start_in_the_signal() -> None:
    log = ReportLog()

    def boom() -> None:
        raise ValueError("no")

    with pytest.raises(StepFailedSignal) as failed:
        await _steps(log).run("boom", boom)
    assert [(c.step_id, c.status) for c in failed.value.checkpoints] == [("boom", RUNNING), ("boom", FAILED)]
    assert log.reports == []


async def test_a_cancelled_step_reports_nothing_later() -> None:
    log = ReportLog()

    async def forever() -> None:
        await asyncio.Event().wait()

    task = asyncio.create_task(_steps(log).run("stuck", forever))
    await asyncio.sleep(0)  # let the step start
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The notice timer was stopped with the step: nothing arrives after the delay either.
    await asyncio.sleep(START_NOTICE_DELAY_S * 2)  # waiting out a timer that must not fire
    assert log.reports == []
