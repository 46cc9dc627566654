"""What a handler sees: `ctx.event`, `ctx.run_id`, `ctx.attempt`, `ctx.logger` and `ctx.step`.

Steps are memoized by deterministic id: the step name plus an occurrence counter (`charge`,
`charge:1`, ...). When a job arrives, every step that already completed in an earlier execution
returns its stored output instead of running again, so handler code between steps must be
deterministic (same inputs, same sequence of step names).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol

from google.protobuf import json_format, struct_pb2

from ironflow.v1 import common_pb2, runs_pb2

from ._durations import to_seconds
from ._errors import NonRetryableError, RetryAfterError, StepError
from ._models import Event

_MAX_DETAILS = 8 * 1024


class JobChannel(Protocol):
    """Where an execution sends its reports; `wait` blocks until the server accepted (True) or
    refused it as stale (False)."""

    async def report(self, report: runs_pb2.JobReport, *, wait: bool) -> bool: ...


class StepFailedSignal(BaseException):
    """Ends the execution after a step failed; the scheduler decides about the retry.

    A BaseException, so a handler's `except Exception` cannot swallow it.
    """

    def __init__(self, checkpoint: runs_pb2.StepCheckpoint) -> None:
        super().__init__(checkpoint.step_id)
        self.checkpoint = checkpoint


class LeaseLostSignal(BaseException):
    """The server no longer considers this worker the run's holder: stop without reporting."""


def to_value(value: Any, *, what: str) -> struct_pb2.Value:
    """`value` as a protobuf Value; NonRetryableError when it is not plain JSON."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise NonRetryableError(f"{what} is not JSON-serialisable: {exc}") from None
    message = struct_pb2.Value()
    json_format.Parse(text, message)
    return message


def from_value(message: struct_pb2.Value) -> Any:
    if message.WhichOneof("kind") is None:
        return None
    return _integral(json_format.MessageToDict(message))


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def error_info(exc: BaseException, *, non_retryable: bool = False) -> common_pb2.ErrorInfo:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    details = "".join(traceback.format_exception(exc))[-_MAX_DETAILS:]
    info = common_pb2.ErrorInfo(
        code=exc.code if isinstance(exc, StepError) else type(exc).__name__,
        message=str(message),
        details=details,
        non_retryable=non_retryable or isinstance(exc, NonRetryableError | StepError),
    )
    if isinstance(exc, RetryAfterError):
        # An unreadable delay falls back to the policy's backoff.
        with contextlib.suppress(ValueError):
            delay = to_seconds(exc.retry_after, field="retry_after")
            info.retry_after.FromTimedelta(timedelta(seconds=delay))
    return info


class Steps:
    """`ctx.step`: the durable building blocks of a handler."""

    def __init__(self, job: runs_pb2.Job, channel: JobChannel) -> None:
        self._job = job
        self._channel = channel
        self._memo = {step.step_id: step for step in job.steps}
        self._seen: dict[str, int] = {}

    def _next_id(self, name: str) -> str:
        if not isinstance(name, str) or not name.strip():
            raise ValueError("step name must be a non-empty string")
        if ":" in name:
            raise ValueError(f"step name {name!r} must not contain ':' (it separates the occurrence counter)")
        count = self._seen.get(name, 0)
        self._seen[name] = count + 1
        return name if count == 0 else f"{name}:{count}"

    def _report(self, checkpoint: runs_pb2.StepCheckpoint) -> runs_pb2.JobReport:
        return runs_pb2.JobReport(
            run_id=self._job.run_id,
            lease_token=self._job.lease_token,
            execution_sequence=self._job.execution_sequence,
            checkpoints=[checkpoint],
        )

    async def run(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` once per run (sync functions run in a thread) and return its
        JSON output; on replay the stored output is returned without calling `fn`."""
        step_id = self._next_id(name)
        memo = self._memo.get(step_id)
        if memo is not None and memo.status == runs_pb2.STEP_STATUS_COMPLETED:
            return from_value(memo.output)
        if memo is not None and memo.status == runs_pb2.STEP_STATUS_FAILED:
            raise StepError(step_id, memo.error.code or "ERROR", memo.error.message)
        attempt = memo.attempt + 1 if memo is not None and memo.status == runs_pb2.STEP_STATUS_RETRYING else 1
        checkpoint = runs_pb2.StepCheckpoint(step_id=step_id, name=name, kind="run", attempt=attempt)

        checkpoint.status = runs_pb2.STEP_STATUS_RUNNING
        await self._channel.report(self._report(checkpoint), wait=False)
        try:
            if inspect.iscoroutinefunction(fn):
                result = await fn(*args, **kwargs)
            else:
                result = await asyncio.to_thread(fn, *args, **kwargs)
                if inspect.isawaitable(result):  # a lambda returning a coroutine
                    result = await result
            output = to_value(result, what=f"the output of step {name!r}")
        except Exception as exc:
            failed = runs_pb2.StepCheckpoint(
                step_id=step_id,
                name=name,
                kind="run",
                attempt=attempt,
                status=runs_pb2.STEP_STATUS_FAILED,
                error=error_info(exc),
            )
            raise StepFailedSignal(failed) from exc

        completed = runs_pb2.StepCheckpoint(
            step_id=step_id,
            name=name,
            kind="run",
            attempt=attempt,
            status=runs_pb2.STEP_STATUS_COMPLETED,
            output=output,
        )
        if not await self._channel.report(self._report(completed), wait=True):
            raise LeaseLostSignal(self._job.run_id)
        # The same value a replay would return (JSON round trip: tuples become lists, and so on).
        return from_value(output)


class Context:
    """Passed to every handler."""

    def __init__(
        self, *, job: runs_pb2.Job, event: Event, steps: Steps, logger: logging.LoggerAdapter[Any]
    ) -> None:
        self.event = event
        self.run_id = job.run_id
        self.function_id = job.function_id
        self.attempt = job.attempt
        self.step = steps
        self.logger = logger
