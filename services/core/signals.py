"""Wake-ups between the scheduler, the worker-gateway and the registry.

The database is the truth; these signals only shorten the time until someone looks at it. A missed
signal costs latency (everyone also looks on a timer), never correctness. In one process they are
plain callbacks; in the distributed shape a `NoticeRelay` (`notice_bus.py`) also carries each one to
the other processes over the stream, and hands theirs to the local listeners.
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


# A notice as it crosses processes: its kind and string fields.
Forward = Callable[[str, dict[str, str]], None]

WORK = "work"
RUN_CANCELLED = "run_cancelled"
RUN_ENDED = "run_ended"
FUNCTIONS_CHANGED = "functions_changed"


class RunNotices:
    """What one part tells the others: work is due, a run was cancelled or ended, functions changed."""

    def __init__(self) -> None:
        self.work = WorkSignal()
        self._cancel_listeners: list[Callable[[str, str], None]] = []
        self._end_listeners: list[Callable[[str], None]] = []
        self._function_listeners: list[Callable[[], None]] = []
        self._forward: Forward | None = None

    def forward_to(self, forward: Forward) -> None:
        """Also hand every notice raised here to `forward` (the relay to other processes)."""
        self._forward = forward

    def work_available(self) -> None:
        self.work.notify()
        self._send(WORK, {})

    def on_run_cancelled(self, listener: Callable[[str, str], None]) -> None:
        """`listener(run_id, reason)` is called for every cancelled or fenced-off run."""
        self._cancel_listeners.append(listener)

    def run_cancelled(self, run_id: str, reason: str) -> None:
        self._deliver_cancelled(run_id, reason)
        self._send(RUN_CANCELLED, {"run_id": run_id, "reason": reason})

    def on_run_ended(self, listener: Callable[[str], None]) -> None:
        """`listener(run_id)` is called when a run reaches completed, failed or cancelled."""
        self._end_listeners.append(listener)

    def run_ended(self, run_id: str) -> None:
        self._deliver_ended(run_id)
        self._send(RUN_ENDED, {"run_id": run_id})

    def on_functions_changed(self, listener: Callable[[], None]) -> None:
        self._function_listeners.append(listener)

    def functions_changed(self) -> None:
        self._deliver_functions_changed()
        self._send(FUNCTIONS_CHANGED, {})

    def deliver(self, kind: str, fields: dict[str, str]) -> None:
        """A notice from another process: tell the local listeners only."""
        if kind == WORK:
            self.work.notify()
        elif kind == RUN_CANCELLED:
            self._deliver_cancelled(fields.get("run_id", ""), fields.get("reason", "cancelled"))
        elif kind == RUN_ENDED:
            self._deliver_ended(fields.get("run_id", ""))
        elif kind == FUNCTIONS_CHANGED:
            self._deliver_functions_changed()

    def _deliver_cancelled(self, run_id: str, reason: str) -> None:
        for listener in self._cancel_listeners:
            listener(run_id, reason)

    def _deliver_ended(self, run_id: str) -> None:
        for end_listener in self._end_listeners:
            end_listener(run_id)

    def _deliver_functions_changed(self) -> None:
        for function_listener in self._function_listeners:
            function_listener()

    def _send(self, kind: str, fields: dict[str, str]) -> None:
        if self._forward is not None:
            self._forward(kind, fields)
