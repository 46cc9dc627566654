"""A guard for a hypercorn 0.18 HTTP/2 bug that drops whole connections.

When a response finishes before the client has sent all of its request (a gRPC error returned early,
a 404 for an unknown method of a streaming call), hypercorn forgets the stream; the client's next DATA
frame for it then raises KeyError inside hypercorn and the entire h2 connection is torn down, failing
every other call multiplexed on it. (hypercorn already ignores the END_STREAM frame in that case, just
not DATA frames.)

The guard drops DATA frames for streams hypercorn no longer tracks, after handing their bytes back to
connection flow control so the connection window does not shrink. Installing it twice is harmless.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import h2.events
from hypercorn.protocol.h2 import H2Protocol

_INSTALLED = "_ironflow_late_data_guard"


def install_late_data_guard() -> None:
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
