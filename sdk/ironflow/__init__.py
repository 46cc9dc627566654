"""Ironflow: event-driven durable workflows for Python.

client = ironflow.Client()                       # or ironflow.SyncClient() in scripts
r = await client.emit("order.placed", {"orderId": "ord_123"})
r.event_id, r.run_ids

@ironflow.function(id="order-handler", triggers=[ironflow.on_event("order.placed")])
async def order_handler(ctx: ironflow.Context):
    return await ctx.step.run("charge", charge_card, ctx.event.data["orderId"])

await ironflow.Worker(functions=[order_handler]).run()      # pull mode (or worker.start() in an app)
app = ironflow.serve(functions=[push_handler], signing_key=...)   # push mode: an ASGI app
async with ironflow.subscribe("system.run.>", replay=10) as sub:   # real-time messages
    async for message in sub: ...
"""

from ._client import Client
from ._context import Context
from ._errors import InvokeError, IronflowError, NonRetryableError, RetryAfterError, StepError
from ._function import (
    Batching,
    Concurrency,
    CronTrigger,
    Debounce,
    EventTrigger,
    Function,
    Idempotency,
    RateLimit,
    Retry,
    Throttle,
    function,
    on_cron,
    on_event,
)
from ._models import (
    ConsumerGroup,
    EmitResult,
    Event,
    EventPage,
    FunctionInfo,
    PublishResult,
    Run,
    RunError,
    RunPage,
    RunResult,
    Step,
    TopicInfo,
    TopicPage,
)
from ._run_errors import RunCancelledError, RunFailedError
from ._serve import PushApp, serve
from ._steps import InvokeHandle, StepArgumentError, Steps
from ._subscribe import Message, Subscription, subscribe
from ._sync import SyncClient
from ._worker import Worker

__all__ = [
    "Batching",
    "Client",
    "Concurrency",
    "ConsumerGroup",
    "Context",
    "CronTrigger",
    "Debounce",
    "EmitResult",
    "Event",
    "EventPage",
    "EventTrigger",
    "Function",
    "FunctionInfo",
    "Idempotency",
    "InvokeError",
    "InvokeHandle",
    "IronflowError",
    "Message",
    "NonRetryableError",
    "PublishResult",
    "PushApp",
    "RateLimit",
    "Retry",
    "RetryAfterError",
    "Run",
    "RunCancelledError",
    "RunError",
    "RunFailedError",
    "RunPage",
    "RunResult",
    "Step",
    "StepArgumentError",
    "StepError",
    "Steps",
    "Subscription",
    "SyncClient",
    "Throttle",
    "TopicInfo",
    "TopicPage",
    "Worker",
    "function",
    "on_cron",
    "on_event",
    "serve",
    "subscribe",
]
