"""Redis Streams behind the `Stream` contract.

The client is pinned to RESP2 with decoded responses: redis-py reshapes stream replies differently per
protocol, and one shape keeps the parsing here small and tested. Needs Redis 7.0 or later (XAUTOCLAIM
dropping trimmed entries from the pending list arrived in 7.0).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT, KeyT, StreamIdT

from ironflow.services.core.errors import ErrorCode, ServiceError, invalid_argument, not_found

from . import _checks
from ._base import GroupEntry, PendingEntry, StreamEntry
from ._ids import entry_id_to_sequence, format_id, parse_id

# Zero milliseconds, automatic counter: dense sequences (see `_ids`). Needs Redis 7.
_NEXT_ID = "0-*"

# XAUTOCLAIM stops after scanning about 10 x COUNT pending entries and hands back a cursor; looping
# server-side gives callers "claim up to count" without carrying cursors between calls. Reading each
# claimed entry's delivery count in the same script keeps it consistent with the claim.
_CLAIM_SCRIPT = """
local want = tonumber(ARGV[5])
local cursor = ARGV[4]
local claimed = {}
repeat
  local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor,
                           'COUNT', want - #claimed)
  cursor = reply[1]
  for _, entry in ipairs(reply[2]) do
    if entry then
      claimed[#claimed + 1] = entry
    end
  end
until cursor == '0-0' or #claimed >= want
local out = {}
for i, entry in ipairs(claimed) do
  local info = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
  out[i] = {entry[1], entry[2], info[1][4]}
end
return out
"""

# XGROUP DESTROY errors on a missing key; checking first in a script avoids matching error text.
_DESTROY_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
return redis.call('XGROUP', 'DESTROY', KEYS[1], ARGV[1])
"""

# XGROUP DELCONSUMER on a missing key fails with its own wording rather than NOGROUP; answering NOGROUP
# from the script keeps the mapping to NOT_FOUND in `_errors`.
_DELETE_CONSUMER_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply("NOGROUP No such key '" .. KEYS[1] .. "' or consumer group '" .. ARGV[1] .. "'")
end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""

_MAX_ID = (1 << 64) - 1


class RedisStream:
    """The `Stream` contract on Redis. Blocking reads each hold a pooled connection while they wait,
    so size the pool (`?max_connections=` in the URL) for the number of concurrent tails."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._claim = client.register_script(_CLAIM_SCRIPT)
        self._destroy = client.register_script(_DESTROY_SCRIPT)
        self._delete_consumer = client.register_script(_DELETE_CONSUMER_SCRIPT)

    @classmethod
    def from_url(cls, url: str) -> RedisStream:
        client = aioredis.from_url(url, decode_responses=True, protocol=2)
        if str(client.connection_pool.connection_kwargs.get("protocol")) != "2":
            raise invalid_argument("stream_url", "only RESP2 is supported; drop the protocol option")
        return cls(client)

    # -- appending -------------------------------------------------------------------------------

    async def append(
        self, stream: str, fields: Mapping[str, str], *, maxlen: int | None = None
    ) -> StreamEntry:
        _checks.check_fields(fields)
        _checks.check_maxlen(maxlen)
        payload = dict[FieldT, EncodableT](fields.items())
        with _errors():
            entry_id = await self._redis.xadd(stream, payload, id=_NEXT_ID, maxlen=maxlen, approximate=True)
        return _entry(str(entry_id), dict(fields))

    async def append_many(
        self, stream: str, fields: Sequence[Mapping[str, str]], *, maxlen: int | None = None
    ) -> list[StreamEntry]:
        """Pipelined, so one round trip; not a transaction, so other writers' entries may interleave."""
        for one in fields:
            _checks.check_fields(one)
        _checks.check_maxlen(maxlen)
        if not fields:
            return []
        with _errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                for one in fields:
                    payload = dict[FieldT, EncodableT](one.items())
                    pipe.xadd(stream, payload, id=_NEXT_ID, maxlen=maxlen, approximate=True)
                ids = await pipe.execute()
        return [_entry(str(entry_id), dict(one)) for entry_id, one in zip(ids, fields, strict=True)]

    # -- plain reads -----------------------------------------------------------------------------

    async def read(self, stream: str, *, after: str | int = "0-0", count: int = 100) -> list[StreamEntry]:
        _checks.check_count(count)
        ms, n = parse_id(after, "after")
        if ms == n == _MAX_ID:
            return []  # nothing can follow the largest id, and Redis rejects "(" on it
        with _errors():
            rows = await self._redis.xrange(stream, min=f"({format_id(ms, n)}", max="+", count=count)
        return _entries(rows)

    async def read_last(self, stream: str, count: int) -> list[StreamEntry]:
        _checks.check_count(count)
        with _errors():
            rows = await self._redis.xrevrange(stream, max="+", min="-", count=count)
        return _entries(rows)[::-1]

    async def read_reverse(
        self, stream: str, *, before: str | int | None = None, count: int = 100
    ) -> list[StreamEntry]:
        _checks.check_count(count)
        newest = "+"
        if before is not None:
            ms, n = parse_id(before, "before")
            if ms == n == 0:
                return []  # nothing precedes the smallest id, and Redis rejects "(" on it
            newest = f"({format_id(ms, n)}"
        with _errors():
            rows = await self._redis.xrevrange(stream, max=newest, min="-", count=count)
        return _entries(rows)

    async def tail(
        self, streams: Mapping[str, str | int], *, count: int = 100, block_ms: int | None = 1000
    ) -> list[tuple[str, StreamEntry]]:
        _checks.check_count(count)
        blocking = _checks.blocks(block_ms)
        if not streams:
            return []
        positions: dict[KeyT, StreamIdT] = {
            name: pos if pos == "$" else format_id(*parse_id(pos, "streams")) for name, pos in streams.items()
        }
        with _errors():
            reply = await self._redis.xread(
                positions,
                count=count,
                block=block_ms if blocking else None,
            )
        return [(name, entry) for name, rows in _by_stream(reply) for entry in _entries(rows)]

    # -- consumer groups -------------------------------------------------------------------------

    async def create_group(self, stream: str, group: str, *, start: str | int = "$") -> bool:
        start_id = "$" if start == "$" else format_id(*parse_id(start, "start"))
        try:
            with _errors():
                await self._redis.xgroup_create(stream, group, id=start_id, mkstream=True)
        except ResponseError as exc:
            if str(exc).startswith("BUSYGROUP"):
                return False
            raise
        return True

    async def destroy_group(self, stream: str, group: str) -> bool:
        with _errors():
            destroyed = await self._destroy(keys=[stream], args=[group])
        return bool(destroyed)

    async def delete_consumer(self, stream: str, group: str, consumer: str) -> int:
        with _errors(stream, group):
            return int(await self._delete_consumer(keys=[stream], args=[group, consumer]))

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
        with _errors(stream, group):
            reply = await self._redis.xreadgroup(
                group, consumer, {stream: ">"}, count=count, block=block_ms if blocking else None
            )
        # ">" only ever hands out entries the group has not delivered before: first attempt.
        return [GroupEntry(entry, 1) for _, rows in _by_stream(reply) for entry in _entries(rows)]

    async def ack(self, stream: str, group: str, ids: Sequence[str]) -> int:
        canonical = [format_id(*parse_id(one, "ids")) for one in ids]
        if not canonical:
            return 0
        with _errors():
            return int(await self._redis.xack(stream, group, *canonical))

    async def pending(
        self, stream: str, group: str, *, count: int = 100, consumer: str | None = None
    ) -> list[PendingEntry]:
        _checks.check_count(count)
        with _errors(stream, group):
            rows = await self._redis.xpending_range(
                stream, group, min="-", max="+", count=count, consumername=consumer
            )
        return [
            PendingEntry(
                str(row["message_id"]),
                str(row["consumer"]),
                int(row["time_since_delivered"]),
                int(row["times_delivered"]),
            )
            for row in rows
        ]

    async def pending_count(self, stream: str, group: str) -> int:
        with _errors(stream, group):
            summary = await self._redis.xpending(stream, group)
        return int(summary["pending"])

    async def set_idle(
        self, stream: str, group: str, consumer: str, ids: Sequence[str], *, idle_ms: int
    ) -> list[str]:
        idle = _checks.clamp_idle(idle_ms)
        canonical: list[StreamIdT] = [format_id(*parse_id(one, "ids")) for one in ids]
        if not canonical:
            return []
        # Minimum idle 0 takes every listed id that is pending; JUSTID leaves the delivery count alone
        # (and, as for XAUTOCLAIM, Redis 7 drops ids trimmed from the stream from the pending list).
        with _errors(stream, group):
            moved = await self._redis.xclaim(stream, group, consumer, 0, canonical, idle=idle, justid=True)
        return [str(one) for one in moved]

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
        start = format_id(*parse_id(start_id, "start_id"))
        with _errors(stream, group):
            rows = await self._claim(keys=[stream], args=[group, consumer, min_idle_ms, start, count])
        return [GroupEntry(_entry(str(entry_id), _pairs(flat)), int(n)) for entry_id, flat, n in rows]

    # -- maintenance -----------------------------------------------------------------------------

    async def trim(self, stream: str, *, maxlen: int | None = None, min_id: str | int | None = None) -> int:
        _checks.check_trim(maxlen, min_id)
        with _errors():
            if maxlen is not None:
                return int(await self._redis.xtrim(stream, maxlen=maxlen, approximate=False))
            assert min_id is not None
            floor = format_id(*parse_id(min_id, "min_id"))
            return int(await self._redis.xtrim(stream, minid=floor, approximate=False))

    async def length(self, stream: str) -> int:
        with _errors():
            return int(await self._redis.xlen(stream))

    async def delete_stream(self, stream: str) -> None:
        with _errors():
            await self._redis.delete(stream)

    async def ping(self) -> None:
        with _errors():
            await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()


@contextmanager
def _errors(stream: str = "", group: str = "") -> Iterator[None]:
    """Map Redis failures onto the service error codes the rest of the system speaks."""
    try:
        yield
    except ResponseError as exc:
        message = str(exc)
        # A blocked XREADGROUP whose stream is deleted under it gets UNBLOCKED rather than NOGROUP,
        # but for the caller it is the same: the group is gone.
        gone = "NOGROUP" in message or (message.startswith("UNBLOCKED") and "no longer exists" in message)
        if group and gone:
            raise not_found("consumer group", f"{group} on stream {stream}") from exc
        raise
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise ServiceError(ErrorCode.UNAVAILABLE, "the stream store (Redis) is unreachable") from exc


def _entry(entry_id: str, fields: dict[str, str]) -> StreamEntry:
    return StreamEntry(entry_id, entry_id_to_sequence(entry_id), fields)


def _by_stream(reply: object) -> list[tuple[str, Any]]:
    # from_url pins RESP2, whose stream replies are [[name, rows], ...] (or nil on timeout).
    if reply is None:
        return []
    assert isinstance(reply, list)
    return [(str(name), rows) for name, rows in reply]


def _entries(rows: Any) -> list[StreamEntry]:
    return [_entry(str(entry_id), dict(fields)) for entry_id, fields in rows]


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))
