"""DBOS Transact peer benchmark: queued and directly started workflow throughput, workflow latency.

    <dbos venv>/bin/python bench/peers/dbos_bench.py --trials N --out FILE [--workflows 2000]
                                                       [--round-trips 300]

Normally run by bench/_peers.py, which builds the venv from requirements-dbos.txt. DBOS runs workflows
inside the process that launched it, so everything happens here. Per trial, the Postgres system
database (`bench_dbos_sys`; DBOS 3 has no application database) is dropped and recreated, a fresh DBOS
instance is configured and launched, and

* queue: `--workflows` two-step workflows enqueued on a queue registered with DBOS's defaults, timed
  from the first enqueue to the last `handle.get_result()` returning;
* direct: `--workflows` two-step workflows started with `DBOS.start_workflow`, first start to last
  result;
* latency: `--round-trips` sequential one-step workflows called directly (synchronously), each timed
  with perf_counter_ns, after a few uncounted warm-ups;

then DBOS is destroyed. The database is dropped again at the end. Writes FILE as JSON (peer, versions,
settings, trials) and prints one progress line per phase to stderr; on any failure prints one line to
stderr and exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg
from dbos import DBOS, DBOSConfig

# bench/peers/ is sys.path[0] when this file runs as a script.
from peer_common import BenchError, progress, summarise_ns
from psycopg import sql

# Trust auth on the local server; the admin connection only creates and drops the benchmark's database.
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
SYSTEM_DATABASE = "bench_dbos_sys"
SYSTEM_DATABASE_URL = f"postgresql://postgres@127.0.0.1:5432/{SYSTEM_DATABASE}"
APP_NAME = "ironflow-bench-dbos"
# Registered with DBOS's defaults: no concurrency limit, so each 1 s poll dequeues everything enqueued so
# far. A worker_concurrency of N caps a poll at N workflows, i.e. the queue at N per second (10 gave
# 10/s, 50 gave 47/s on the 2-core machine this was written on), which would measure the setting.
QUEUE_NAME = "bench_queue"
WARMUPS = 5
# Handles poll the system database for results this often. DBOS's default is 1 s, which would add up
# to a second of idle waiting to a measurement of a few seconds: the instrument, not the system under
# test. The queue's own dispatch polling is left at DBOS's default (1 s) since that is DBOS's behaviour.
RESULT_POLL_S = 0.05

CONFIG: DBOSConfig = {
    "name": APP_NAME,
    "system_database_url": SYSTEM_DATABASE_URL,
    "log_level": "WARNING",
}


@DBOS.step()
def first_step() -> int:
    return 1


@DBOS.step()
def second_step() -> int:
    return 2


@DBOS.workflow()
def two_step_workflow() -> int:
    """Two checkpointed no-op steps: what a durable workflow engine costs per step and per workflow."""
    return first_step() + second_step()


@DBOS.workflow()
def one_step_workflow() -> int:
    return first_step()


def rate(count: int, seconds: float) -> dict[str, float]:
    return {"count": count, "seconds": round(seconds, 4), "per_second": round(count / seconds, 1)}


def describe_rate(measured: dict[str, float]) -> str:
    return (
        f"{measured['count']:.0f} workflows in {measured['seconds']:.2f} s ({measured['per_second']:.0f}/s)"
    )


def drop_database() -> None:
    # WITH (FORCE) (Postgres 13+) ends sessions a crashed earlier run may have left connected.
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SYSTEM_DATABASE))
        )


def recreate_database() -> None:
    drop_database()
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SYSTEM_DATABASE)))


@contextlib.contextmanager
def launched_dbos() -> Iterator[None]:
    """A fresh DBOS instance for one trial. The workflow registry survives DBOS.destroy() (it is not
    asked to destroy it), so the decorated functions above stay registered for the next instance."""
    DBOS(config=CONFIG)
    try:
        DBOS.launch()
        yield
    finally:
        DBOS.destroy()


def check(results: Sequence[Any], expected: int, count: int, phase: str) -> None:
    if len(results) != count or any(result != expected for result in results):
        raise BenchError(f"{phase}: unexpected workflow results")


def measure_queue(workflows: int) -> dict[str, float]:
    queue = DBOS.register_queue(QUEUE_NAME)
    # Warm-ups also wait out DBOS starting the queue's worker thread (it looks for new queues every
    # second), so the measurement starts with the queue live.
    for handle in [queue.enqueue(two_step_workflow) for _ in range(WARMUPS)]:
        handle.get_result(polling_interval_sec=RESULT_POLL_S)
    start = time.perf_counter()
    handles = [queue.enqueue(two_step_workflow) for _ in range(workflows)]
    results = [handle.get_result(polling_interval_sec=RESULT_POLL_S) for handle in handles]
    seconds = time.perf_counter() - start
    check(results, 3, workflows, "queue")
    return rate(workflows, seconds)


def measure_direct(workflows: int) -> dict[str, float]:
    for _ in range(WARMUPS):
        DBOS.start_workflow(two_step_workflow).get_result()
    start = time.perf_counter()
    handles = [DBOS.start_workflow(two_step_workflow) for _ in range(workflows)]
    results = [handle.get_result() for handle in handles]
    seconds = time.perf_counter() - start
    check(results, 3, workflows, "direct")
    return rate(workflows, seconds)


def one_call_ns() -> int:
    start = time.perf_counter_ns()
    one_step_workflow()
    return time.perf_counter_ns() - start


def measure_latency(round_trips: int) -> dict[str, float]:
    for _ in range(WARMUPS):
        one_call_ns()
    return summarise_ns([one_call_ns() for _ in range(round_trips)])


def run_trial(index: int, trials: int, workflows: int, round_trips: int) -> dict[str, Any]:
    label = f"dbos trial {index}/{trials}"
    recreate_database()
    progress(f"{label}: launched DBOS on a fresh {SYSTEM_DATABASE}")
    with launched_dbos():
        queued = measure_queue(workflows)
        progress(f"{label}: queue {describe_rate(queued)}")
        direct = measure_direct(workflows)
        progress(f"{label}: direct {describe_rate(direct)}")
        latency = measure_latency(round_trips)
        progress(
            f"{label}: latency {latency['count']} workflows, p50 {latency['p50_ms']:.2f} ms, "
            f"p99 {latency['p99_ms']:.2f} ms"
        )
    return {"queue": queued, "direct": direct, "latency": latency}


def versions() -> dict[str, str]:
    with psycopg.connect(ADMIN_URL) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return {
        "dbos": version("dbos"),
        "sqlalchemy": version("sqlalchemy"),
        "psycopg": version("psycopg"),
        "python": platform.python_version(),
        "postgres_server": str(row[0]) if row else "unknown",
    }


def settings(workflows: int, round_trips: int) -> dict[str, Any]:
    return {
        "system_database_url": SYSTEM_DATABASE_URL,
        "config": {key: value for key, value in CONFIG.items() if key != "system_database_url"},
        # DBOS.register_queue(QUEUE_NAME) with nothing else: DBOS's defaults, listed as they are in 3.x.
        "queue": {
            "name": QUEUE_NAME,
            "polling_interval_sec": 1.0,
            "worker_concurrency": None,
            "global_concurrency": None,
            "limiter": None,
        },
        "result_polling_interval_sec": RESULT_POLL_S,
        "max_executor_threads": "DBOS default (unbounded)",
        "sys_db_pool_size": "DBOS default (20)",
        "use_listen_notify": "DBOS default (true)",
        "workflows": workflows,
        "round_trips": round_trips,
        "warmups": WARMUPS,
        "percentiles": "nearest-rank",
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workflows", type=int, default=2000)
    parser.add_argument("--round-trips", type=int, default=300)
    args = parser.parse_args(argv)
    if min(args.trials, args.workflows, args.round_trips) < 1:
        parser.error("--trials, --workflows and --round-trips must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("dbos").setLevel(logging.WARNING)
    try:
        try:
            report = {
                "peer": "dbos",
                "versions": versions(),
                "settings": settings(args.workflows, args.round_trips),
                "trials": [
                    run_trial(i, args.trials, args.workflows, args.round_trips)
                    for i in range(1, args.trials + 1)
                ],
            }
        finally:
            drop_database()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    # The contract is one line on stderr and a non-zero exit, whatever went wrong (Postgres down, a
    # workflow failing, a DBOS API change); the message names the exception type so it stays diagnosable.
    except Exception as exc:  # noqa: BLE001
        message = " ".join(str(exc).split())
        print(f"dbos_bench: {type(exc).__name__}: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
