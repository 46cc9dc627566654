"""One contract for every stream backend: each test runs against the in-memory store and real Redis.

Redis tests share a server with whatever else is running, so every stream key carries a fresh uuid;
the keys are deleted afterwards as a courtesy, not because any test depends on it. Waiting is always
bounded by a deadline (or the task itself), never a bare sleep hoping a result has arrived.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ironflow.services.core.errors import ErrorCode, ServiceError
from ironflow.services.core.streams import (
    GroupEntry,
    MemoryStream,
    RedisStream,
    StreamEntry,
    entry_id_to_sequence,
    open_stream,
    sequence_to_entry_id,
)
from tests.conftest import REDIS_URL
from tests.contract.conftest import DEADLINE_S, Backend, FakeClock, append_n, ids_of


def fields_of(entries: list[StreamEntry]) -> list[dict[str, str]]:
    return [e.fields for e in entries]


# -- ids and sequences ---------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_sequence_survives_round_trip_through_entry_id(seq: int) -> None:
    assert entry_id_to_sequence(sequence_to_entry_id(seq)) == seq


def test_sequence_is_the_counter_of_a_zero_millisecond_id() -> None:
    assert entry_id_to_sequence("0-0") == 0
    assert entry_id_to_sequence("0-7") == 7
    assert sequence_to_entry_id(1 << 20) == "0-1048576"


def test_ids_not_written_by_ironflow_have_no_sequence() -> None:
    with pytest.raises(ValueError, match="not appended by Ironflow"):
        entry_id_to_sequence("1700000000000-0")
    with pytest.raises(ValueError, match="negative"):
        sequence_to_entry_id(-1)


async def test_sequences_are_dense_from_one(backend: Backend) -> None:
    entries = await append_n(backend, backend.key(), 5)
    assert [e.sequence for e in entries] == [1, 2, 3, 4, 5]
    assert [e.id for e in entries] == ["0-1", "0-2", "0-3", "0-4", "0-5"]


async def test_appended_entries_carry_the_sequence_of_their_id(backend: Backend) -> None:
    entries = await append_n(backend, backend.key(), 5)
    assert [e.sequence for e in entries] == [entry_id_to_sequence(e.id) for e in entries]
    assert [e.sequence for e in entries] == sorted({e.sequence for e in entries})


# -- append and read -----------------------------------------------------------------------------


async def test_append_returns_entry_and_read_returns_entries_in_append_order(backend: Backend) -> None:
    s = backend.key()
    first = await backend.stream.append(s, {"a": "1"})
    second = await backend.stream.append(s, {"a": "2", "b": "x"})
    assert first.fields == {"a": "1"}
    assert entry_id_to_sequence(second.id) > entry_id_to_sequence(first.id)
    assert await backend.stream.read(s) == [first, second]
    assert await backend.stream.length(s) == 2


async def test_read_after_id_is_exclusive_and_respects_count(backend: Backend) -> None:
    s = backend.key()
    entries = await append_n(backend, s, 6)
    assert await backend.stream.read(s, after=entries[1].id) == entries[2:]
    assert await backend.stream.read(s, after=entries[1].id, count=2) == entries[2:4]
    assert await backend.stream.read(s, after=entries[-1].id) == []


async def test_read_after_sequence_matches_read_after_id(backend: Backend) -> None:
    s = backend.key()
    entries = await append_n(backend, s, 4)
    by_seq = await backend.stream.read(s, after=entries[0].sequence)
    assert by_seq == await backend.stream.read(s, after=entries[0].id) == entries[1:]
    assert await backend.stream.read(s, after=0) == entries


async def test_read_of_missing_stream_is_empty(backend: Backend) -> None:
    s = backend.key()
    assert await backend.stream.read(s) == []
    assert await backend.stream.read_last(s, 3) == []
    assert await backend.stream.length(s) == 0


async def test_read_rejects_malformed_position_and_zero_count(backend: Backend) -> None:
    s = backend.key()
    with pytest.raises(ServiceError) as bad_id:
        await backend.stream.read(s, after="yesterday")
    assert bad_id.value.code is ErrorCode.INVALID_ARGUMENT
    with pytest.raises(ServiceError) as bad_count:
        await backend.stream.read(s, count=0)
    assert bad_count.value.code is ErrorCode.INVALID_ARGUMENT


async def test_read_last_returns_newest_entries_oldest_first(backend: Backend) -> None:
    s = backend.key()
    entries = await append_n(backend, s, 5)
    assert await backend.stream.read_last(s, 2) == entries[3:]
    assert await backend.stream.read_last(s, 50) == entries


async def test_append_many_appends_all_in_order(backend: Backend) -> None:
    s = backend.key()
    entries = await backend.stream.append_many(s, [{"n": str(i)} for i in range(50)])
    assert fields_of(entries) == [{"n": str(i)} for i in range(50)]
    assert await backend.stream.read(s, count=100) == entries
    assert await backend.stream.append_many(s, []) == []


async def test_append_rejects_entry_without_fields(backend: Backend) -> None:
    s = backend.key()
    with pytest.raises(ServiceError) as single:
        await backend.stream.append(s, {})
    assert single.value.code is ErrorCode.INVALID_ARGUMENT
    with pytest.raises(ServiceError):
        await backend.stream.append_many(s, [{"ok": "1"}, {}])
    assert await backend.stream.length(s) == 0


async def test_append_with_maxlen_keeps_newest_entries_and_bounds_length(backend: Backend) -> None:
    s = backend.key()
    for start in range(0, 300, 50):
        await backend.stream.append_many(s, [{"i": str(i)} for i in range(start, start + 50)], maxlen=10)
    last = await backend.stream.append(s, {"i": "300"}, maxlen=10)
    # Redis trims whole radix-tree nodes (100 entries by default), so only a loose upper bound holds.
    length = await backend.stream.length(s)
    assert 10 <= length < 301
    kept = await backend.stream.read(s, count=1000)
    assert len(kept) == length
    assert kept[-1] == last
    assert fields_of(kept[-10:]) == [{"i": str(i)} for i in range(291, 301)]


async def test_new_ids_stay_above_last_id_after_trimming_everything(backend: Backend) -> None:
    s = backend.key()
    entries = await append_n(backend, s, 3)
    assert await backend.stream.trim(s, maxlen=0) == 3
    # "$" still means "after the last id ever appended", not "after the first entry left".
    await backend.stream.create_group(s, "g", start="$")
    assert await backend.stream.read_group(s, "g", "c", block_ms=None) == []
    after = await backend.stream.append(s, {"again": "1"})
    assert after.sequence > entries[-1].sequence
    assert await backend.stream.read_group(s, "g", "c", block_ms=None) == [GroupEntry(after, 1)]


# -- tail ----------------------------------------------------------------------------------------


async def test_tail_wakes_promptly_when_another_task_appends(backend: Backend) -> None:
    s = backend.key()
    first = await backend.stream.append(s, {"n": "0"})
    waiting = asyncio.create_task(backend.stream.tail({s: first.id}, block_ms=30_000))
    done, _ = await asyncio.wait({waiting}, timeout=0.1)
    assert not done, "tail returned before anything was appended"
    loop = asyncio.get_running_loop()
    appended_at = loop.time()
    new = await backend.stream.append(s, {"n": "1"})
    assert await asyncio.wait_for(waiting, timeout=5) == [(s, new)]
    assert loop.time() - appended_at < 5


async def test_tail_dollar_skips_entries_appended_before_the_call(backend: Backend) -> None:
    s = backend.key()
    await backend.stream.append(s, {"kind": "old"})
    waiting = asyncio.create_task(backend.stream.tail({s: "$"}, block_ms=30_000))
    # The tail may not have reached the server yet, so keep appending until it reports something.
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while not waiting.done():
        assert asyncio.get_running_loop().time() < deadline, "tail never saw a new entry"
        await backend.stream.append(s, {"kind": "new"})
        await asyncio.wait({waiting}, timeout=0.05)
    got = waiting.result()
    assert got
    assert all(name == s and entry.fields == {"kind": "new"} for name, entry in got)


async def test_tail_returns_empty_list_when_nothing_arrives_in_time(backend: Backend) -> None:
    s = backend.key()
    await backend.stream.append(s, {"n": "0"})
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await backend.stream.tail({s: "$"}, block_ms=100) == []
    assert loop.time() - started >= 0.09


async def test_tail_without_blocking_returns_what_is_there(backend: Backend) -> None:
    s = backend.key()
    assert await backend.stream.tail({s: "0-0"}, block_ms=None) == []
    entry = await backend.stream.append(s, {"n": "0"})
    assert await backend.stream.tail({s: "0-0"}, block_ms=0) == [(s, entry)]


async def test_tail_reads_several_streams_and_names_each_entry(backend: Backend) -> None:
    a, b, quiet = backend.key("a"), backend.key("b"), backend.key("quiet")
    a_entries = await append_n(backend, a, 3)
    b_entries = await append_n(backend, b, 2)
    got = await backend.stream.tail({a: a_entries[0].id, quiet: "0-0", b: 0}, count=10, block_ms=None)
    assert got == [(a, e) for e in a_entries[1:]] + [(b, e) for e in b_entries]
    limited = await backend.stream.tail({a: 0, b: 0}, count=1, block_ms=None)
    assert limited == [(a, a_entries[0]), (b, b_entries[0])]


async def test_cancelled_tail_leaves_the_stream_usable(backend: Backend) -> None:
    s = backend.key()
    waiting = asyncio.create_task(backend.stream.tail({s: "$"}, block_ms=30_000))
    await asyncio.wait({waiting}, timeout=0.1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    entry = await backend.stream.append(s, {"n": "0"})
    assert await backend.stream.tail({s: 0}, block_ms=1000) == [(s, entry)]


# -- consumer groups -----------------------------------------------------------------------------


async def test_group_created_at_earliest_delivers_existing_entries(backend: Backend) -> None:
    s = backend.key()
    entries = await append_n(backend, s, 3)
    assert await backend.stream.create_group(s, "g", start="0")
    got = await backend.stream.read_group(s, "g", "c", block_ms=None)
    assert got == [GroupEntry(e, 1) for e in entries]


async def test_group_created_at_end_delivers_only_later_entries(backend: Backend) -> None:
    s = backend.key()
    await append_n(backend, s, 3)
    assert await backend.stream.create_group(s, "g")
    assert await backend.stream.read_group(s, "g", "c", block_ms=None) == []
    later = await backend.stream.append(s, {"late": "1"})
    assert await backend.stream.read_group(s, "g", "c", block_ms=None) == [GroupEntry(later, 1)]


async def test_group_created_at_id_or_sequence_delivers_entries_after_it(backend: Backend) -> None:
    s = backend.key()
    entries = await append_n(backend, s, 4)
    await backend.stream.create_group(s, "by-id", start=entries[1].id)
    await backend.stream.create_group(s, "by-seq", start=entries[2].sequence)
    by_id = await backend.stream.read_group(s, "by-id", "c", block_ms=None)
    by_seq = await backend.stream.read_group(s, "by-seq", "c", block_ms=None)
    assert ids_of(by_id) == [e.id for e in entries[2:]]
    assert ids_of(by_seq) == [e.id for e in entries[3:]]


async def test_create_group_is_idempotent_and_creates_missing_stream(backend: Backend) -> None:
    s = backend.key()
    assert await backend.stream.create_group(s, "g", start="0") is True
    entry = await backend.stream.append(s, {"n": "0"})
    assert await backend.stream.create_group(s, "g", start="$") is False
    # The second call changed nothing: the group still starts from the beginning.
    assert await backend.stream.read_group(s, "g", "c", block_ms=None) == [GroupEntry(entry, 1)]


async def test_destroy_group_reports_whether_it_existed(backend: Backend) -> None:
    s = backend.key()
    assert await backend.stream.destroy_group(s, "g") is False
    await backend.stream.create_group(s, "g")
    assert await backend.stream.destroy_group(s, "g") is True
    assert await backend.stream.destroy_group(s, "g") is False
    with pytest.raises(ServiceError) as missing:
        await backend.stream.read_group(s, "g", "c", block_ms=None)
    assert missing.value.code is ErrorCode.NOT_FOUND


async def test_destroying_group_fails_its_blocked_reader_promptly(backend: Backend) -> None:
    s = backend.key()
    await backend.stream.create_group(s, "g")
    waiting = asyncio.create_task(backend.stream.read_group(s, "g", "c", block_ms=30_000))
    done, _ = await asyncio.wait({waiting}, timeout=0.1)
    assert not done
    await backend.stream.destroy_group(s, "g")
    with pytest.raises(ServiceError) as gone:
        await asyncio.wait_for(waiting, timeout=5)
    assert gone.value.code is ErrorCode.NOT_FOUND


async def test_deleting_stream_fails_blocked_group_reader_promptly(backend: Backend) -> None:
    s = backend.key()
    await backend.stream.create_group(s, "g")
    waiting = asyncio.create_task(backend.stream.read_group(s, "g", "c", block_ms=30_000))
    done, _ = await asyncio.wait({waiting}, timeout=0.1)
    assert not done
    await backend.stream.delete_stream(s)
    with pytest.raises(ServiceError) as gone:
        await asyncio.wait_for(waiting, timeout=5)
    assert gone.value.code is ErrorCode.NOT_FOUND


async def test_group_operations_on_missing_group_raise_not_found(backend: Backend) -> None:
    s = backend.key()
    await backend.stream.append(s, {"n": "0"})
    for attempt in (
        backend.stream.read_group(s, "nope", "c", block_ms=None),
        backend.stream.pending(s, "nope"),
        backend.stream.claim_idle(s, "nope", "c", min_idle_ms=0),
    ):
        with pytest.raises(ServiceError) as missing:
            await attempt
        assert missing.value.code is ErrorCode.NOT_FOUND
    assert await backend.stream.ack(s, "nope", ["1-0"]) == 0


async def test_two_consumers_share_entries_without_duplicates(backend: Backend) -> None:
    s = backend.key()
    entries = await append_n(backend, s, 30)
    await backend.stream.create_group(s, "g", start="0")
    seen: dict[str, list[str]] = {"a": [], "b": []}
    while True:
        a = await backend.stream.read_group(s, "g", "a", count=4, block_ms=None)
        b = await backend.stream.read_group(s, "g", "b", count=3, block_ms=None)
        if not a and not b:
            break
        seen["a"] += ids_of(a)
        seen["b"] += ids_of(b)
    assert seen["a"]
    assert seen["b"]
    assert not set(seen["a"]) & set(seen["b"])
    assert sorted(seen["a"] + seen["b"], key=entry_id_to_sequence) == [e.id for e in entries]


async def test_concurrent_blocking_consumers_receive_each_entry_once(backend: Backend) -> None:
    s = backend.key()
    await backend.stream.create_group(s, "g")
    total = 40
    received: list[str] = []

    async def consume(name: str) -> None:
        while len(received) < total:
            got = await backend.stream.read_group(s, "g", name, count=3, block_ms=200)
            received.extend(ids_of(got))

    consumers = [asyncio.create_task(consume(f"c{i}")) for i in range(3)]
    appended = []
    for i in range(total):
        appended.append(await backend.stream.append(s, {"n": str(i)}))
    await asyncio.wait_for(asyncio.gather(*consumers), timeout=DEADLINE_S)
    assert sorted(received, key=entry_id_to_sequence) == [e.id for e in appended]


async def test_read_group_wakes_promptly_when_entry_is_appended(backend: Backend) -> None:
    s = backend.key()
    await backend.stream.create_group(s, "g")
    waiting = asyncio.create_task(backend.stream.read_group(s, "g", "c", block_ms=30_000))
    done, _ = await asyncio.wait({waiting}, timeout=0.1)
    assert not done
    entry = await backend.stream.append(s, {"n": "0"})
    assert await asyncio.wait_for(waiting, timeout=5) == [GroupEntry(entry, 1)]


async def test_read_group_returns_empty_list_on_timeout(backend: Backend) -> None:
    s = backend.key()
    await backend.stream.create_group(s, "g")
    assert await backend.stream.read_group(s, "g", "c", block_ms=50) == []


async def test_ack_removes_entries_from_pending_and_counts_only_pending_ones(backend: Backend) -> None:
    s = backend.key()
    await append_n(backend, s, 3)
    await backend.stream.create_group(s, "g", start="0")
    delivered = ids_of(await backend.stream.read_group(s, "g", "c", block_ms=None))
    assert await backend.stream.ack(s, "g", delivered[:2]) == 2
    assert await backend.stream.ack(s, "g", delivered[:2]) == 0
    assert await backend.stream.ack(s, "g", []) == 0
    assert [p.id for p in await backend.stream.pending(s, "g")] == delivered[2:]


async def test_pending_shows_consumer_and_delivery_count(backend: Backend) -> None:
    s = backend.key()
    entries = await append_n(backend, s, 5)
    await backend.stream.create_group(s, "g", start="0")
    await backend.stream.read_group(s, "g", "a", count=2, block_ms=None)
    await backend.stream.read_group(s, "g", "b", count=3, block_ms=None)
    pending = await backend.stream.pending(s, "g")
    assert [(p.id, p.consumer, p.deliveries) for p in pending] == [
        (e.id, "a" if i < 2 else "b", 1) for i, e in enumerate(entries)
    ]
    assert all(p.idle_ms >= 0 for p in pending)
    assert [p.id for p in await backend.stream.pending(s, "g", consumer="b")] == [e.id for e in entries[2:]]
    assert [p.id for p in await backend.stream.pending(s, "g", count=1)] == [entries[0].id]


async def claim_when_idle(
    b: Backend,
    stream: str,
    consumer: str,
    *,
    min_idle_ms: int,
    expected: int,
    count: int = 100,
    start_id: str = "0-0",
) -> list[GroupEntry]:
    """Let pending entries age past `min_idle_ms`, then claim; retried because on Redis idle time is
    wall-clock time measured by the server."""
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while True:
        await b.age(min_idle_ms)
        got = await b.stream.claim_idle(
            stream, "g", consumer, min_idle_ms=min_idle_ms, count=count, start_id=start_id
        )
        if len(got) >= expected or asyncio.get_running_loop().time() > deadline:
            return got


async def test_claim_idle_moves_idle_entries_and_counts_another_delivery(backend: Backend) -> None:
    s = backend.key()
    entries = await append_n(backend, s, 3)
    await backend.stream.create_group(s, "g", start="0")
    await backend.stream.read_group(s, "g", "dead", block_ms=None)
    claimed = await claim_when_idle(backend, s, "alive", min_idle_ms=20, expected=3)
    assert claimed == [GroupEntry(e, 2) for e in entries]
    pending = await backend.stream.pending(s, "g")
    assert [(p.consumer, p.deliveries) for p in pending] == [("alive", 2)] * 3
    again = await claim_when_idle(backend, s, "third", min_idle_ms=20, expected=3)
    assert [g.deliveries for g in again] == [3, 3, 3]


async def test_claim_idle_leaves_recently_delivered_entries(backend: Backend) -> None:
    s = backend.key()
    await append_n(backend, s, 2)
    await backend.stream.create_group(s, "g", start="0")
    await backend.stream.read_group(s, "g", "busy", block_ms=None)
    assert await backend.stream.claim_idle(s, "g", "thief", min_idle_ms=600_000) == []
    assert {p.consumer for p in await backend.stream.pending(s, "g")} == {"busy"}


async def test_claim_idle_respects_count_and_start_id(backend: Backend) -> None:
    s = backend.key()
    entries = await append_n(backend, s, 6)
    await backend.stream.create_group(s, "g", start="0")
    await backend.stream.read_group(s, "g", "dead", block_ms=None)
    first = await claim_when_idle(backend, s, "x", min_idle_ms=20, expected=2, count=2)
    assert ids_of(first) == [e.id for e in entries[:2]]
    rest = await claim_when_idle(backend, s, "y", min_idle_ms=20, expected=2, start_id=entries[4].id)
    assert ids_of(rest) == [e.id for e in entries[4:]]


async def test_claim_idle_drops_trimmed_entries_from_pending(backend: Backend) -> None:
    s = backend.key()
    await append_n(backend, s, 3)
    await backend.stream.create_group(s, "g", start="0")
    delivered = ids_of(await backend.stream.read_group(s, "g", "dead", block_ms=None))
    await backend.stream.trim(s, maxlen=1)
    claimed = await claim_when_idle(backend, s, "alive", min_idle_ms=20, expected=1)
    assert ids_of(claimed) == delivered[2:]
    assert [p.id for p in await backend.stream.pending(s, "g")] == delivered[2:]


# -- maintenance ---------------------------------------------------------------------------------


async def test_trim_to_maxlen_is_exact_and_returns_removed_count(backend: Backend) -> None:
    s = backend.key()
    entries = await append_n(backend, s, 250)
    assert await backend.stream.trim(s, maxlen=7) == 243
    assert await backend.stream.read(s, count=1000) == entries[-7:]
    assert await backend.stream.trim(s, maxlen=7) == 0
    assert await backend.stream.trim(backend.key("missing"), maxlen=0) == 0


async def test_trim_to_min_id_removes_only_older_entries(backend: Backend) -> None:
    s = backend.key()
    entries = await append_n(backend, s, 5)
    assert await backend.stream.trim(s, min_id=entries[2].id) == 2
    assert await backend.stream.read(s) == entries[2:]
    assert await backend.stream.trim(s, min_id=entries[4].sequence) == 2
    assert await backend.stream.read(s) == entries[4:]


async def test_trim_needs_exactly_one_bound(backend: Backend) -> None:
    s = backend.key()
    with pytest.raises(ServiceError) as neither:
        await backend.stream.trim(s)
    assert neither.value.code is ErrorCode.INVALID_ARGUMENT
    with pytest.raises(ServiceError) as both:
        await backend.stream.trim(s, maxlen=1, min_id="0-1")
    assert both.value.code is ErrorCode.INVALID_ARGUMENT


async def test_delete_stream_forgets_entries_and_groups(backend: Backend) -> None:
    s = backend.key()
    await append_n(backend, s, 3)
    await backend.stream.create_group(s, "g")
    await backend.stream.delete_stream(s)
    assert await backend.stream.length(s) == 0
    assert await backend.stream.create_group(s, "g") is True
    await backend.stream.delete_stream(s)  # deleting twice is fine


async def test_ping_succeeds_on_a_working_backend(backend: Backend) -> None:
    await backend.stream.ping()


# -- factory and backend specifics ---------------------------------------------------------------


async def test_open_stream_picks_backend_by_scheme() -> None:
    memory = open_stream("memory://")
    assert isinstance(memory, MemoryStream)
    await memory.close()
    redis = open_stream(REDIS_URL)
    assert isinstance(redis, RedisStream)
    await redis.close()


@pytest.mark.parametrize("url", ["kafka://localhost:9092", "not a url", "redis+protocol3://x"])
def test_open_stream_rejects_unknown_scheme(url: str) -> None:
    with pytest.raises(ServiceError) as bad:
        open_stream(url)
    assert bad.value.code is ErrorCode.INVALID_ARGUMENT
    assert bad.value.message.startswith("stream_url:")


@pytest.mark.redis
def test_open_stream_rejects_resp3_redis_url() -> None:
    with pytest.raises(ServiceError) as bad:
        open_stream(f"{REDIS_URL}?protocol=3")
    assert bad.value.code is ErrorCode.INVALID_ARGUMENT


@pytest.mark.redis
async def test_ping_of_unreachable_redis_raises_unavailable() -> None:
    stream = open_stream("redis://127.0.0.1:1/0?socket_connect_timeout=2")
    try:
        with pytest.raises(ServiceError) as down:
            await stream.ping()
        assert down.value.code is ErrorCode.UNAVAILABLE
    finally:
        await stream.close()


async def test_memory_pending_idle_time_follows_injected_monotonic_clock() -> None:
    monotonic = FakeClock(50.0)
    memory = MemoryStream(monotonic=monotonic)
    await memory.create_group("s", "g")
    await memory.append("s", {"n": "0"})
    await memory.read_group("s", "g", "c", block_ms=None)
    monotonic.advance(1.5)
    [pending] = await memory.pending("s", "g")
    assert pending.idle_ms == 1500
    assert await memory.claim_idle("s", "g", "d", min_idle_ms=1501) == []
    assert len(await memory.claim_idle("s", "g", "d", min_idle_ms=1500)) == 1
