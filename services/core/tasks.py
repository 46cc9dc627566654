"""Stopping background loops that sit in blocking stream reads.

Cancelling a task blocked in a Redis read is not always enough on its own: when the cancellation
lands as the read's own timeout fires, the client can turn it into an ordinary timeout and the loop
reads again. So every such loop also checks `cancel_requested()` (or a stop flag) between reads, and
`stop_task` waits a bounded time rather than forever.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("ironflow.tasks")


def cancel_requested() -> bool:
    """True once the running task was asked to cancel, even if a library swallowed the CancelledError."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def stop_task(task: asyncio.Task[object] | None, *, grace: float = 5.0) -> None:
    """Cancel `task` and wait up to `grace` seconds for it to finish; never raise its errors."""
    if task is None or task.done():
        return
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=grace)
    if not done:
        log.warning("task %s did not stop within %.0fs", task.get_name(), grace)
        return
    if not task.cancelled() and task.exception() is not None:
        log.debug("task %s ended with %r", task.get_name(), task.exception())
