"""`ironflow.Client`: the async client, speaking gRPC (grpcio) to the server or its front door."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Protocol, TypeVar
from urllib.parse import urlparse

import grpc
from google.protobuf import json_format

from ironflow.v1 import (
    common_pb2,
    events_pb2,
    events_pb2_grpc,
    functions_pb2,
    functions_pb2_grpc,
    runs_pb2,
    runs_pb2_grpc,
    subscriptions_pb2,
    subscriptions_pb2_grpc,
)

from ._convert import from_struct, from_timestamp, from_value, to_struct
from ._durations import Duration, to_duration_proto, to_seconds
from ._errors import IronflowError
from ._function import Function
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

DEFAULT_SERVER_URL = "http://localhost:9123"
DEFAULT_TIMEOUT_SECONDS = 30.0
# The longest the server waits for runs in one call (EmitSync, WaitForRuns); invoke waits in slices.
MAX_WAIT_SECONDS = 300.0
# Extra time the RPC deadline allows over a server-side wait, for the answer to arrive.
_WAIT_DEADLINE_MARGIN = 10.0

T = TypeVar("T")

_STATUS_NAMES = {
    functions_pb2.FUNCTION_STATUS_ACTIVE: "active",
    functions_pb2.FUNCTION_STATUS_PAUSED: "paused",
    functions_pb2.FUNCTION_STATUS_DELETED: "deleted",
}
_MODE_NAMES = {functions_pb2.FUNCTION_MODE_PULL: "pull", functions_pb2.FUNCTION_MODE_PUSH: "push"}
RUN_STATUSES: dict[str, runs_pb2.RunStatus.ValueType] = {
    "queued": runs_pb2.RUN_STATUS_QUEUED,
    "running": runs_pb2.RUN_STATUS_RUNNING,
    "sleeping": runs_pb2.RUN_STATUS_SLEEPING,
    "waiting": runs_pb2.RUN_STATUS_WAITING,
    "completed": runs_pb2.RUN_STATUS_COMPLETED,
    "failed": runs_pb2.RUN_STATUS_FAILED,
    "cancelled": runs_pb2.RUN_STATUS_CANCELLED,
    "paused": runs_pb2.RUN_STATUS_PAUSED,
}
_RUN_STATUS_NAMES = {value: name for name, value in RUN_STATUSES.items()}
_STEP_STATUS_NAMES = {
    runs_pb2.STEP_STATUS_RUNNING: "running",
    runs_pb2.STEP_STATUS_COMPLETED: "completed",
    runs_pb2.STEP_STATUS_FAILED: "failed",
    runs_pb2.STEP_STATUS_RETRYING: "retrying",
    runs_pb2.STEP_STATUS_SLEEPING: "sleeping",
    runs_pb2.STEP_STATUS_WAITING: "waiting",
    runs_pb2.STEP_STATUS_CANCELLED: "cancelled",
}


class ServesFunctions(Protocol):
    """Anything that carries push functions, such as the ASGI app `ironflow.serve(...)` returns.

    Duck-typed so the client need not import the serving code (or its web dependencies) to accept it.
    """

    @property
    def functions(self) -> Sequence[Function]: ...


def resolve_server_url(server_url: str | None) -> str:
    return server_url or os.environ.get("IRONFLOW_SERVER_URL") or DEFAULT_SERVER_URL


def _channel(server_url: str, *, options: Sequence[tuple[str, int]] = ()) -> grpc.aio.Channel:
    """A grpcio channel to `server_url`; `options` are added to the defaults."""
    parsed = urlparse(server_url if "://" in server_url else f"http://{server_url}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise IronflowError(
            "INVALID_ARGUMENT", f"server_url must look like http://host:port, got {server_url!r}"
        )
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    target = f"{parsed.hostname}:{port}"
    settings = [
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        *options,
    ]
    if parsed.scheme == "https":
        return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(), options=settings)
    return grpc.aio.insecure_channel(target, options=settings)


class Client:
    """Async client. Use as `async with ironflow.Client() as client:` or call `close()` when done."""

    def __init__(
        self,
        server_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.server_url = resolve_server_url(server_url)
        self._api_key = api_key or os.environ.get("IRONFLOW_API_KEY")
        self._timeout = timeout
        self._channel = _channel(self.server_url)
        self._events = events_pb2_grpc.EventServiceStub(self._channel)
        self._registry = functions_pb2_grpc.RegistryServiceStub(self._channel)
        self._scheduler = runs_pb2_grpc.SchedulerServiceStub(self._channel)
        self._subscriptions = subscriptions_pb2_grpc.SubscriptionServiceStub(self._channel)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    # -- events -------------------------------------------------------------------------------

    async def emit(
        self,
        name: str,
        data: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> EmitResult:
        """Store an event and start every function it triggers."""
        request = events_pb2.EmitRequest(
            name=name,
            data=_struct_argument(data),
            idempotency_key=idempotency_key or "",
            metadata=metadata or {},
        )
        response: events_pb2.EmitResponse = await self._call(self._events.Emit, request)
        return EmitResult(
            event_id=response.event_id,
            run_ids=list(response.run_ids),
            sequence=response.sequence,
            duplicate=response.duplicate,
        )

    async def emit_sync(
        self,
        name: str,
        data: dict[str, Any] | None = None,
        *,
        timeout: Duration = "30s",  # noqa: ASYNC109 - the server's wait for the runs (API.md name)
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> list[RunResult]:
        """Emit an event and wait until every run it started has ended or `timeout` [30s, at most 5m]
        passed; one result per run (those still going have `timed_out=True`). [] if none started."""
        _, results = await self._emit_sync(
            name, data, timeout=timeout, idempotency_key=idempotency_key, metadata=metadata
        )
        return results

    async def _emit_sync(
        self,
        name: str,
        data: dict[str, Any] | None,
        *,
        timeout: Duration,  # noqa: ASYNC109 - the server's wait for the runs
        idempotency_key: str | None,
        metadata: dict[str, str] | None,
    ) -> tuple[str, list[RunResult]]:
        """emit_sync, also returning the event id (the CLI shows it)."""
        wait = to_duration_proto(timeout, field="timeout")
        request = events_pb2.EmitSyncRequest(
            name=name,
            data=_struct_argument(data),
            idempotency_key=idempotency_key or "",
            metadata=metadata or {},
            timeout=wait,
        )
        response: events_pb2.EmitSyncResponse = await self._call(
            self._events.EmitSync, request, deadline=self._wait_deadline(wait.ToTimedelta().total_seconds())
        )
        return response.event_id, [_run_result(r) for r in response.results]

    async def publish(
        self,
        topic: str,
        data: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> PublishResult:
        """Send a message to real-time subscribers of `topic:<topic>`. Starts no run."""
        request = events_pb2.PublishRequest(
            topic=topic,
            data=_struct_argument(data),
            idempotency_key=idempotency_key or "",
            metadata=metadata or {},
        )
        response: events_pb2.PublishResponse = await self._call(self._events.Publish, request)
        return PublishResult(
            event_id=response.event_id, sequence=response.sequence, duplicate=response.duplicate
        )

    async def get_event(self, event_id: str) -> Event:
        response: events_pb2.GetEventResponse = await self._call(
            self._events.GetEvent, events_pb2.GetEventRequest(id=event_id)
        )
        return _event(response.event)

    async def list_events(
        self,
        *,
        name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        namespace: str = "events",
    ) -> EventPage:
        """Stored events, newest first. Pass `next_cursor` back as `cursor` for the next page."""
        request = events_pb2.ListEventsRequest(
            name=name or "", limit=limit, cursor=cursor or "", namespace=namespace
        )
        response: events_pb2.ListEventsResponse = await self._call(self._events.ListEvents, request)
        return EventPage(events=[_event(e) for e in response.events], next_cursor=response.next_cursor)

    # -- functions ----------------------------------------------------------------------------

    async def list_functions(self, *, limit: int = 100, cursor: str | None = None) -> list[FunctionInfo]:
        functions: list[FunctionInfo] = []
        next_cursor = cursor or ""
        while True:
            request = functions_pb2.ListFunctionsRequest(limit=limit, cursor=next_cursor)
            response: functions_pb2.ListFunctionsResponse = await self._call(
                self._registry.ListFunctions, request
            )
            functions.extend(_function(f) for f in response.functions)
            next_cursor = response.next_cursor
            if not next_cursor or cursor is not None:
                return functions

    async def get_function(self, function_id: str, *, version: int | None = None) -> FunctionInfo:
        request = functions_pb2.GetFunctionRequest(id=function_id, version=version or 0)
        response: functions_pb2.GetFunctionResponse = await self._call(self._registry.GetFunction, request)
        return _function(response.function)

    async def register(
        self,
        functions: Sequence[Function] | ServesFunctions,
        *,
        endpoint_url: str | None = None,
        takeover: bool = False,
    ) -> list[FunctionInfo]:
        """Tell Ironflow about push-mode functions and the URL it should POST their runs to.

        Pull workers register their own functions when they connect; push functions have nobody
        dialling in, so the app (or a deploy step) calls this once per deploy. Registering an
        unchanged definition keeps its version, so calling it on every start is safe.

        `functions` is a list of `@ironflow.function(..., mode="push")` definitions, or the app from
        `ironflow.serve(...)`, which carries them. A function already registered in pull mode is
        refused with FAILED_PRECONDITION unless `takeover=True`: switching modes moves where its runs
        go, which should never happen by accident. Bad arguments raise ValueError before any call.
        """
        checked = push_functions(functions)
        url = push_endpoint_url(endpoint_url)
        request = functions_pb2.RegisterFunctionsRequest(
            functions=[function.definition() for function in checked], endpoint_url=url, takeover=takeover
        )
        response: functions_pb2.RegisterFunctionsResponse = await self._call(
            self._registry.RegisterFunctions, request
        )
        return [_function(f) for f in response.functions]

    # -- runs ---------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> Run:
        response: runs_pb2.GetRunResponse = await self._call(
            self._scheduler.GetRun, runs_pb2.GetRunRequest(id=run_id)
        )
        return _run(response.run)

    async def list_runs(
        self,
        *,
        function_id: str | None = None,
        status: str | None = None,
        event_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """Runs, newest first, optionally only those of one function, status or event.

        The page iterates over its runs; pass `next_cursor` back as `cursor` for the next page.
        """
        status_value: runs_pb2.RunStatus.ValueType = runs_pb2.RUN_STATUS_UNSPECIFIED
        if status is not None:
            if status not in RUN_STATUSES:
                raise IronflowError(
                    "INVALID_ARGUMENT",
                    f"status: must be one of {', '.join(RUN_STATUSES)}, got {status!r}",
                )
            status_value = RUN_STATUSES[status]
        request = runs_pb2.ListRunsRequest(
            function_id=function_id or "",
            status=status_value,
            event_id=event_id or "",
            limit=limit,
            cursor=cursor or "",
        )
        response: runs_pb2.ListRunsResponse = await self._call(self._scheduler.ListRuns, request)
        return RunPage(runs=[_run(r) for r in response.runs], next_cursor=response.next_cursor)

    async def get_run_steps(self, run_id: str) -> list[Step]:
        """The steps a run has recorded so far, in the order they started."""
        response: runs_pb2.GetRunStepsResponse = await self._call(
            self._scheduler.GetRunSteps, runs_pb2.GetRunStepsRequest(run_id=run_id)
        )
        return [_step(s) for s in response.steps]

    async def cancel_run(self, run_id: str, reason: str | None = None) -> Run:
        """Cancel a run that has not ended; raises FAILED_PRECONDITION if it already has."""
        response: runs_pb2.CancelRunResponse = await self._call(
            self._scheduler.CancelRun, runs_pb2.CancelRunRequest(id=run_id, reason=reason or "")
        )
        return _run(response.run)

    async def resume_run(self, run_id: str, from_step: str | None = None) -> Run:
        """Re-queue a failed or paused run. Completed steps keep their outputs; with `from_step`, that
        step and every step started after it run again. FAILED_PRECONDITION for any other status."""
        request = runs_pb2.ResumeRunRequest(id=run_id, from_step=from_step or "")
        response: runs_pb2.ResumeRunResponse = await self._call(self._scheduler.ResumeRun, request)
        return _run(response.run)

    async def invoke(
        self,
        function_id: str | Function,
        data: dict[str, Any] | None = None,
        *,
        timeout: Duration = "30s",  # noqa: ASYNC109 - how long to wait for the run (API.md name)
        idempotency_key: str | None = None,
    ) -> Any:
        """Start a run of a function (triggers or not) and wait up to `timeout` [30s] for its output.

        Raises RunFailedError or RunCancelledError when the run did not complete, and IronflowError
        with code DEADLINE_EXCEEDED when `timeout` passed first (the run keeps going). The same
        `idempotency_key` returns the same run, so calling again waits on it again.
        """
        target = function_id.id if isinstance(function_id, Function) else function_id
        wait = to_seconds(timeout, field="timeout")
        request = runs_pb2.InvokeRequest(
            function_id=target,
            data=_struct_argument(data),
            idempotency_key=idempotency_key or "",
            timeout=to_duration_proto(wait, field="timeout"),
        )
        response: runs_pb2.InvokeResponse = await self._call(self._scheduler.Invoke, request)
        result = await self._wait_for_run(response.run_id, wait)
        if result.timed_out:
            raise IronflowError(
                "DEADLINE_EXCEEDED",
                f"run {result.run_id} of {result.function_id or target} did not end within "
                f"{wait:g}s (it is {result.status}); the run keeps going: check it with "
                f"get_run({result.run_id!r})",
            )
        if result.status == "failed":
            raise RunFailedError(result.run_id, result.function_id or target, result.error)
        if result.status == "cancelled":
            raise RunCancelledError(result.run_id, result.function_id or target, result.error)
        return result.output

    async def _wait_for_run(self, run_id: str, wait: float) -> RunResult:
        """WaitForRuns on one run, in slices of at most the server's longest wait."""
        deadline = time.monotonic() + wait
        while True:
            remaining = max(deadline - time.monotonic(), 0.0)
            slice_seconds = min(remaining, MAX_WAIT_SECONDS)
            request = runs_pb2.WaitForRunsRequest(
                run_ids=[run_id], timeout=to_duration_proto(slice_seconds, field="timeout")
            )
            response: runs_pb2.WaitForRunsResponse = await self._call(
                self._scheduler.WaitForRuns, request, deadline=self._wait_deadline(slice_seconds)
            )
            result = _run_result(response.results[0])
            if not result.timed_out or remaining <= slice_seconds:
                return result

    # -- consumer groups and topics -------------------------------------------------------------

    async def create_consumer_group(
        self,
        name: str,
        pattern: str,
        *,
        filter: str | None = None,
        start: str | int = "new",
        ack_wait: Duration = "30s",
        max_deliver: int = 5,
        max_in_flight: int = 1000,
    ) -> ConsumerGroup:
        """Create a consumer group delivering `pattern` (one pattern, optionally a CEL `filter`).

        `start` is "new" (messages from now on), "earliest" (everything the stream still holds) or a
        stream sequence to start after. Creating a group that exists with the same settings returns
        it; different settings raise IronflowError ALREADY_EXISTS. A duration that cannot be read
        raises ValueError before any call.
        """
        request = subscriptions_pb2.CreateConsumerGroupRequest(
            group=subscriptions_pb2.ConsumerGroup(
                name=name,
                pattern=pattern,
                filter=filter or "",
                start=str(start),
                ack_wait=to_duration_proto(ack_wait, field="ack_wait"),
                max_deliver=max_deliver,
                max_in_flight=max_in_flight,
            )
        )
        response: subscriptions_pb2.CreateConsumerGroupResponse = await self._call(
            self._subscriptions.CreateConsumerGroup, request
        )
        return _consumer_group(response.group)

    async def get_consumer_group(self, name: str) -> ConsumerGroup:
        response: subscriptions_pb2.GetConsumerGroupResponse = await self._call(
            self._subscriptions.GetConsumerGroup, subscriptions_pb2.GetConsumerGroupRequest(name=name)
        )
        return _consumer_group(response.group)

    async def list_consumer_groups(self) -> list[ConsumerGroup]:
        """Every consumer group, by name."""
        response: subscriptions_pb2.ListConsumerGroupsResponse = await self._call(
            self._subscriptions.ListConsumerGroups, subscriptions_pb2.ListConsumerGroupsRequest()
        )
        return [_consumer_group(g) for g in response.groups]

    async def delete_consumer_group(self, name: str) -> None:
        """Delete a group and its progress; its connected members are ended. NOT_FOUND if unknown."""
        await self._call(
            self._subscriptions.DeleteConsumerGroup, subscriptions_pb2.DeleteConsumerGroupRequest(name=name)
        )

    async def replay_dead_letters(self, group: str, *, limit: int | None = None) -> int:
        """Deliver a group's dead-lettered messages to its members again (at most `limit` [all]);
        returns how many were replayed."""
        request = subscriptions_pb2.ReplayDeadLettersRequest(group=group, limit=limit or 0)
        response: subscriptions_pb2.ReplayDeadLettersResponse = await self._call(
            self._subscriptions.ReplayDeadLetters, request
        )
        return response.replayed

    async def list_topics(
        self, pattern: str | None = None, *, limit: int = 100, cursor: str | None = None
    ) -> TopicPage:
        """Event names and topics that have carried messages, by subject, optionally only those
        matching `pattern` (`topic:>`, `events:order.*`). Pass `next_cursor` back as `cursor`."""
        request = subscriptions_pb2.ListTopicsRequest(pattern=pattern or "", limit=limit, cursor=cursor or "")
        response: subscriptions_pb2.ListTopicsResponse = await self._call(
            self._subscriptions.ListTopics, request
        )
        return TopicPage(topics=[_topic(t) for t in response.topics], next_cursor=response.next_cursor)

    async def get_topic_stats(self, subject: str) -> TopicInfo:
        """Counts for one subject (`events:order.placed`, `topic:notifications.email`, not a pattern)."""
        response: subscriptions_pb2.GetTopicStatsResponse = await self._call(
            self._subscriptions.GetTopicStats, subscriptions_pb2.GetTopicStatsRequest(subject=subject)
        )
        return _topic(response.topic)

    # -- plumbing -----------------------------------------------------------------------------

    def _wait_deadline(self, wait_seconds: float) -> float:
        return max(self._timeout, wait_seconds + _WAIT_DEADLINE_MARGIN)

    async def _call(
        self, method: Callable[..., Awaitable[T]], request: Any, *, deadline: float | None = None
    ) -> T:
        metadata = (("authorization", f"Bearer {self._api_key}"),) if self._api_key else None
        try:
            return await method(request, timeout=deadline or self._timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, self.server_url) from None


