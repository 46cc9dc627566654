"""The scheduler as ingest uses it, over gRPC (the distributed shape)."""

from __future__ import annotations

from datetime import timedelta

import grpc
from google.protobuf import duration_pb2

from ironflow.services.core.grpc_client import call
from ironflow.v1 import runs_pb2, runs_pb2_grpc

from ._rpc import event_to_proto
from ._store import StoredEvent

TRIGGER_TIMEOUT = 30.0
# WaitForRuns answers by `within`; allow for the network and a busy scheduler on top.
WAIT_SLACK = 10.0


class RemoteScheduler:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = runs_pb2_grpc.SchedulerServiceStub(channel)

    async def trigger(self, event: StoredEvent) -> list[str]:
        response = await call(
            self._stub.Trigger,
            runs_pb2.TriggerRequest(event=event_to_proto(event)),
            deadline=TRIGGER_TIMEOUT,
            peer="scheduler",
        )
        return list(response.run_ids)

    async def wait_for_runs(self, run_ids: list[str], within: timedelta) -> list[runs_pb2.RunResult]:
        timeout = duration_pb2.Duration()
        timeout.FromTimedelta(within)
        response = await call(
            self._stub.WaitForRuns,
            runs_pb2.WaitForRunsRequest(run_ids=run_ids, timeout=timeout),
            deadline=within.total_seconds() + WAIT_SLACK,
            peer="scheduler",
        )
        return list(response.results)
