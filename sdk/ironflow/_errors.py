"""The SDK's one error type. Every failure a client call can meet is an `IronflowError` with a code."""

from __future__ import annotations

from datetime import timedelta

from ._models import RunError


class IronflowError(Exception):
    """A failed call. `code` is a stable string such as "INVALID_ARGUMENT", "NOT_FOUND", "UNAVAILABLE"."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class NonRetryableError(Exception):
    """Raise from a step or handler to fail at once, without retries."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RetryAfterError(Exception):
    """Raise to be retried after `retry_after` (seconds, timedelta or a string such as "30s")."""

    def __init__(self, message: str, retry_after: float | str | timedelta) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class StepError(Exception):
    """A step failed for good (retries exhausted or non-retryable). Catch it to handle the failure;
    left uncaught it fails the run with the step's error."""

    def __init__(self, step_id: str, code: str, message: str) -> None:
        super().__init__(f"step {step_id!r} failed: {code}: {message}")
        self.step_id = step_id
        self.code = code
        self.message = message


class InvokeError(StepError):
    """A function this run invoked (`ctx.step.invoke`) failed, was cancelled or did not end within
    the timeout. `cause` says why (a `RunError`: code and message); the child run keeps its own life."""

    def __init__(self, step_id: str, *, function_id: str, run_id: str, code: str, message: str) -> None:
        super().__init__(step_id, code, message)
        self.function_id = function_id
        self.run_id = run_id
        self.args = (f"invoke of {function_id!r} (run {run_id or '-'}) failed: {code}: {message}",)

    @property
    def cause(self) -> RunError:
        return RunError(code=self.code, message=self.message)
