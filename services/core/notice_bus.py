"""Carries `RunNotices` between processes over one stream, for the distributed shape.

Each process appends the notices raised locally and tails the stream for everybody else's. Notices
raised while an append is in flight are packed into the next entry (one entry per flush, however
many notices), and repeated "work is due" or "functions changed" notices in one flush collapse into
one, so a burst of thousands of run ends costs a handful of appends.

Notices are wake-ups, not records: the stream is trimmed to a few thousand entries and a process only
reads what is appended after it starts. A lost notice costs latency (every listener also looks on a
timer), never correctness, so Redis losing its data loses nothing that matters here.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from .ids import random_id
from .signals import FUNCTIONS_CHANGED, WORK, RunNotices
from .streams import Stream
from .tasks import cancel_requested, stop_task

log = logging.getLogger("ironflow.notices")

NOTICE_STREAM_MAXLEN = 10_000
_COLLAPSIBLE = (WORK, FUNCTIONS_CHANGED)


def notice_stream_key(prefix: str) -> str:
    return f"{prefix}:notices"


class NoticeRelay:
    def __init__(self, *, notices: RunNotices, stream: Stream, key: str, block_ms: int = 1000) -> None:
        self._notices = notices
        self._stream = stream
        self._key = key
        self._block_ms = block_ms
        # Tells our own entries apart when they come back on the tail.
        self.origin = random_id("proc")
        self._outbox: list[tuple[str, dict[str, str]]] = []
        self._queued = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        # Resolve the tail position before anything is raised here, so nothing from now on is missed.
        last = await self._stream.read_last(self._key, 1)
        position = last[0].id if last else "0-0"
        self._notices.forward_to(self._enqueue)
        self._tasks = [
            asyncio.create_task(self._flush_forever(), name="notice-relay-out"),
            asyncio.create_task(self._tail_forever(position), name="notice-relay-in"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        self._queued.set()
        for task in self._tasks:
            await stop_task(task)
        self._tasks = []

    def _enqueue(self, kind: str, fields: dict[str, str]) -> None:
        if kind in _COLLAPSIBLE and any(queued == kind for queued, _ in self._outbox):
            return
        self._outbox.append((kind, fields))
        self._queued.set()

    async def _flush_forever(self) -> None:
        while not self._stopping:
            await self._queued.wait()
            self._queued.clear()
            batch, self._outbox = self._outbox, []
            if not batch:
                continue
            body = json.dumps([[kind, fields] for kind, fields in batch], separators=(",", ":"))
            try:
                await self._stream.append(
                    self._key, {"origin": self.origin, "notices": body}, maxlen=NOTICE_STREAM_MAXLEN
                )
            except Exception:
                log.warning("could not relay %d notices", len(batch), exc_info=True)
                await asyncio.sleep(0.5)

    async def _tail_forever(self, position: str) -> None:
        while not self._stopping and not cancel_requested():
            try:
                entries = await self._stream.tail({self._key: position}, count=500, block_ms=self._block_ms)
            except Exception:
                log.warning("notice stream unreachable; retrying", exc_info=True)
                await asyncio.sleep(1.0)
                continue
            for _, entry in entries:
                position = entry.id
                if entry.fields.get("origin") != self.origin:
                    self._deliver(entry.fields.get("notices", "[]"))

    def _deliver(self, body: str) -> None:
        try:
            notices: Any = json.loads(body)
        except ValueError:
            return
        for item in notices if isinstance(notices, list) else []:
            if isinstance(item, list) and len(item) == 2 and isinstance(item[1], dict):
                self._notices.deliver(str(item[0]), {str(k): str(v) for k, v in item[1].items()})
