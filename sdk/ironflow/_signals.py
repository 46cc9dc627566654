"""Engine control signals raised inside a handler: they derive from BaseException, so a handler's
`except Exception` cannot swallow them, and they unwind the handler to the executor which reports."""

from __future__ import annotations

from collections.abc import Sequence

from ironflow.v1 import runs_pb2


class StepFailedSignal(BaseException):
    """Ends the execution after one or more steps failed (several when parallel branches fail); the
    scheduler decides about the retries."""

    def __init__(self, checkpoints: Sequence[runs_pb2.StepCheckpoint]) -> None:
        super().__init__(", ".join(checkpoint.step_id for checkpoint in checkpoints))
        self.checkpoints = list(checkpoints)


class YieldSignal(BaseException):
    """The run suspends on these steps (a sleep, an event wait, an invoke; several from parallel
    branches); a later job resumes it with their outcomes memoized."""

    def __init__(self, yields: Sequence[runs_pb2.StepYield]) -> None:
        super().__init__(", ".join(step_yield.step_id for step_yield in yields))
        self.yields = list(yields)


class LeaseLostSignal(BaseException):
    """The server no longer considers this worker the run's holder: stop without reporting."""


class SegmentEndSignal(BaseException):
    """Push mode: the request's time budget is nearly spent, so the handler stops before its next
    step; the answer carries the checkpoints so far and the scheduler sends the next segment at once."""
