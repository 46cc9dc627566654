"""The SDK's public face: a change to what `import ironflow` offers must be deliberate."""

from __future__ import annotations

import ironflow

EXPECTED = {
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
}


def test_the_exported_names_are_exactly_the_public_api() -> None:
    assert set(ironflow.__all__) == EXPECTED
    for name in EXPECTED:
        assert getattr(ironflow, name) is not None, name


def test_step_errors_form_one_hierarchy_users_can_catch() -> None:
    assert issubclass(ironflow.InvokeError, ironflow.StepError)
    assert issubclass(ironflow.StepArgumentError, ironflow.NonRetryableError)
    assert issubclass(ironflow.StepArgumentError, ValueError)
    assert issubclass(ironflow.RunFailedError, ironflow.IronflowError)
    assert issubclass(ironflow.RunCancelledError, ironflow.IronflowError)
