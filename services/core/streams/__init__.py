"""Append-only streams with blocking reads and consumer groups, in memory or on Redis."""

from ._base import GroupEntry, PendingEntry, Stream, StreamEntry
from ._factory import open_stream
from ._ids import entry_id_to_sequence, sequence_to_entry_id
from ._memory import MemoryStream
from ._redis import RedisStream

__all__ = [
    "GroupEntry",
    "MemoryStream",
    "PendingEntry",
    "RedisStream",
    "Stream",
    "StreamEntry",
    "entry_id_to_sequence",
    "open_stream",
    "sequence_to_entry_id",
]
