"""The stream interface both backends implement, and the values it traffics in.

The contract is Redis Streams' semantics, because Redis is the production backend; the in-memory
backend imitates it (including consumer-group bookkeeping) so the embedded single-process mode behaves
the same as a deployment and one contract suite can hold both to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One appended entry.

    `fields` may be shared between readers (the memory backend hands out the stored entry rather than
    copying it on every read), so treat it as read-only.
    """

    id: str
    sequence: int
    fields: dict[str, str]


@dataclass(frozen=True, slots=True)
class GroupEntry:
    """An entry delivered to a consumer group member, with its delivery attempt (1 on first delivery).

    Subscribers need the attempt to apply retry limits and dead-lettering; carrying it here saves a
    round trip to `pending` per message.
    """

    entry: StreamEntry
    deliveries: int


@dataclass(frozen=True, slots=True)
class PendingEntry:
    """A delivered but unacknowledged entry in a group's pending list."""

    id: str
    consumer: str
    idle_ms: int
    deliveries: int


class Stream(Protocol):
    """Append-only logs with blocking reads and consumer groups.

    Positions (`after`, `start`, tail ids) take an entry id string or an int sequence
    (see `entry_id_to_sequence`). Reads are exclusive of the position given.

    Blocking: `block_ms` of None or 0 means "do not wait". Redis reads `BLOCK 0` as "wait forever",
    which would pin a pooled connection and make shutdown hang, so callers that want to wait
    indefinitely loop instead.
    """

    async def append(
        self, stream: str, fields: Mapping[str, str], *, maxlen: int | None = None
    ) -> StreamEntry:
        """Append with an automatic id, then trim to about `maxlen` entries.

        Trimming on append is approximate on Redis (`MAXLEN ~`, whole radix nodes at a time, so the
        stream may keep somewhat more than `maxlen`) and exact in memory. At least the newest
        `maxlen` entries are always kept. Use `trim` for an exact bound.
        """
        ...

    async def append_many(
        self, stream: str, fields: Sequence[Mapping[str, str]], *, maxlen: int | None = None
    ) -> list[StreamEntry]:
        """Append several entries in one round trip, in order; same trimming as `append`."""
        ...

    async def read(self, stream: str, *, after: str | int = "0-0", count: int = 100) -> list[StreamEntry]:
        """Up to `count` entries with ids strictly after `after`, oldest first."""
        ...

    async def read_last(self, stream: str, count: int) -> list[StreamEntry]:
        """The newest `count` entries, oldest first."""
        ...

    async def read_reverse(
        self, stream: str, *, before: str | int | None = None, count: int = 100
    ) -> list[StreamEntry]:
        """Up to `count` entries with ids strictly before `before`, newest first.

        `before=None` starts from the newest entry. Nothing precedes `0-0`, so that returns []. To scan
        backwards, pass the id of the last entry returned as the next `before`.
        """
        ...

    async def tail(
        self, streams: Mapping[str, str | int], *, count: int = 100, block_ms: int | None = 1000
    ) -> list[tuple[str, StreamEntry]]:
        """Entries after each stream's position, waiting up to `block_ms` for the first to arrive.

        `"$"` as a position means "whatever is appended after this call"; it is resolved once per
        call, so a loop must carry on from the last id it saw rather than pass `"$"` again. `count`
        applies per stream. Returns [] when nothing arrives in time.
        """
        ...

    async def create_group(self, stream: str, group: str, *, start: str | int = "$") -> bool:
        """Create `group` delivering entries after `start` (`"$"`: new only, `"0"`: all).

        Creates an empty stream if needed. Returns False, changing nothing, when the group exists,
        so every process can call it at startup.
        """
        ...

    async def destroy_group(self, stream: str, group: str) -> bool:
        """Drop the group and its pending list; False if there was no such group."""
        ...

    async def delete_consumer(self, stream: str, group: str, consumer: str) -> int:
        """Remove `consumer` from `group`; returns how many pending entries it still owned.

        Those entries are dropped from the pending list (Redis `XGROUP DELCONSUMER`), so they are
        never redelivered: release them first (`set_idle`) if another consumer should take them over.
        An unknown consumer owns nothing, so 0. NOT_FOUND without group.
        """
        ...

    async def read_group(
        self,
        stream: str,
        group: str,
        consumer: str,
        *,
        count: int = 100,
        block_ms: int | None = 1000,
    ) -> list[GroupEntry]:
        """Deliver up to `count` never-delivered entries to `consumer`, recording them as pending.

        Raises NOT_FOUND if the group does not exist, including when it is destroyed or its stream
        deleted while this call is waiting.
        """
        ...

    async def ack(self, stream: str, group: str, ids: Sequence[str]) -> int:
        """Remove ids from the group's pending list; returns how many were pending."""
        ...

    async def pending(
        self, stream: str, group: str, *, count: int = 100, consumer: str | None = None
    ) -> list[PendingEntry]:
        """The oldest `count` pending entries, optionally only `consumer`'s. NOT_FOUND without group."""
        ...

    async def pending_count(self, stream: str, group: str) -> int:
        """How many entries the group's pending list holds, over all consumers. NOT_FOUND without group.

        Entries trimmed from the stream count until a claim drops them, as on Redis.
        """
        ...

    async def set_idle(
        self, stream: str, group: str, consumer: str, ids: Sequence[str], *, idle_ms: int
    ) -> list[str]:
        """Make `consumer` the owner of each id pending in the group and set its idle time to `idle_ms`.

        Unlike `claim_idle` this is not a delivery: the delivery count stays as it was. An entry then
        becomes claimable by `claim_idle(min_idle_ms=m)` once `m - idle_ms` more milliseconds pass,
        so idle 0 marks work in progress, `ack wait - delay` redelivers after `delay`, and a large
        value releases an entry at once. `idle_ms` must not be negative; values above 10**12 (about 31
        years: Redis counts delivery times from the Unix epoch) count as 10**12 on both backends.

        Returns the ids that were pending, in the order given (canonical `0-<n>` form). Ids not
        pending are skipped; entries trimmed from the stream since delivery are dropped from the
        pending list and not returned, as `claim_idle` does. An empty `ids` returns [] without
        looking at the group; otherwise NOT_FOUND without group.
        """
        ...

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
        """Take over up to `count` entries pending at least `min_idle_ms`, from `start_id` on.

        Each claim counts as a delivery and resets the idle time. Entries trimmed from the stream
        since delivery can never be processed, so they are dropped from the pending list instead of
        being returned. The whole pending list from `start_id` is scanned, so no cursor is needed.
        """
        ...

    async def trim(self, stream: str, *, maxlen: int | None = None, min_id: str | int | None = None) -> int:
        """Exactly trim to `maxlen` newest entries or drop ids below `min_id`; returns entries removed."""
        ...

    async def length(self, stream: str) -> int: ...

    async def delete_stream(self, stream: str) -> None:
        """Delete entries, groups and the last-id memory, as if the stream never existed."""
        ...

    async def ping(self) -> None:
        """Raise UNAVAILABLE if the backend cannot serve requests."""
        ...

    async def close(self) -> None: ...
