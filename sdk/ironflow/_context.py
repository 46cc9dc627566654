"""What a handler sees: `ctx.event`, `ctx.events`, `ctx.run_id`, `ctx.attempt`, `ctx.logger` and
`ctx.step` (the durable steps, in `_steps.py`)."""

from __future__ import annotations

import logging
from typing import Any

from ironflow.v1 import runs_pb2

from ._models import Event
from ._steps import Steps


class Context:
    """Passed to every handler."""

    def __init__(
        self,
        *,
        job: runs_pb2.Job,
        event: Event,
        steps: Steps,
        logger: logging.LoggerAdapter[Any],
        events: list[Event] | None = None,
    ) -> None:
        self.event = event
        # A batched function's run gets every event of its batch, in arrival order (`event` is the
        # first); any other run gets its one event.
        self.events: list[Event] = events or [event]
        self.run_id = job.run_id
        self.function_id = job.function_id
        self.attempt = job.attempt
        self.step = steps
        self.logger = logger
