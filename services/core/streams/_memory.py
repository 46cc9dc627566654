"""In-process streams with Redis Streams semantics, the embedded default.

Ids are kept as packed sequences (`ms << 20 | n`) in a sorted list, so every position lookup is a
bisect. Trimming from the front only advances a head offset and compacts occasionally, keeping
append-with-maxlen amortised O(1) instead of shifting the whole list each time.

Blocking readers park on an `asyncio.Event` registered under every stream they watch; appends set
those events, so a waiter wakes on the next loop iteration rather than at some poll interval.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ironflow.services.core.errors import not_found

from . import _checks
from ._base import GroupEntry, PendingEntry, StreamEntry
from ._ids import parse_id, sequence_to_entry_id

# Trimmed entries stay referenced (and in memory) until the list is compacted. Compacting once the
# dead prefix is at least 1024 entries and an eighth of the list keeps the copying amortised (at most
# seven pointer moves per trimmed entry) while a trimmed stream holds at most 1/8 more than its maxlen.
_COMPACT_MIN = 1024
_COMPACT_FRACTION = 8


# Every memory id is `0-<n>`; a position with a millisecond part lies beyond all of them (as on Redis).
_BEYOND_ALL = 1 << 64


def _after_bound(ms: int, n: int) -> int:
    """The sequence that "after (ms, n)" excludes up to."""
    return n if ms == 0 else _BEYOND_ALL


def _from_bound(ms: int, n: int) -> int:
    """The first sequence that "from (ms, n)" includes."""
    return n if ms == 0 else _BEYOND_ALL


@dataclass(slots=True)
class _Pending:
    consumer: str
    delivered_at: float
    deliveries: int
    # Idle time granted by `set_idle`, added to the clock's reading since `delivered_at`. Kept as whole
    # milliseconds apart from the clock: `now - (now - 0.02)` is 19.999... ms in floats, which would
    # make an entry set 20 ms idle invisible to a 20 ms claim.
    idle_base_ms: int = 0


@dataclass(slots=True)
class _Group:
    last_delivered: int
    # Deliveries only ever happen above `last_delivered`, so insertion order is id order and a plain
    # dict serves as the ordered pending list.
    pel: dict[int, _Pending] = field(default_factory=dict)


@dataclass(slots=True)
class _Log:
    seqs: list[int] = field(default_factory=list)
    entries: list[StreamEntry] = field(default_factory=list)
    head: int = 0
    # Survives trimming, as in Redis, so new ids never go backwards after the stream empties.
    last: int = 0
    groups: dict[str, _Group] = field(default_factory=dict)

    def size(self) -> int:
        return len(self.seqs) - self.head

    def after(self, bound: int, count: int) -> list[StreamEntry]:
        start = bisect_right(self.seqs, bound, lo=self.head)
        return self.entries[start : start + count]

    def contains(self, seq: int) -> bool:
        i = bisect_left(self.seqs, seq, lo=self.head)
        return i < len(self.seqs) and self.seqs[i] == seq

    def drop_front(self, k: int) -> int:
        k = max(0, min(k, self.size()))
        self.head += k
        if self.head >= _COMPACT_MIN and self.head * _COMPACT_FRACTION >= len(self.seqs):
            del self.seqs[: self.head]
            del self.entries[: self.head]
            self.head = 0
        return k


class MemoryStream:
    """The `Stream` contract in one process; share the instance, since each one is a separate store.

    `monotonic` measures pending idle time; it is injectable so tests can move time instead of
    sleeping. Ids are `0-<n>` as on Redis (see `_ids`). Trimming on append is exact.
    """

    def __init__(
        self,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._monotonic = monotonic
        self._logs: dict[str, _Log] = {}
        self._waiters: dict[str, set[asyncio.Event]] = {}

    # -- appending -------------------------------------------------------------------------------

    async def append(
        self, stream: str, fields: Mapping[str, str], *, maxlen: int | None = None
    ) -> StreamEntry:
        return (await self.append_many(stream, [fields], maxlen=maxlen))[0]

    async def append_many(
        self, stream: str, fields: Sequence[Mapping[str, str]], *, maxlen: int | None = None
    ) -> list[StreamEntry]:
        for one in fields:
            _checks.check_fields(one)
        _checks.check_maxlen(maxlen)
        if not fields:
            return []
        log = self._logs.setdefault(stream, _Log())
        added = []
        for one in fields:
            # `0-*` on Redis: the next counter value, even after trimming everything.
            seq = log.last + 1
            log.last = seq
            entry = StreamEntry(sequence_to_entry_id(seq), seq, dict(one))
            log.seqs.append(seq)
            log.entries.append(entry)
            added.append(entry)
        if maxlen is not None:
            log.drop_front(log.size() - maxlen)
        self._notify(stream)
        return added

    # -- plain reads -----------------------------------------------------------------------------

    async def read(self, stream: str, *, after: str | int = "0-0", count: int = 100) -> list[StreamEntry]:
        _checks.check_count(count)
        bound = _after_bound(*parse_id(after, "after"))
        log = self._logs.get(stream)
        return log.after(bound, count) if log is not None else []

    async def read_last(self, stream: str, count: int) -> list[StreamEntry]:
        _checks.check_count(count)
        log = self._logs.get(stream)
        if log is None:
            return []
        return log.entries[max(log.head, len(log.entries) - count) :]

    async def read_reverse(
        self, stream: str, *, before: str | int | None = None, count: int = 100
    ) -> list[StreamEntry]:
        _checks.check_count(count)
        bound = _BEYOND_ALL if before is None else _from_bound(*parse_id(before, "before"))
        log = self._logs.get(stream)
        if log is None:
            return []
        end = bisect_left(log.seqs, bound, lo=log.head)
        return log.entries[max(log.head, end - count) : end][::-1]

    async def tail(
        self, streams: Mapping[str, str | int], *, count: int = 100, block_ms: int | None = 1000
    ) -> list[tuple[str, StreamEntry]]:
        _checks.check_count(count)
        blocking = _checks.blocks(block_ms)
        if not streams:
            return []  # nothing could ever wake us; Redis answers at once too
        # "$" is pinned now: an entry appended while we wait must count as new.
        bounds = {name: self._tail_bound(name, pos) for name, pos in streams.items()}
        deadline = self._deadline(block_ms)
        while True:
            found = [
                (name, entry)
                for name, bound in bounds.items()
                if (log := self._logs.get(name)) is not None
                for entry in log.after(bound, count)
            ]
            if found or not blocking or not await self._wait(bounds, deadline):
                return found

    def _tail_bound(self, stream: str, position: str | int) -> int:
        if position == "$":
            log = self._logs.get(stream)
            return log.last if log is not None else 0
        return _after_bound(*parse_id(position, "streams"))

    # -- consumer groups -------------------------------------------------------------------------

    async def create_group(self, stream: str, group: str, *, start: str | int = "$") -> bool:
        parsed = None if start == "$" else parse_id(start, "start")
        log = self._logs.setdefault(stream, _Log())
        start_bound = log.last if parsed is None else _after_bound(*parsed)
        if group in log.groups:
            return False
        log.groups[group] = _Group(start_bound)
        return True

    async def destroy_group(self, stream: str, group: str) -> bool:
        log = self._logs.get(stream)
        if log is None or log.groups.pop(group, None) is None:
            return False
        # Blocked readers of this group must fail now, as they do on Redis, not at their timeout.
        self._notify(stream)
        return True

    async def delete_consumer(self, stream: str, group: str, consumer: str) -> int:
        _, state = self._group(stream, group)
        owned = [seq for seq, p in state.pel.items() if p.consumer == consumer]
        for seq in owned:
            del state.pel[seq]
        return len(owned)

    async def read_group(
        self,
        stream: str,
        group: str,
        consumer: str,
        *,
        count: int = 100,
        block_ms: int | None = 1000,
    ) -> list[GroupEntry]:
        _checks.check_count(count)
        blocking = _checks.blocks(block_ms)
        deadline = self._deadline(block_ms)
        while True:
            log, state = self._group(stream, group)
            entries = log.after(state.last_delivered, count)
            if entries:
                now = self._monotonic()
                for entry in entries:
                    state.pel[entry.sequence] = _Pending(consumer, now, 1)
                state.last_delivered = entries[-1].sequence
                return [GroupEntry(entry, 1) for entry in entries]
            if not blocking or not await self._wait((stream,), deadline):
                return []

    async def ack(self, stream: str, group: str, ids: Sequence[str]) -> int:
        parsed = [parse_id(one, "ids") for one in ids]
        log = self._logs.get(stream)
        state = log.groups.get(group) if log is not None else None
        if state is None:
            return 0
        acked = 0
        for ms, n in parsed:
            if ms == 0 and state.pel.pop(n, None) is not None:
                acked += 1
        return acked

    async def pending(
        self, stream: str, group: str, *, count: int = 100, consumer: str | None = None
    ) -> list[PendingEntry]:
        _checks.check_count(count)
        _, state = self._group(stream, group)
        now = self._monotonic()
        out: list[PendingEntry] = []
        for seq, p in state.pel.items():
            if consumer is not None and p.consumer != consumer:
                continue
            idle_ms = self._idle_ms(p, now)
            out.append(PendingEntry(sequence_to_entry_id(seq), p.consumer, idle_ms, p.deliveries))
            if len(out) == count:
                break
        return out

    async def pending_count(self, stream: str, group: str) -> int:
        _, state = self._group(stream, group)
        return len(state.pel)

    async def set_idle(
        self, stream: str, group: str, consumer: str, ids: Sequence[str], *, idle_ms: int
    ) -> list[str]:
        idle = _checks.clamp_idle(idle_ms)
        parsed = [parse_id(one, "ids") for one in ids]
        if not parsed:
            return []
        log, state = self._group(stream, group)
        now = self._monotonic()
        moved: list[str] = []
        for ms, n in parsed:
            p = state.pel.get(n) if ms == 0 else None
            if p is None:
                continue
            if not log.contains(n):
                del state.pel[n]
                continue
            p.consumer, p.delivered_at, p.idle_base_ms = consumer, now, idle
            moved.append(sequence_to_entry_id(n))
        return moved

    async def claim_idle(
        self,
        stream: str,
        group: str,
        consumer: str,
        *,
        min_idle_ms: int,
        count: int = 100,
        start_id: str | int = "0-0",
    ) -> list[GroupEntry]:
        _checks.check_count(count)
        _checks.check_min_idle(min_idle_ms)
        start = _from_bound(*parse_id(start_id, "start_id"))
        log, state = self._group(stream, group)
        now = self._monotonic()
        claimed: list[GroupEntry] = []
        for seq, p in list(state.pel.items()):
            if seq < start or self._idle_ms(p, now) < min_idle_ms:
                continue
            if not log.contains(seq):
                del state.pel[seq]
                continue
            p.consumer, p.delivered_at, p.deliveries = consumer, now, p.deliveries + 1
            p.idle_base_ms = 0
            entry = log.entries[bisect_left(log.seqs, seq, lo=log.head)]
            claimed.append(GroupEntry(entry, p.deliveries))
            if len(claimed) == count:
                break
        return claimed

    def _group(self, stream: str, group: str) -> tuple[_Log, _Group]:
        log = self._logs.get(stream)
        state = log.groups.get(group) if log is not None else None
        if log is None or state is None:
            raise not_found("consumer group", f"{group} on stream {stream}")
        return log, state

    @staticmethod
    def _idle_ms(p: _Pending, now: float) -> int:
        return p.idle_base_ms + max(0, int((now - p.delivered_at) * 1000))

    # -- maintenance -----------------------------------------------------------------------------

    async def trim(self, stream: str, *, maxlen: int | None = None, min_id: str | int | None = None) -> int:
        _checks.check_trim(maxlen, min_id)
        log = self._logs.get(stream)
        if log is None:
            return 0
        if maxlen is not None:
            return log.drop_front(log.size() - maxlen)
        assert min_id is not None
        first_kept = bisect_left(log.seqs, _from_bound(*parse_id(min_id, "min_id")), lo=log.head)
        return log.drop_front(first_kept - log.head)

    async def length(self, stream: str) -> int:
        log = self._logs.get(stream)
        return log.size() if log is not None else 0

    async def delete_stream(self, stream: str) -> None:
        if self._logs.pop(stream, None) is not None:
            self._notify(stream)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        """Nothing to release; the data lives as long as the instance, as a server's would."""

    # -- waiting ---------------------------------------------------------------------------------

    @staticmethod
    def _deadline(block_ms: int | None) -> float:
        return asyncio.get_running_loop().time() + (block_ms or 0) / 1000

    async def _wait(self, streams: Iterable[str], deadline: float) -> bool:
        """Park until one of `streams` changes; False once `deadline` (loop time) has passed."""
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return False
        names = list(streams)
        event = asyncio.Event()
        for name in names:
            self._waiters.setdefault(name, set()).add(event)
        try:
            async with asyncio.timeout(remaining):
                await event.wait()
        except TimeoutError:
            return False
        finally:
            for name in names:
                waiting = self._waiters.get(name)
                if waiting is not None:
                    waiting.discard(event)
                    if not waiting:
                        del self._waiters[name]
        return True

    def _notify(self, stream: str) -> None:
        for event in self._waiters.pop(stream, ()):
            event.set()