def push_functions(functions: object) -> list[Function]:
    """The push functions in `functions` (a list of them, or an object with `.functions`), checked.

    Checked here rather than left to the server because the server cannot tell a pull function passed
    by mistake from a deliberate mode switch, and a ValueError naming the index is easier to act on.
    """
    # The app from ironflow.serve(...) carries its functions; a Function itself has no `.functions`.
    source = getattr(functions, "functions", functions)
    if isinstance(source, Function):
        raise ValueError(f"functions: pass a list such as [my_function], not one function ({source.id!r})")
    if isinstance(source, str | bytes) or not isinstance(source, Iterable):
        raise ValueError(
            "functions: must be a list of @ironflow.function definitions or the app from "
            f"ironflow.serve(...), got {type(functions).__name__}"
        )
    items = list(source)
    if not items:
        raise ValueError("functions: at least one @ironflow.function(..., mode='push') is required")
    seen: set[str] = set()
    for index, function in enumerate(items):
        if not isinstance(function, Function):
            raise ValueError(f"functions[{index}]: not an @ironflow.function ({function!r})")
        if function.mode != "push":
            raise ValueError(
                f"functions[{index}]: {function.id!r} is a pull-mode function; workers register those "
                "themselves — declare it with mode='push' to serve it over HTTP"
            )
        if function.id in seen:
            raise ValueError(f"functions[{index}]: function id {function.id!r} appears twice")
        seen.add(function.id)
    return items


