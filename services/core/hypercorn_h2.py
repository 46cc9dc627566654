"""Guards for two hypercorn 0.18 bugs met with long-lived gRPC streams.

1. An HTTP/2 bug that drops whole connections.

When a response finishes before the client has sent all of its request (a gRPC error returned early,
a 404 for an unknown method of a streaming call), hypercorn forgets the stream; the client's next DATA
frame for it then raises KeyError inside hypercorn and the entire h2 connection is torn down, failing
every other call multiplexed on it. (hypercorn already ignores the END_STREAM frame in that case, just
not DATA frames.)

The guard drops DATA frames for streams hypercorn no longer tracks, after handing their bytes back to
connection flow control so the connection window does not shrink. Installing it twice is harmless.

2. When a client resets a stream (a gRPC call cancelled, say an abandoned long-poll) before the response
is complete, hypercorn forgets the stream but keeps its send buffer; the handler's final frames then
wait forever for that buffer to drain, and the connection (and a graceful shutdown) with it. The guard
drops response frames for streams the peer already reset and releases their buffer.

3. When a client goes away while a streaming response is still finishing (a worker stops, or is killed),
hypercorn restarts the connection's idle timer in a task group that is already shutting down: it raises
RuntimeError inside the ASGI send and leaves a never-awaited coroutine behind. The guard skips the
restart in that case; the connection is closing anyway, so there is no idle time left to measure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import h2.events
from hypercorn.asyncio.worker_context import AsyncioSingleTask
from hypercorn.protocol.events import Body, Data, EndBody, EndData, Trailers
from hypercorn.protocol.h2 import H2Protocol
from priority.priority import PriorityError

_INSTALLED = "_ironflow_late_data_guard"


def install_late_data_guard() -> None:
    _install_idle_restart_guard()
    _install_reset_stream_guard()
    if getattr(H2Protocol, _INSTALLED, False):
        return
    original: Callable[[Any, list[h2.events.Event]], Awaitable[None]] = H2Protocol._handle_events

    async def handle_events(self: Any, events: list[h2.events.Event]) -> None:
        pending: list[h2.events.Event] = []
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                # Earlier events in this batch may close streams, so flush them before deciding.
                if pending:
                    await original(self, pending)
                    pending = []
                if event.stream_id not in self.streams:
                    self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    continue
            pending.append(event)
        await original(self, pending)

    H2Protocol._handle_events = handle_events  # type: ignore[method-assign]
    setattr(H2Protocol, _INSTALLED, True)


def _install_idle_restart_guard() -> None:
    if getattr(AsyncioSingleTask, _INSTALLED, False):
        return

    async def restart(self: Any, task_group: Any, action: Callable[[], Coroutine[Any, Any, None]]) -> None:
        async with self._lock:
            if self._handle is not None:
                self._handle.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._handle
                self._handle = None
            coroutine = action()
            try:
                self._handle = task_group._task_group.create_task(coroutine)
            except RuntimeError:  # the connection's task group is shutting down
                coroutine.close()

    AsyncioSingleTask.restart = restart  # type: ignore[method-assign]
    setattr(AsyncioSingleTask, _INSTALLED, True)


def _install_reset_stream_guard() -> None:
    if getattr(H2Protocol.stream_send, _INSTALLED, False):
        return
    original: Callable[[Any, Any], Awaitable[None]] = H2Protocol.stream_send

    async def stream_send(self: Any, event: Any) -> None:
        if (
            isinstance(event, Body | Data | EndBody | EndData | Trailers)
            and event.stream_id not in self.streams
        ):
            buffer = self.stream_buffers.pop(event.stream_id, None)
            if buffer is not None:
                await buffer.close()
                with contextlib.suppress(PriorityError):
                    self.priority.remove_stream(event.stream_id)
            return
        await original(self, event)

    setattr(stream_send, _INSTALLED, True)
    H2Protocol.stream_send = stream_send  # type: ignore[method-assign]
