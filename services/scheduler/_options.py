"""What a run keeps of its function version: the retry policy and the timeout.

Copied into the run row when the run is created, so re-registering a function (a new version) never
changes the behaviour of runs already under way.

The backoff is computed here, not with a retry library: it is one formula over stored numbers
(`initial * factor^(attempt-1)`, capped), evaluated by the scheduler when a failure is reported, so
there is no loop for tenacity & co. to drive. No jitter: retries of one run are never synchronised
with each other, and predictable delays are what users of Temporal and Inngest read in their
dashboards.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from ironflow.v1 import functions_pb2

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_INITIAL_DELAY = 1.0
DEFAULT_FACTOR = 2.0
DEFAULT_MAX_DELAY = 300.0


@dataclass(frozen=True)
class RunOptions:
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    initial_delay: float = DEFAULT_INITIAL_DELAY
    factor: float = DEFAULT_FACTOR
    max_delay: float = DEFAULT_MAX_DELAY
    # "fail" or "pause" when retries run out.
    on_exhausted: str = "fail"
    # Whole-run timeout in seconds; None means none.
    timeout: float | None = None

    @classmethod
    def from_definition(cls, definition: functions_pb2.FunctionDefinition) -> RunOptions:
        retry = definition.retry
        return cls(
            max_attempts=retry.max_attempts or DEFAULT_MAX_ATTEMPTS,
            initial_delay=(
                retry.initial_delay.ToTimedelta().total_seconds()
                if retry.HasField("initial_delay")
                else DEFAULT_INITIAL_DELAY
            ),
            factor=retry.factor or DEFAULT_FACTOR,
            max_delay=(
                retry.max_delay.ToTimedelta().total_seconds()
                if retry.HasField("max_delay")
                else DEFAULT_MAX_DELAY
            ),
            on_exhausted=retry.on_exhausted or "fail",
            timeout=(
                definition.timeout.ToTimedelta().total_seconds() if definition.HasField("timeout") else None
            ),
        )

    @classmethod
    def from_json(cls, document: dict[str, Any] | None) -> RunOptions:
        if not document:
            return cls()
        known = {name: document[name] for name in cls.__dataclass_fields__ if name in document}
        return cls(**known)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def exhausted(self, attempt: int) -> bool:
        """True when `attempt` (1-based) was the last one the policy allows."""
        return attempt >= self.max_attempts

    def backoff(self, attempt: int) -> timedelta:
        """The wait after failed attempt number `attempt` (1-based) before the next one."""
        seconds = self.initial_delay * self.factor ** max(attempt - 1, 0)
        return timedelta(seconds=min(seconds, self.max_delay))