def push_endpoint_url(endpoint_url: str | None) -> str:
    """`endpoint_url`, checked: push functions are useless without an address Ironflow can POST to."""
    if not endpoint_url:
        raise ValueError(
            "endpoint_url: push functions need the URL Ironflow POSTs to, "
            "e.g. https://app.example.com/api/ironflow"
        )
    if not isinstance(endpoint_url, str):
        raise ValueError(f"endpoint_url: must be a string URL, got {type(endpoint_url).__name__}")
    parsed = urlparse(endpoint_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"endpoint_url: must be an http:// or https:// URL, got {endpoint_url!r}")
    return endpoint_url


def _struct_argument(data: dict[str, Any] | None) -> Any:
    if data is None:
        return to_struct({})
    if not isinstance(data, dict):
        raise IronflowError(
            "INVALID_ARGUMENT", f"data: must be a dict (a JSON object), got {type(data).__name__}"
        )
    try:
        return to_struct(data)
    except (ValueError, TypeError, AttributeError) as exc:
        raise IronflowError("INVALID_ARGUMENT", f"data: must be JSON-serialisable ({exc})") from None


def _error(exc: grpc.aio.AioRpcError, server_url: str) -> IronflowError:
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return IronflowError(
            "UNAVAILABLE", f"cannot reach the Ironflow server at {server_url}: {exc.details()}"
        )
    return IronflowError(code.name if code is not None else "UNKNOWN", exc.details() or "")


