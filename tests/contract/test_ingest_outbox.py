"""The outbox: an event stored but never streamed (crash, stream down) reaches the stream later."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from ironflow.services.core.firehose import FIREHOSE_STREAM, FirehoseMessage
from ironflow.services.core.storage import Database
from ironflow.services.core.streams import MemoryStream, StreamEntry
from ironflow.services.ingest import EventStore, Ingest, IngestSettings, StoredEvent


class BrokenStream(MemoryStream):
    """A stream whose appends fail, as Redis does while it is down."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def append(
        self, stream: str, fields: Mapping[str, str], *, maxlen: int | None = None
    ) -> StreamEntry:
        if self.down:
            raise ConnectionError("stream is down")
        return await super().append(stream, fields, maxlen=maxlen)


async def test_event_left_off_the_stream_by_a_crash_is_relayed_once(database: Database) -> None:
    """The process stored the event, then died before appending it: the relay appends it, once."""
    long_ago = datetime.now(UTC) - timedelta(minutes=5)
    await EventStore(database).insert(
        StoredEvent(
            id="evt_crashed",
            namespace="events",
            name="order.placed",
            data={"n": 1},
            metadata={},
            idempotency_key=None,
            created_at=long_ago,
            position=0,
            stream_sequence=None,
            run_ids=[],
        )
    )
    stream = MemoryStream()
    ingest = Ingest(db=database, stream=stream)

    assert await ingest.relay_outbox() == 1
    assert await ingest.relay_outbox() == 0  # recorded as streamed: never appended twice

    entries = await stream.read(FIREHOSE_STREAM)
    assert [FirehoseMessage.decode(e.fields).event_id for e in entries] == ["evt_crashed"]
    assert (await ingest.get("evt_crashed")).stream_sequence == entries[0].sequence


async def test_emit_while_the_stream_is_down_is_stored_and_streamed_after_it_recovers(
    database: Database,
) -> None:
    stream = BrokenStream()
    ingest = Ingest(db=database, stream=stream, settings=IngestSettings(outbox_grace=timedelta(0)))

    accepted, _ = await ingest.emit("order.placed", {"n": 1})
    assert accepted.sequence == 0  # durable, but not on the stream yet
    assert (await ingest.get(accepted.event.id)).data == {"n": 1}

    stream.down = False
    assert await ingest.relay_outbox() == 1
    [entry] = await stream.read(FIREHOSE_STREAM)
    assert FirehoseMessage.decode(entry.fields).subject == "events:order.placed"
    assert (await ingest.get(accepted.event.id)).stream_sequence == entry.sequence


async def test_stream_sequences_are_recorded_in_the_background_after_emit(database: Database) -> None:
    ingest = Ingest(db=database, stream=MemoryStream())
    await ingest.start()
    try:
        accepted = [(await ingest.emit("order.placed", {"i": i}))[0] for i in range(3)]
    finally:
        await ingest.stop()  # flushes what is still pending
    for item in accepted:
        assert (await ingest.get(item.event.id)).stream_sequence == item.sequence
    assert [a.sequence for a in accepted] == [1, 2, 3]
