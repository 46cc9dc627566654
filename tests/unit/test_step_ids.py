"""Step ids are deterministic: the same handler code gives the same ids on every execution, scoped
under parallel branches, so a replay finds each step's memo and runs nothing twice."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ironflow import StepArgumentError
from ironflow._steps import Steps
from ironflow.v1 import runs_pb2


class RecordingChannel:
    """Accepts every report and keeps the completed checkpoints, as the server would memoize them."""

    def __init__(self) -> None:
        self.completed: dict[str, runs_pb2.StepCheckpoint] = {}

    async def report(self, report: runs_pb2.JobReport, *, wait: bool) -> bool:
        for checkpoint in report.checkpoints:
            if checkpoint.status == runs_pb2.STEP_STATUS_COMPLETED:
                self.completed[checkpoint.step_id] = checkpoint
        return True

    def memo(self) -> list[runs_pb2.MemoizedStep]:
        return [
            runs_pb2.MemoizedStep(step_id=step_id, output=c.output, status=runs_pb2.STEP_STATUS_COMPLETED)
            for step_id, c in self.completed.items()
        ]


def _job(memo: list[runs_pb2.MemoizedStep] | None = None) -> runs_pb2.Job:
    return runs_pb2.Job(run_id="run_1", lease_token="t", execution_sequence=1, steps=memo or [])


async def _handler(steps: Steps, names: list[str], calls: list[str]) -> list[Any]:
    results = []
    for name in names:
        results.append(await steps.run(name, lambda n=name: calls.append(n) or n))
    results.append(
        await steps.parallel(
            "fan", [lambda: steps.run("inner", lambda: "a"), lambda: steps.run("inner", lambda: "b")]
        )
    )
    results.append(await steps.map("double", [1, 2], lambda x: x * 2))
    return results


async def test_ids_are_counted_per_name_and_scoped_per_branch() -> None:
    channel = RecordingChannel()
    results = await _handler(Steps(_job(), channel), ["charge", "charge", "ship"], [])
    assert results == ["charge", "charge", "ship", ["a", "b"], [2, 4]]
    assert set(channel.completed) == {
        "charge",
        "charge:1",
        "ship",
        "fan/0",
        "fan/1",
        "fan/0/inner",
        "fan/1/inner",
        "double/0",
        "double/1",
    }


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c-d", "e_f"]), max_size=8))
async def test_a_replay_with_the_memo_produces_the_same_ids_and_runs_nothing(names: list[str]) -> None:
    first = RecordingChannel()
    first_calls: list[str] = []
    first_results = await _handler(Steps(_job(), first), names, first_calls)
    assert first_calls == names

    replay = RecordingChannel()
    replay_calls: list[str] = []
    replay_results = await _handler(Steps(_job(first.memo()), replay), names, replay_calls)
    assert replay_results == first_results
    assert replay_calls == []  # every step came from the memo
    assert replay.completed == {}


@pytest.mark.parametrize("name", ["a:b", "a/b", "", "  "])
async def test_names_that_would_break_ids_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="step name"):
        await Steps(_job(), RecordingChannel()).run(name, lambda: 1)


async def test_bad_branch_arguments_are_refused_before_anything_runs() -> None:
    steps = Steps(_job(), RecordingChannel())
    with pytest.raises(StepArgumentError, match="concurrency"):
        await steps.map("m", [1], lambda x: x, concurrency=0)
    with pytest.raises(StepArgumentError, match="on_error"):
        await steps.map("m", [1], lambda x: x, on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(StepArgumentError, match="not callable"):
        await steps.parallel("p", [1])  # type: ignore[list-item]
