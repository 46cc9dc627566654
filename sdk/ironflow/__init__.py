"""Ironflow: event-driven durable workflows for Python.

client = ironflow.Client()                       # or ironflow.SyncClient() in scripts
r = await client.emit("order.placed", {"orderId": "ord_123"})
r.event_id, r.run_ids
"""

from ._client import Client
from ._errors import IronflowError
from ._models import EmitResult, Event, EventPage, FunctionInfo, PublishResult
from ._sync import SyncClient

__all__ = [
    "Client",
    "EmitResult",
    "Event",
    "EventPage",
    "FunctionInfo",
    "IronflowError",
    "PublishResult",
    "SyncClient",
]
