"""In-process wake-ups between the scheduler and the worker-gateway.

The database is the truth; these signals only shorten the time until someone looks at it. A missed
signal costs latency (the gateway also looks on a timer), never correctness. In the distributed shape
the same notices cross processes over the stream; here they are plain callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class WorkSignal:
    """Many waiters, woken together whenever work may be available."""

    def __init__(self) -> None:
        self._generation = 0
        self._condition = asyncio.Condition()

    def notify(self) -> None:
        self._generation += 1
        # notify_all needs the lock; take it in a task so notify() can be called from sync code.
        with contextlib.suppress(RuntimeError):  # no running loop: nobody can be waiting
            asyncio.get_running_loop().create_task(self._wake())

    async def _wake(self) -> None:
        async with self._condition:
            self._condition.notify_all()

    async def wait(self, seconds: float) -> bool:
        """Wait until notified or `seconds` pass; True when notified."""
        seen = self._generation
        async with self._condition:
            if self._generation != seen:
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._condition.wait(), timeout=max(seconds, 0))
        return self._generation != seen


class RunNotices:
    """What the scheduler tells whoever holds a run's worker: work is due, a run was cancelled."""

    def __init__(self) -> None:
        self.work = WorkSignal()
        self._cancel_listeners: list[Callable[[str, str], None]] = []

    def work_available(self) -> None:
        self.work.notify()

    def on_run_cancelled(self, listener: Callable[[str, str], None]) -> None:
        """`listener(run_id, reason)` is called for every cancelled or fenced-off run."""
        self._cancel_listeners.append(listener)

    def run_cancelled(self, run_id: str, reason: str) -> None:
        for listener in self._cancel_listeners:
            listener(run_id, reason)
