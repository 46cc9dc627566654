"""`ironflow.SyncClient`: the blocking twin of `Client`, for scripts and notebooks.

It is a thin wrapper: one private event loop on a daemon thread runs the async client, and each
method blocks on its result. That works whether or not the caller already runs an event loop (a
notebook does), which `asyncio.run` per call would not, and grpc.aio channels stay on one loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from types import TracebackType
from typing import Any, TypeVar

from ._client import DEFAULT_TIMEOUT_SECONDS, Client, ServesFunctions
from ._durations import Duration
from ._function import Function
from ._models import (
    ConsumerGroup,
    EmitResult,
    Event,
    EventPage,
    FunctionInfo,
    PublishResult,
    Run,
    RunPage,
    RunResult,
    Step,
    TopicInfo,
    TopicPage,
)

T = TypeVar("T")


class SyncClient:
    def __init__(
        self,
        server_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="ironflow-sync-client", daemon=True
        )
        self._thread.start()
        self._client: Client = self._run(_make_client(server_url, api_key, timeout))
        self.server_url = self._client.server_url

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def emit(
        self,
        name: str,
        data: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> EmitResult:
        return self._run(self._client.emit(name, data, idempotency_key=idempotency_key, metadata=metadata))

    def emit_sync(
        self,
        name: str,
        data: dict[str, Any] | None = None,
        *,
        timeout: Duration = "30s",
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> list[RunResult]:
        return self._run(
            self._client.emit_sync(
                name, data, timeout=timeout, idempotency_key=idempotency_key, metadata=metadata
            )
        )

    def invoke(
        self,
        function_id: str | Function,
        data: dict[str, Any] | None = None,
        *,
        timeout: Duration = "30s",
        idempotency_key: str | None = None,
    ) -> Any:
        return self._run(
            self._client.invoke(function_id, data, timeout=timeout, idempotency_key=idempotency_key)
        )

    def publish(
        self,
        topic: str,
        data: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> PublishResult:
        return self._run(
            self._client.publish(topic, data, idempotency_key=idempotency_key, metadata=metadata)
        )

    def get_event(self, event_id: str) -> Event:
        return self._run(self._client.get_event(event_id))

    def list_events(
        self,
        *,
        name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        namespace: str = "events",
    ) -> EventPage:
        return self._run(self._client.list_events(name=name, limit=limit, cursor=cursor, namespace=namespace))

    def list_functions(self, *, limit: int = 100, cursor: str | None = None) -> list[FunctionInfo]:
        return self._run(self._client.list_functions(limit=limit, cursor=cursor))

    def get_function(self, function_id: str, *, version: int | None = None) -> FunctionInfo:
        return self._run(self._client.get_function(function_id, version=version))

    def register(
        self,
        functions: Sequence[Function] | ServesFunctions,
        *,
        endpoint_url: str | None = None,
        takeover: bool = False,
    ) -> list[FunctionInfo]:
        """Register push-mode functions at `endpoint_url`; see `Client.register`."""
        return self._run(self._client.register(functions, endpoint_url=endpoint_url, takeover=takeover))

    def get_run(self, run_id: str) -> Run:
        return self._run(self._client.get_run(run_id))

    def list_runs(
        self,
        *,
        function_id: str | None = None,
        status: str | None = None,
        event_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        return self._run(
            self._client.list_runs(
                function_id=function_id, status=status, event_id=event_id, limit=limit, cursor=cursor
            )
        )

    def get_run_steps(self, run_id: str) -> list[Step]:
        return self._run(self._client.get_run_steps(run_id))

    def cancel_run(self, run_id: str, reason: str | None = None) -> Run:
        return self._run(self._client.cancel_run(run_id, reason))

    def resume_run(self, run_id: str, from_step: str | None = None) -> Run:
        return self._run(self._client.resume_run(run_id, from_step))

    def create_consumer_group(
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
        """Create a consumer group; see `Client.create_consumer_group`."""
        return self._run(
            self._client.create_consumer_group(
                name,
                pattern,
                filter=filter,
                start=start,
                ack_wait=ack_wait,
                max_deliver=max_deliver,
                max_in_flight=max_in_flight,
            )
        )

    def get_consumer_group(self, name: str) -> ConsumerGroup:
        return self._run(self._client.get_consumer_group(name))

    def list_consumer_groups(self) -> list[ConsumerGroup]:
        return self._run(self._client.list_consumer_groups())

    def delete_consumer_group(self, name: str) -> None:
        self._run(self._client.delete_consumer_group(name))

    def replay_dead_letters(self, group: str, *, limit: int | None = None) -> int:
        return self._run(self._client.replay_dead_letters(group, limit=limit))

    def list_topics(
        self, pattern: str | None = None, *, limit: int = 100, cursor: str | None = None
    ) -> TopicPage:
        return self._run(self._client.list_topics(pattern, limit=limit, cursor=cursor))

    def get_topic_stats(self, subject: str) -> TopicInfo:
        return self._run(self._client.get_topic_stats(subject))


async def _make_client(server_url: str | None, api_key: str | None, call_timeout: float) -> Client:
    # Created on the private loop so its grpc.aio channel belongs to that loop.
    return Client(server_url, api_key, timeout=call_timeout)
