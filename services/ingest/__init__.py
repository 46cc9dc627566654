"""The ingest service: EventService (Emit, EmitSync, Publish, GetEvent, ListEvents) and REST events."""

from ._ingest import Accepted, Ingest, IngestSettings, Trigger
from ._remote import RemoteScheduler
from ._rest import EventsRestApp, event_to_json
from ._rpc import EventServiceRpc, event_to_proto
from ._store import EventStore, StoredEvent

__all__ = [
    "Accepted",
    "EventServiceRpc",
    "EventStore",
    "EventsRestApp",
    "Ingest",
    "IngestSettings",
    "RemoteScheduler",
    "StoredEvent",
    "Trigger",
    "event_to_json",
    "event_to_proto",
]