def _event(message: common_pb2.Event) -> Event:
    return Event(
        id=message.id,
        name=message.name,
        namespace=message.namespace,
        subject=message.subject,
        data=from_struct(message.data),
        metadata=dict(message.metadata),
        idempotency_key=message.idempotency_key or None,
        timestamp=from_timestamp(message.timestamp),
        sequence=message.sequence,
    )


def _function(message: functions_pb2.Function) -> FunctionInfo:
    definition = json_format.MessageToDict(message.definition, preserving_proto_field_name=True)
    return FunctionInfo(
        id=message.definition.id,
        name=message.definition.name,
        version=message.version,
        status=_STATUS_NAMES.get(message.status, "unknown"),
        mode=_MODE_NAMES.get(message.definition.mode, "pull"),
        triggers=list(definition.get("triggers", [])),
        created_at=from_timestamp(message.created_at),
        updated_at=from_timestamp(message.updated_at),
        definition=definition,
        endpoint_url=message.definition.endpoint_url,
        circuit_state=message.circuit_state,
    )


def _run_error(message: common_pb2.ErrorInfo) -> RunError:
    return RunError(code=message.code, message=message.message, details=message.details)


def _run(message: runs_pb2.Run) -> Run:
    return Run(
        id=message.id,
        function_id=message.function_id,
        function_version=message.function_version,
        event_id=message.event_id,
        status=_RUN_STATUS_NAMES.get(message.status, "unknown"),
        attempt=message.attempt,
        output=from_value(message.output) if message.HasField("output") else None,
        error=_run_error(message.error) if message.HasField("error") else None,
        parent_run_id=message.parent_run_id or None,
        created_at=from_timestamp(message.created_at),
        started_at=from_timestamp(message.started_at),
        ended_at=from_timestamp(message.ended_at),
        parent_step_id=message.parent_step_id or None,
        child_run_ids=list(message.child_run_ids),
    )


