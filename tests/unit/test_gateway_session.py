"""A stream session's free slots: what the worker last reported, less what was handed out since,
plus what ended since (a job that ends frees its slot at once, not at the next heartbeat)."""

from __future__ import annotations

from ironflow.services.worker_gateway._session import StreamSession
from ironflow.v1 import runs_pb2


def job(run_id: str) -> runs_pb2.Job:
    return runs_pb2.Job(run_id=run_id, lease_token="lse", execution_sequence=1)


def test_a_finished_job_frees_its_slot_before_the_next_heartbeat() -> None:
    session = StreamSession(session_id="s", worker_id="w", function_ids=["f"], max_jobs=2, last_seen=0.0)
    session.reported_free = 2  # the worker's heartbeat: both slots free
    session.assign(job("r1"))
    session.assign(job("r2"))
    assert session.free_slots == 0
    assert session.release("r1")
    assert session.free_slots == 1
    assert not session.release("r1"), "a job is released once"
    assert session.free_slots == 1
    assert session.release("r2")
    assert session.free_slots == 2  # never more than the worker has
    session.reported_free = 0  # a busier worker reports fewer: that wins until it reports again
    assert session.free_slots == 0
