"""The stream operations subscribers build on, held to one contract on the in-memory store and real Redis.

Reverse reads scan a stream backwards for replay; `set_idle` marks work in progress, delays a retry or
releases a departed consumer's entries without counting a delivery; `pending_count` and
`delete_consumer` keep the group's bookkeeping honest. Waiting is bounded by a deadline and polled,
never a bare sleep hoping a result has arrived.
"""

from __future__ import annotations

import asyncio

import pytest

from ironflow.services.core.errors import ErrorCode, ServiceError
from ironflow.services.core.streams import GroupEntry, MemoryStream, PendingEntry
from tests.contract.conftest import DEADLINE_S, Backend, FakeClock, append_n, ids_of

# An ack wait long enough that nothing becomes idle by itself while a test runs.
ACK_WAIT_MS = 60_000


def owners(pending: list[PendingEntry]) -> list[tuple[str, str, int]]:
    return [(p.id, p.consumer, p.deliveries) for p in pending]


async def delivered_group(b: Backend, stream: str, n: int, consumer: str = "a") -> list[str]:
    """`n` entries in `stream`, all delivered to `consumer` of group "g"; returns their ids."""
    await append_n(b, stream, n)
    await b.stream.create_group(stream, "g", start="0")
    got = await b.stream.read_group(stream, "g", consumer, count=n, block_ms=None)
    assert len(got) == n
    return ids_of(got)


async def claim_after(
    b: Backend, stream: str, consumer: str, *, wait_ms: int, min_idle_ms: int, expected: int
) -> list[GroupEntry]:
    """Let `wait_ms` pass, then claim; polled because on Redis idle time is the server's wall clock."""
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    await b.age(wait_ms)
    while True:
        got = await b.stream.claim_idle(stream, "g", consumer, min_idle_ms=min_idle_ms)
        if len(got) >= expected or asyncio.get_running_loop().time() > deadline:
            return got
        await b.age(10)


async def raises(code: ErrorCode, attempt: object) -> ServiceError:
    assert asyncio.iscoroutine(attempt)
    with pytest.raises(ServiceError) as caught:
        await attempt
    assert caught.value.code is code
    return caught.value


# -- reverse reads -------------------------------------------------------------------------------


async def test_read_reverse_returns_newest_first_from_the_end(backend: Backend) -> None:
    s = backend.key()
    entries = await append_n(backend, s, 5)
    assert await backend.stream.read_reverse(s) == entries[::-1]
    assert await backend.stream.read_reverse(s, before=None, count=2) == [entries[4], entries[3]]


async def test_read_reverse_before_is_exclusive_and_respects_count(backend: Backend) -> None:
    s = backend.key()
    entries = await append_n(backend, s, 6)
    assert await backend.stream.read_reverse(s, before=entries[3].id) == [entries[2], entries[1], entries[0]]
    assert await backend.stream.read_reverse(s, before=entries[3].id, count=2) == [entries[2], entries[1]]
    assert await backend.stream.read_reverse(s, before=entries[3].sequence, count=2) == [
        entries[2],
        entries[1],
    ]
    assert await backend.stream.read_reverse(s, before=entries[1].id) == [entries[0]]
    assert await backend.stream.read_reverse(s, before=entries[0].id) == []


async def test_read_reverse_before_the_smallest_id_is_empty(backend: Backend) -> None:
    s = backend.key()
    await append_n(backend, s, 3)
    assert await backend.stream.read_reverse(s, before="0-0") == []
    assert await backend.stream.read_reverse(s, before="0") == []
    assert await backend.stream.read_reverse(s, before=0) == []


async def test_read_reverse_before_a_position_past_the_end_starts_from_the_newest(backend: Backend) -> None:
    s = backend.key()
    entries = await append_n(backend, s, 3)
    assert await backend.stream.read_reverse(s, before=entries[-1].sequence + 10) == entries[::-1]
    # Every id is 0-<n>, so one with a millisecond part lies beyond all of them.
    assert await backend.stream.read_reverse(s, before="5-0", count=1) == [entries[-1]]


