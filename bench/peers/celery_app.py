"""The Celery app the Celery peer benchmark drives: Redis broker and result backend, one no-op task.

Imported both by the driver (bench/peers/celery_bench.py, to submit and collect) and by the worker
subprocess it starts (`python -m celery -A celery_app worker`, run from this directory), so the two
always agree on the configuration. Redis DB 1 only: DB 0 belongs to the project's own benchmarks.
"""

from __future__ import annotations

from celery import Celery

REDIS_URL = "redis://127.0.0.1:6379/1"

# Celery's defaults, spelled out so the driver can record exactly what was measured.
SETTINGS: dict[str, object] = {
    "broker_url": REDIS_URL,
    "result_backend": REDIS_URL,
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "task_acks_late": False,
    "worker_prefetch_multiplier": 4,
    # Set only to silence the deprecation warning Celery 5.3+ prints when it is left unset.
    "broker_connection_retry_on_startup": True,
}

app = Celery("ironflow_bench")
app.conf.update(SETTINGS)


# An explicit name, so the task is the same one whether this module is imported as `celery_app` (the
# worker, the driver) or under some other package path.
@app.task(name="bench.noop")
def noop() -> None:
    """Does nothing: the benchmark measures Celery's submit, dispatch and result round trip."""
