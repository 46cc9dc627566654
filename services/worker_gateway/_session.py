"""One connected stream worker: what it runs, what it holds, and the messages waiting to go to it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ironflow.services.core.telemetry import record_dispatch
from ironflow.v1 import runs_pb2, workers_pb2


@dataclass(eq=False)
class StreamSession:
    session_id: str
    worker_id: str
    function_ids: list[str]
    max_jobs: int
    last_seen: float
    held: dict[str, runs_pb2.JobLease] = field(default_factory=dict)
    # The worker's own count of free slots from its last heartbeat (it may be busier than we think).
    reported_free: int | None = None
    outbox: asyncio.Queue[workers_pb2.ConnectResponse | None] = field(default_factory=asyncio.Queue)
    closed: bool = False

    @property
    def free_slots(self) -> int:
        free = self.max_jobs - len(self.held)
        if self.reported_free is not None:
            free = min(free, self.reported_free)
        return 0 if self.closed else max(free, 0)

    def assign(self, job: runs_pb2.Job) -> None:
        record_dispatch(job, worker_id=self.worker_id, transport="stream")
        self.held[job.run_id] = runs_pb2.JobLease(
            run_id=job.run_id, lease_token=job.lease_token, execution_sequence=job.execution_sequence
        )
        if self.reported_free is not None:
            self.reported_free -= 1
        self.send(workers_pb2.ConnectResponse(job=job))

    def release(self, run_id: str) -> bool:
        """The run's job ended here (an outcome, a lost lease, a cancel): its slot is free again.

        The worker's last heartbeat counted that job as busy, so its reported free slots go up too;
        otherwise a worker would look full until its next heartbeat (up to its heartbeat interval).
        """
        if self.held.pop(run_id, None) is None:
            return False
        if self.reported_free is not None:
            self.reported_free = min(self.reported_free + 1, self.max_jobs)
        return True

    def send(self, message: workers_pb2.ConnectResponse) -> None:
        if not self.closed:
            self.outbox.put_nowait(message)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(None)
