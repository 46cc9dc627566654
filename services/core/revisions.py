"""A change counter on the stream: "the registry's functions changed", readable in one round trip.

The registry appends an entry after every committed change, before it answers, and readers compare
the newest entry's id with the one they last saw. A scheduler in another process thereby sees a
registration that finished before an event was emitted, without waiting for a notice to arrive.
If the stream store loses the entry, readers see "no revision", which differs from what they saw
last, and refresh once.
"""

from __future__ import annotations

from .streams import Stream

# Entries kept: only the newest matters.
REVISION_MAXLEN = 10


def functions_revision_key(prefix: str) -> str:
    return f"{prefix}:functions-revision"


async def bump_revision(stream: Stream, key: str) -> None:
    await stream.append(key, {"changed": "1"}, maxlen=REVISION_MAXLEN)


async def latest_revision(stream: Stream, key: str) -> str | None:
    newest = await stream.read_last(key, 1)
    return newest[-1].id if newest else None