def _run_result(message: runs_pb2.RunResult) -> RunResult:
    return RunResult(
        run_id=message.run_id,
        function_id=message.function_id,
        status=_RUN_STATUS_NAMES.get(message.status, "unknown"),
        output=from_value(message.output) if message.HasField("output") else None,
        # An empty ErrorInfo (no code) means no error, whether or not the field is set.
        error=_run_error(message.error) if message.error.code else None,
        timed_out=message.timed_out,
    )


def _step(message: runs_pb2.Step) -> Step:
    return Step(
        id=message.id,
        name=message.name,
        kind=message.kind,
        status=_STEP_STATUS_NAMES.get(message.status, "unknown"),
        attempt=message.attempt,
        output=from_value(message.output) if message.HasField("output") else None,
        error=_run_error(message.error) if message.HasField("error") else None,
        started_at=from_timestamp(message.started_at),
        ended_at=from_timestamp(message.ended_at),
    )


def _consumer_group(message: subscriptions_pb2.ConsumerGroup) -> ConsumerGroup:
    return ConsumerGroup(
        name=message.name,
        pattern=message.pattern,
        filter=message.filter,
        start=message.start,
        ack_wait=message.ack_wait.ToTimedelta(),
        max_deliver=message.max_deliver,
        max_in_flight=message.max_in_flight,
        created_at=from_timestamp(message.created_at),
        pending=message.pending,
        members=message.members,
        dead_letter_subject=message.dead_letter_subject,
    )


def _topic(message: subscriptions_pb2.TopicInfo) -> TopicInfo:
    return TopicInfo(
        subject=message.subject,
        messages=message.messages,
        first_sequence=message.first_sequence,
        last_sequence=message.last_sequence,
        first_message_at=from_timestamp(message.first_message_at),
        last_message_at=from_timestamp(message.last_message_at),
        subscribers=message.subscribers,
    )


# Shared with the worker's transports and job execution.
grpc_channel = _channel
rpc_error = _error
event_from_proto = _event
