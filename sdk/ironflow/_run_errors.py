"""Errors `Client.invoke` raises when the run it started did not complete."""

from __future__ import annotations

from ._errors import IronflowError
from ._models import RunError


class _RunEndedError(IronflowError):
    def __init__(self, code: str, verb: str, run_id: str, function_id: str, error: RunError | None) -> None:
        reason = f": {error.code}: {error.message}" if error is not None else ""
        super().__init__(code, f"run {run_id} of {function_id} {verb}{reason}")
        self.run_id = run_id
        self.function_id = function_id
        self.error = error


class RunFailedError(_RunEndedError):
    """The invoked run failed; `error` says why (code "RUN_FAILED")."""

    def __init__(self, run_id: str, function_id: str, error: RunError | None) -> None:
        super().__init__("RUN_FAILED", "failed", run_id, function_id, error)


class RunCancelledError(_RunEndedError):
    """The invoked run was cancelled before it completed (code "RUN_CANCELLED")."""

    def __init__(self, run_id: str, function_id: str, error: RunError | None) -> None:
        super().__init__("RUN_CANCELLED", "was cancelled", run_id, function_id, error)
