"""The firehose: one stream carrying every event, topic message and engine event, in order.

One stream (rather than one per subject) gives every message a single sequence, so a subscriber with
wildcard patterns resumes from one number, and replay is one range read. Subjects travel as a field;
subscribers match patterns against it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


def firehose_key(prefix: str = "ironflow") -> str:
    """The stream key; a prefix lets several deployments (or test runs) share one Redis."""
    return f"{prefix}:firehose"


FIREHOSE_STREAM = firehose_key()


# Messages kept on the stream for replay and resumption; Postgres/SQLite keep events forever
# regardless. The in-process stream keeps its messages in the server's own memory (about 1 KiB each,
# measured, so about 50 MiB), so it keeps fewer: its memory must stay flat under steady load.
DEFAULT_FIREHOSE_MAXLEN = 1_000_000
DEFAULT_MEMORY_FIREHOSE_MAXLEN = 50_000


@dataclass(frozen=True)
class FirehoseMessage:
    subject: str
    event_id: str
    timestamp: datetime
    data: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)

    def encode(self) -> dict[str, str]:
        return {
            "subject": self.subject,
            "event_id": self.event_id,
            "timestamp": self.timestamp.isoformat(),
            "data": json.dumps(self.data, separators=(",", ":")),
            "metadata": json.dumps(self.metadata, separators=(",", ":")),
        }

    @classmethod
    def decode(cls, fields: Mapping[str, str]) -> FirehoseMessage:
        return cls(
            subject=fields["subject"],
            event_id=fields["event_id"],
            timestamp=datetime.fromisoformat(fields["timestamp"]),
            data=json.loads(fields["data"]),
            metadata=json.loads(fields.get("metadata", "{}")),
        )