async def test_read_reverse_pages_backwards_through_the_whole_stream(backend: Backend) -> None:
    s = backend.key()
    entries = await append_n(backend, s, 7)
    pages: list[list[str]] = []
    before: str | None = None
    while page := await backend.stream.read_reverse(s, before=before, count=3):
        pages.append([e.id for e in page])
        before = page[-1].id
    assert pages == [["0-7", "0-6", "0-5"], ["0-4", "0-3", "0-2"], ["0-1"]]
    assert [e.id for e in entries] == [f"0-{i}" for i in range(1, 8)]


async def test_read_reverse_of_missing_or_empty_stream_is_empty(backend: Backend) -> None:
    missing = backend.key("missing")
    assert await backend.stream.read_reverse(missing) == []
    assert await backend.stream.read_reverse(missing, before="0-5") == []
    empty = backend.key("empty")
    await backend.stream.create_group(empty, "g")
    assert await backend.stream.read_reverse(empty) == []
    emptied = backend.key("emptied")
    await append_n(backend, emptied, 2)
    await backend.stream.trim(emptied, maxlen=0)
    assert await backend.stream.read_reverse(emptied) == []


async def test_read_reverse_sees_only_entries_left_after_trimming(backend: Backend) -> None:
    s = backend.key()
    entries = await append_n(backend, s, 6)
    assert await backend.stream.trim(s, maxlen=3) == 3
    assert await backend.stream.read_reverse(s) == [entries[5], entries[4], entries[3]]
    assert await backend.stream.read_reverse(s, before=entries[4].id) == [entries[3]]
    assert await backend.stream.read_reverse(s, before=entries[3].id) == []
    assert await backend.stream.read_reverse(s, before=entries[1].id) == []


async def test_read_reverse_rejects_malformed_position_and_zero_count(backend: Backend) -> None:
    s = backend.key()
    bad_before = await raises(ErrorCode.INVALID_ARGUMENT, backend.stream.read_reverse(s, before="later"))
    assert bad_before.message.startswith("before:")
    bad_count = await raises(ErrorCode.INVALID_ARGUMENT, backend.stream.read_reverse(s, count=0))
    assert bad_count.message.startswith("count:")


# -- set_idle ------------------------------------------------------------------------------------


async def test_set_idle_moves_ownership_without_counting_a_delivery(backend: Backend) -> None:
    s = backend.key()
    ids = await delivered_group(backend, s, 3)
    assert await backend.stream.set_idle(s, "g", "b", [ids[0], ids[2]], idle_ms=0) == [ids[0], ids[2]]
    assert owners(await backend.stream.pending(s, "g")) == [
        (ids[0], "b", 1),
        (ids[1], "a", 1),
        (ids[2], "b", 1),
    ]
    assert [p.id for p in await backend.stream.pending(s, "g", consumer="b")] == [ids[0], ids[2]]


async def test_set_idle_keeps_the_delivery_count_of_claimed_entries(backend: Backend) -> None:
    s = backend.key()
    ids = await delivered_group(backend, s, 2)
    assert await backend.stream.set_idle(s, "g", "a", ids, idle_ms=ACK_WAIT_MS) == ids
    claimed = await backend.stream.claim_idle(s, "g", "c", min_idle_ms=ACK_WAIT_MS)
    assert [(g.entry.id, g.deliveries) for g in claimed] == [(ids[0], 2), (ids[1], 2)]
    assert await backend.stream.set_idle(s, "g", "d", ids, idle_ms=0) == ids
    assert await backend.stream.set_idle(s, "g", "e", ids, idle_ms=ACK_WAIT_MS) == ids
    assert owners(await backend.stream.pending(s, "g")) == [(ids[0], "e", 2), (ids[1], "e", 2)]
    again = await backend.stream.claim_idle(s, "g", "f", min_idle_ms=ACK_WAIT_MS)
    assert [g.deliveries for g in again] == [3, 3]


async def test_set_idle_sets_the_idle_time_pending_reports(backend: Backend) -> None:
    s = backend.key()
    ids = await delivered_group(backend, s, 2)
    await backend.stream.set_idle(s, "g", "a", [ids[0]], idle_ms=5_000)
    first, second = await backend.stream.pending(s, "g")
    # On Redis the server's clock keeps running between the two calls; well under a second passes.
    assert 5_000 <= first.idle_ms < 6_000
    assert 0 <= second.idle_ms < 1_000
    await backend.stream.set_idle(s, "g", "a", [ids[0]], idle_ms=0)
    [first, _] = await backend.stream.pending(s, "g")
    assert 0 <= first.idle_ms < 1_000


