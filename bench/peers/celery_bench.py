"""Celery 5 peer benchmark: no-op task throughput and round-trip latency over a Redis broker and backend.

    <celery venv>/bin/python bench/peers/celery_bench.py --trials N --out FILE [--tasks 5000]
                                                         [--round-trips 500]

Normally run by bench/_peers.py, which builds the venv from requirements-celery.txt. Per trial: Redis DB 1
is flushed (never DB 0, which the project's benchmarks use), a prefork worker with concurrency 2 is
started as a subprocess and pinged until it answers, then

* throughput: `--tasks` no-op tasks submitted in a plain `delay()` loop, timed from the first submit to
  the last result being available (one `ResultSet.join_native`, which the Redis backend serves from
  pub/sub rather than by polling each key);
* latency: `--round-trips` sequential `noop.delay().get()` calls, each timed with perf_counter_ns,
  after a few uncounted warm-ups;

and the worker is stopped with SIGTERM (warm shutdown) and waited for. Writes FILE as JSON (peer,
versions, settings, trials) and prints one progress line per phase to stderr; on any failure prints one
line to stderr and exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import celery
import kombu
import redis
from celery.result import ResultSet

# bench/peers/ is sys.path[0] when this file runs as a script, and the worker is started from there.
from celery_app import REDIS_URL, SETTINGS, app, noop
from peer_common import BenchError, progress, summarise_ns

PEERS_DIR = Path(__file__).resolve().parent
POOL = "prefork"
CONCURRENCY = 2
READY_DEADLINE_S = 60.0
STOP_DEADLINE_S = 30.0
# Generous: a trial on a busy 2-core machine takes seconds, so hitting this means something is stuck.
RESULT_TIMEOUT_S = 300.0
WARMUP_ROUND_TRIPS = 10


def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL)
    # FLUSHDB below must never reach DB 0, whatever REDIS_URL is edited to.
    if client.connection_pool.connection_kwargs.get("db") != 1:
        raise BenchError(f"refusing to use {REDIS_URL}: the Celery benchmark owns Redis DB 1 only")
    return client


def log_tail(log: IO[bytes], limit: int = 2000) -> str:
    log.seek(0)
    text = log.read().decode(errors="replace")[-limit:]
    return " | ".join(line for line in text.splitlines() if line.strip())


@contextlib.contextmanager
def running_worker(hostname: str) -> Iterator[None]:
    """A prefork worker subprocess for the duration of a trial, stopped (and waited for) on the way out.

    Its output goes to a temporary file rather than a pipe nobody reads, so a chatty worker cannot block,
    and the tail is there to quote when it fails to start. A new session lets us kill the whole process
    group (the pool children too) if warm shutdown hangs.
    """
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "celery_app",
        "worker",
        "--pool",
        POOL,
        "--concurrency",
        str(CONCURRENCY),
        "--loglevel",
        "warning",
        "--hostname",
        hostname,
    ]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            command, cwd=PEERS_DIR, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_until_ready(proc, hostname, log)
            yield
        finally:
            stop_worker(proc)


def wait_until_ready(proc: subprocess.Popen[bytes], hostname: str, log: IO[bytes]) -> None:
    """Ping the worker by name until it answers: a reply comes from its consumer, so it is taking tasks."""
    deadline = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"celery worker exited with {proc.returncode} before ready: {log_tail(log)}")
        if app.control.ping(destination=[hostname], timeout=0.5):
            return
    raise BenchError(f"celery worker not ready within {READY_DEADLINE_S:.0f} s: {log_tail(log)}")


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # warm shutdown: finish in-flight tasks, stop the pool, exit
        try:
            proc.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Normally the group is already empty; this only reaps pool children a crashed main process left.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def round_trip_ns() -> int:
    start = time.perf_counter_ns()
    noop.delay().get(timeout=RESULT_TIMEOUT_S)
    return time.perf_counter_ns() - start


def measure_throughput(tasks: int) -> dict[str, float]:
    start = time.perf_counter()
    results = ResultSet([noop.delay() for _ in range(tasks)], app=app)
    values = results.join_native(timeout=RESULT_TIMEOUT_S)
    seconds = time.perf_counter() - start
    if len(values) != tasks:
        raise BenchError(f"throughput: expected {tasks} results, got {len(values)}")
    return {"count": tasks, "seconds": round(seconds, 4), "per_second": round(tasks / seconds, 1)}


def measure_latency(round_trips: int) -> dict[str, float]:
    for _ in range(WARMUP_ROUND_TRIPS):
        round_trip_ns()
    return summarise_ns([round_trip_ns() for _ in range(round_trips)])


def run_trial(index: int, trials: int, tasks: int, round_trips: int) -> dict[str, Any]:
    label = f"celery trial {index}/{trials}"
    redis_client().flushdb()  # independent trials: no queued messages or results left from the last
    hostname = f"ironflow-bench-{os.getpid()}-{index}@{socket.gethostname()}"
    progress(f"{label}: starting worker ({POOL}, concurrency {CONCURRENCY})")
    with running_worker(hostname):
        for _ in range(WARMUP_ROUND_TRIPS):  # first tasks pay for connections and pool start-up
            round_trip_ns()
        throughput = measure_throughput(tasks)
        progress(
            f"{label}: throughput {throughput['count']} tasks in {throughput['seconds']:.2f} s "
            f"({throughput['per_second']:.0f}/s)"
        )
        latency = measure_latency(round_trips)
        progress(
            f"{label}: latency {latency['count']} round trips, p50 {latency['p50_ms']:.2f} ms, "
            f"p99 {latency['p99_ms']:.2f} ms"
        )
    return {"throughput": throughput, "latency": latency}


def versions() -> dict[str, str]:
    return {
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": redis.__version__,
        "python": platform.python_version(),
        "redis_server": str(redis_client().info("server")["redis_version"]),
    }


def settings(tasks: int, round_trips: int) -> dict[str, Any]:
    return {
        "pool": POOL,
        "concurrency": CONCURRENCY,
        "prefetch_multiplier": SETTINGS["worker_prefetch_multiplier"],
        "task_serializer": SETTINGS["task_serializer"],
        "result_serializer": SETTINGS["result_serializer"],
        "acks_late": SETTINGS["task_acks_late"],
        "broker_url": SETTINGS["broker_url"],
        "result_backend": SETTINGS["result_backend"],
        "worker_command": "python -m celery -A celery_app worker --pool prefork --concurrency 2 "
        "--loglevel warning --hostname <unique>",
        "tasks": tasks,
        "round_trips": round_trips,
        "warmup_round_trips": WARMUP_ROUND_TRIPS,
        "result_wait": "ResultSet.join_native (Redis pub/sub)",
        "percentiles": "nearest-rank",
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--round-trips", type=int, default=500)
    args = parser.parse_args(argv)
    if min(args.trials, args.tasks, args.round_trips) < 1:
        parser.error("--trials, --tasks and --round-trips must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        try:
            report = {
                "peer": "celery",
                "versions": versions(),
                "settings": settings(args.tasks, args.round_trips),
                "trials": [
                    run_trial(i, args.trials, args.tasks, args.round_trips) for i in range(1, args.trials + 1)
                ],
            }
        finally:
            redis_client().flushdb()  # leave DB 1 empty: the trials' results are of no use to anyone
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    # The contract is one line on stderr and a non-zero exit, whatever went wrong (Redis down, a task
    # timing out, a bad worker); the message names the exception type so it stays diagnosable.
    except Exception as exc:  # noqa: BLE001
        message = " ".join(str(exc).split())
        print(f"celery_bench: {type(exc).__name__}: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
