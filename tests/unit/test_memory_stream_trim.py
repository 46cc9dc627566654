"""A trimmed in-process stream lets go of what it trimmed: its memory follows `maxlen`, not the
number of entries ever appended (the embedded server's firehose depends on it)."""

from __future__ import annotations

from ironflow.services.core.streams import MemoryStream


async def test_trimmed_entries_are_released_within_an_eighth_of_maxlen() -> None:
    stream = MemoryStream()
    maxlen = 20_000
    held = []
    for _ in range(20):
        await stream.append_many("s", [{"n": "x"}] * 5_000, maxlen=maxlen)
        log = stream._logs["s"]
        held.append(len(log.entries))
        assert log.size() <= maxlen
    # 100,000 appended; the list holding them never keeps more than maxlen plus an eighth (and the
    # batch that has just been trimmed), so the trimmed entries can be freed.
    assert max(held) <= maxlen + maxlen // 8 + 5_000
    assert [entry.sequence for entry in await stream.read_last("s", 2)] == [99_999, 100_000]