async def test_set_idle_to_min_idle_makes_entry_claimable_at_once(backend: Backend) -> None:
    s = backend.key()
    ids = await delivered_group(backend, s, 2)
    await backend.stream.set_idle(s, "g", "a", [ids[1]], idle_ms=ACK_WAIT_MS)
    claimed = await backend.stream.claim_idle(s, "g", "b", min_idle_ms=ACK_WAIT_MS)
    assert [(g.entry.id, g.deliveries) for g in claimed] == [(ids[1], 2)]
    assert owners(await backend.stream.pending(s, "g")) == [(ids[0], "a", 1), (ids[1], "b", 2)]


async def test_set_idle_delays_redelivery_until_idle_reaches_min_idle(backend: Backend) -> None:
    s = backend.key()
    [entry_id] = await delivered_group(backend, s, 1)
    delay_ms = 300
    # A nak with a delay: the normal ack-wait sweep picks the entry up once `delay_ms` has passed.
    assert await backend.stream.set_idle(s, "g", "a", [entry_id], idle_ms=ACK_WAIT_MS - delay_ms) == [
        entry_id
    ]
    assert await backend.stream.claim_idle(s, "g", "b", min_idle_ms=ACK_WAIT_MS) == []
    assert owners(await backend.stream.pending(s, "g")) == [(entry_id, "a", 1)]
    claimed = await claim_after(backend, s, "b", wait_ms=delay_ms, min_idle_ms=ACK_WAIT_MS, expected=1)
    assert [(g.entry.id, g.deliveries) for g in claimed] == [(entry_id, 2)]


async def test_set_idle_zero_keeps_an_idle_entry_from_being_claimed(backend: Backend) -> None:
    s = backend.key()
    ids = await delivered_group(backend, s, 2)
    await backend.stream.set_idle(s, "g", "a", ids, idle_ms=ACK_WAIT_MS)
    # Still being worked on: touching it resets the idle time, so the sweep leaves it alone.
    assert await backend.stream.set_idle(s, "g", "a", [ids[0]], idle_ms=0) == [ids[0]]
    claimed = await backend.stream.claim_idle(s, "g", "b", min_idle_ms=ACK_WAIT_MS)
    assert ids_of(claimed) == [ids[1]]
    assert owners(await backend.stream.pending(s, "g")) == [(ids[0], "a", 1), (ids[1], "b", 2)]


async def test_set_idle_with_huge_idle_releases_entries_at_once(backend: Backend) -> None:
    s = backend.key()
    ids = await delivered_group(backend, s, 2, consumer="departed")
    # Beyond 10**12 ms Redis would read the idle time as 0; both backends cap it instead.
    assert await backend.stream.set_idle(s, "g", "departed", ids, idle_ms=1 << 62) == ids
    pending = await backend.stream.pending(s, "g")
    assert all(10**12 <= p.idle_ms < 10**12 + 1_000 for p in pending)
    claimed = await backend.stream.claim_idle(s, "g", "heir", min_idle_ms=10**12)
    assert [(g.entry.id, g.deliveries) for g in claimed] == [(ids[0], 2), (ids[1], 2)]


async def test_set_idle_skips_ids_that_are_not_pending(backend: Backend) -> None:
    s = backend.key()
    ids = await delivered_group(backend, s, 3)
    never_delivered = await backend.stream.append(s, {"late": "1"})
    assert await backend.stream.ack(s, "g", [ids[1]]) == 1
    moved = await backend.stream.set_idle(
        s, "g", "b", [ids[2], ids[1], never_delivered.id, "0-999", "7-1", ids[0]], idle_ms=0
    )
    assert moved == [ids[2], ids[0]]
    assert owners(await backend.stream.pending(s, "g")) == [(ids[0], "b", 1), (ids[2], "b", 1)]
    assert await backend.stream.set_idle(s, "g", "b", [], idle_ms=0) == []
    # The entry that was never delivered still goes to the next reader, as a first delivery.
    assert ids_of(await backend.stream.read_group(s, "g", "c", block_ms=None)) == [never_delivered.id]


async def test_set_idle_drops_trimmed_entries_from_pending(backend: Backend) -> None:
    s = backend.key()
    ids = await delivered_group(backend, s, 3)
    assert await backend.stream.trim(s, maxlen=1) == 2
    assert await backend.stream.set_idle(s, "g", "b", [ids[0], ids[2]], idle_ms=0) == [ids[2]]
    # Only the trimmed id that was named is dropped; the other stays until something touches it.
    assert owners(await backend.stream.pending(s, "g")) == [(ids[1], "a", 1), (ids[2], "b", 1)]
    assert await backend.stream.pending_count(s, "g") == 2


async def test_set_idle_rejects_negative_idle_and_malformed_ids(backend: Backend) -> None:
    s = backend.key()
    ids = await delivered_group(backend, s, 1)
    negative = await raises(ErrorCode.INVALID_ARGUMENT, backend.stream.set_idle(s, "g", "b", ids, idle_ms=-1))
    assert negative.message.startswith("idle_ms:")
    malformed = await raises(
        ErrorCode.INVALID_ARGUMENT, backend.stream.set_idle(s, "g", "b", ["soon"], idle_ms=0)
    )
    assert malformed.message.startswith("ids:")
    assert owners(await backend.stream.pending(s, "g")) == [(ids[0], "a", 1)]


# -- pending_count -------------------------------------------------------------------------------


async def test_pending_count_follows_reads_acks_and_claims(backend: Backend) -> None:
    s = backend.key()
    await append_n(backend, s, 5)
    await backend.stream.create_group(s, "g", start="0")
    assert await backend.stream.pending_count(s, "g") == 0
    got_a = ids_of(await backend.stream.read_group(s, "g", "a", count=2, block_ms=None))
    assert await backend.stream.pending_count(s, "g") == 2
    got_b = ids_of(await backend.stream.read_group(s, "g", "b", count=3, block_ms=None))
    assert await backend.stream.pending_count(s, "g") == 5
    assert await backend.stream.ack(s, "g", [got_a[0], got_b[2]]) == 2
    assert await backend.stream.pending_count(s, "g") == 3
    await backend.stream.set_idle(s, "g", "c", got_b[:2], idle_ms=ACK_WAIT_MS)
    assert len(await backend.stream.claim_idle(s, "g", "d", min_idle_ms=ACK_WAIT_MS)) == 2
    assert await backend.stream.pending_count(s, "g") == 3
    assert await backend.stream.ack(s, "g", [got_a[1], *got_b[:2]]) == 3
    assert await backend.stream.pending_count(s, "g") == 0


async def test_pending_count_counts_trimmed_entries_until_they_are_dropped(backend: Backend) -> None:
    s = backend.key()
    ids = await delivered_group(backend, s, 3)
    await backend.stream.trim(s, maxlen=1)
    assert await backend.stream.pending_count(s, "g") == 3
    assert await backend.stream.set_idle(s, "g", "a", ids, idle_ms=0) == [ids[2]]
    assert await backend.stream.pending_count(s, "g") == 1


async def test_pending_count_is_per_group(backend: Backend) -> None:
    s = backend.key()
    await append_n(backend, s, 4)
    await backend.stream.create_group(s, "g", start="0")
    await backend.stream.create_group(s, "h", start="0")
    await backend.stream.read_group(s, "g", "a", count=3, block_ms=None)
    await backend.stream.read_group(s, "h", "a", count=1, block_ms=None)
    assert await backend.stream.pending_count(s, "g") == 3
    assert await backend.stream.pending_count(s, "h") == 1


# -- delete_consumer -----------------------------------------------------------------------------


async def test_delete_consumer_drops_its_pending_entries_and_returns_how_many(backend: Backend) -> None:
    s = backend.key()
    await append_n(backend, s, 5)
    await backend.stream.create_group(s, "g", start="0")
    got_a = ids_of(await backend.stream.read_group(s, "g", "a", count=2, block_ms=None))
    got_b = ids_of(await backend.stream.read_group(s, "g", "b", count=3, block_ms=None))
    assert await backend.stream.delete_consumer(s, "g", "a") == 2
    assert owners(await backend.stream.pending(s, "g")) == [(i, "b", 1) for i in got_b]
    assert await backend.stream.pending_count(s, "g") == 3
    assert await backend.stream.delete_consumer(s, "g", "a") == 0
    # Dropped, not released: neither a new read nor a sweep hands a's entries out again.
    assert await backend.stream.read_group(s, "g", "c", block_ms=None) == []
    await backend.stream.set_idle(s, "g", "b", got_b, idle_ms=ACK_WAIT_MS)
    swept = await backend.stream.claim_idle(s, "g", "c", min_idle_ms=ACK_WAIT_MS)
    assert ids_of(swept) == got_b
    assert not set(ids_of(swept)) & set(got_a)


async def test_delete_consumer_that_owns_nothing_returns_zero(backend: Backend) -> None:
    s = backend.key()
    ids = await delivered_group(backend, s, 2)
    assert await backend.stream.delete_consumer(s, "g", "ghost") == 0
    later = await backend.stream.append(s, {"n": "later"})
    [done] = ids_of(await backend.stream.read_group(s, "g", "finished", block_ms=None))
    assert done == later.id
    assert await backend.stream.ack(s, "g", [done]) == 1
    assert await backend.stream.delete_consumer(s, "g", "finished") == 0
    assert owners(await backend.stream.pending(s, "g")) == [(ids[0], "a", 1), (ids[1], "a", 1)]


async def test_deleted_consumer_can_rejoin_and_read_new_entries(backend: Backend) -> None:
    s = backend.key()
    await delivered_group(backend, s, 1)
    assert await backend.stream.delete_consumer(s, "g", "a") == 1
    later = await backend.stream.append(s, {"n": "later"})
    assert await backend.stream.read_group(s, "g", "a", block_ms=None) == [GroupEntry(later, 1)]
    assert owners(await backend.stream.pending(s, "g")) == [(later.id, "a", 1)]


# -- missing groups ------------------------------------------------------------------------------


async def test_subscriber_operations_on_missing_group_raise_not_found(backend: Backend) -> None:
    with_stream = backend.key("with-stream")
    await backend.stream.append(with_stream, {"n": "0"})
    destroyed = backend.key("destroyed")
    await backend.stream.create_group(destroyed, "nope")
    await backend.stream.destroy_group(destroyed, "nope")
    for s in (backend.key("missing"), with_stream, destroyed):
        for attempt in (
            backend.stream.pending_count(s, "nope"),
            backend.stream.set_idle(s, "nope", "c", ["0-1"], idle_ms=0),
            backend.stream.delete_consumer(s, "nope", "c"),
        ):
            missing = await raises(ErrorCode.NOT_FOUND, attempt)
            assert "nope" in missing.message
        # An empty id list asks nothing of the group, so it is answered without looking.
        assert await backend.stream.set_idle(s, "nope", "c", [], idle_ms=0) == []


# -- memory backend specifics --------------------------------------------------------------------


async def test_memory_set_idle_is_exact_against_the_injected_clock() -> None:
    monotonic = FakeClock(1000.0)
    memory = MemoryStream(monotonic=monotonic)
    await memory.create_group("s", "g", start="0")
    entry = await memory.append("s", {"n": "0"})
    await memory.read_group("s", "g", "a", block_ms=None)
    monotonic.advance(7.0)
    # 20 ms is not representable in floats; the idle time must still come out as exactly 20.
    assert await memory.set_idle("s", "g", "a", [entry.id], idle_ms=20) == [entry.id]
    [pending] = await memory.pending("s", "g")
    assert pending.idle_ms == 20
    assert await memory.claim_idle("s", "g", "b", min_idle_ms=21) == []
    monotonic.advance(0.5)
    [pending] = await memory.pending("s", "g")
    assert pending.idle_ms == 520
    assert await memory.claim_idle("s", "g", "b", min_idle_ms=521) == []
    assert await memory.claim_idle("s", "g", "b", min_idle_ms=520) == [GroupEntry(entry, 2)]
    [pending] = await memory.pending("s", "g")
    assert (pending.consumer, pending.idle_ms, pending.deliveries) == ("b", 0, 2)
