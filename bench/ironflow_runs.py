"""Runs end to end: throughput, sequential latency, the scaling curve and memory over a steady run.

Every scenario drives a real deployment (`bench/_deploy.py`) from this process through the public
SDK client, with workers in their own processes.

- throughput: `runs` two-step runs emitted as fast as one client can (up to `EMIT_CONCURRENCY`
  emits in flight), from the first emit to the last run's `ended_at`.
- latency: sequential one-step runs with `emit_sync`: emit -> completed as the client sees it, and
  emit -> step start (the step returns its own start time).
- scaling: two-step runs offered open loop at a fixed rate (each emit is sent on schedule whether or
  not earlier ones answered) for `SCALING_SECONDS`; reports achieved throughput and p99 of emit ->
  ended, of the emit call, and of the queue wait (created -> started), doubling the rate past the
  given loads while throughput keeps up.
- steady: a fixed offered load for minutes, sampling the server's RSS, to show it stays flat.
- concurrency: the throughput workload against the same two steps under a concurrency limit per
  customer that never binds, trials alternating in one deployment: the limit's scheduling overhead.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ironflow
from bench._common import across, latency_summary
from bench._deploy import Deployment, Workers, deployment
from bench._functions import (
    LIMITED_CUSTOMERS,
    LIMITED_EVENT,
    ONE_STEP_EVENT,
    TWO_STEPS_EVENT,
    one_step,
    two_steps,
    two_steps_limited,
)

EMIT_CONCURRENCY = 64
WORKER_CONCURRENCY = 100
WARMUP_RUNS = 20
# Each point offers the rate for this long (up to the cap); past saturation the queue only grows, and
# the achieved rate shows in fewer runs.
SCALING_SECONDS = 5.0
SCALING_MAX_RUNS = 1500
# A load "holds" while the runs finish at >= 90% of the offered rate.
HOLDS_AT = 0.9
ENDED_WITHIN_S = 600.0

Step = Callable[[str], None]


def _since() -> datetime:
    # Rows are stamped by the server's clock, which is this machine's: a small margin covers rounding.
    return datetime.now(UTC) - timedelta(milliseconds=5)


async def _warm_up(client: ironflow.Client, event: str) -> None:
    for index in range(WARMUP_RUNS):
        await client.emit_sync(event, {"warmup": index})


# -- throughput ------------------------------------------------------------------------------------


async def _emit_all(client: ironflow.Client, event: str, count: int) -> tuple[float, float]:
    """Emit `count` events with up to EMIT_CONCURRENCY in flight; (first emit, last answer) Unix."""
    next_index = 0
    first = time.time()

    async def emitter() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            await client.emit(event, {"i": index, "customer": f"c{index % LIMITED_CUSTOMERS}"})

    await asyncio.gather(*(emitter() for _ in range(EMIT_CONCURRENCY)))
    return first, time.time()


async def throughput_trial(
    target: Deployment,
    client: ironflow.Client,
    count: int,
    *,
    event: str = TWO_STEPS_EVENT,
    function_id: str = two_steps.id,
) -> dict[str, Any]:
    since = _since()
    cpu_before = target.cpu_seconds()
    first, emitted = await _emit_all(client, event, count)
    failed = await target.reader.wait_ended(function_id, since, count, within=ENDED_WITHIN_S)
    last_end = max(run.ended or 0.0 for run in await target.reader.times(function_id, since))
    seconds = last_end - first
    return {
        "runs": count,
        "failed": failed,
        "seconds": round(seconds, 3),
        "runs_per_s": round(count / seconds, 1),
        "emits_per_s": round(count / (emitted - first), 1),
        "server_cpu_s": round(target.cpu_seconds() - cpu_before, 2),
        **{f"server_{key}": value for key, value in target.memory().items() if key != "processes"},
    }


async def throughput(
    backend: str, workers: int, count: int, *, trials: int, tmp: Path, step: Step
) -> dict[str, Any]:
    async with (
        deployment(backend, tmp) as target,
        Workers(target.url, workers, WORKER_CONCURRENCY, tmp),
        ironflow.Client(target.url) as client,
    ):
        await _warm_up(client, TWO_STEPS_EVENT)
        results = []
        for trial in range(trials):
            step(f"throughput {backend}, {workers} worker(s), trial {trial + 1}/{trials}")
            results.append(await throughput_trial(target, client, count))
        memory = target.memory()
    return {
        "backend": backend,
        "workers": workers,
        "worker_concurrency": WORKER_CONCURRENCY,
        "runs": count,
        "trials": results,
        "across": across(results),
        "server_memory": memory,
    }


# -- concurrency overhead --------------------------------------------------------------------------


async def concurrency_overhead(
    backend: str, count: int, *, trials: int, tmp: Path, step: Step
) -> dict[str, Any]:
    """Plain and concurrency-limited two-step runs, trials alternating (which goes first swaps every
    trial) in one deployment with one worker process, so both see the same server state."""
    shapes = {
        "plain": (TWO_STEPS_EVENT, two_steps.id),
        "limited": (LIMITED_EVENT, two_steps_limited.id),
    }
    found: dict[str, list[dict[str, Any]]] = {"plain": [], "limited": []}
    async with (
        deployment(backend, tmp) as target,
        Workers(target.url, 1, WORKER_CONCURRENCY, tmp),
        ironflow.Client(target.url) as client,
    ):
        await _warm_up(client, TWO_STEPS_EVENT)
        await _warm_up(client, LIMITED_EVENT)
        for trial in range(trials):
            order = ("plain", "limited") if trial % 2 == 0 else ("limited", "plain")
            for shape in order:
                step(f"concurrency overhead {backend}, {shape}, trial {trial + 1}/{trials}")
                event, function_id = shapes[shape]
                result = await throughput_trial(target, client, count, event=event, function_id=function_id)
                result["server_cpu_ms_per_run"] = round(result["server_cpu_s"] * 1000 / count, 3)
                found[shape].append(result)
    plain = statistics.median(t["runs_per_s"] for t in found["plain"])
    limited = statistics.median(t["runs_per_s"] for t in found["limited"])
    plain_cpu = statistics.median(t["server_cpu_ms_per_run"] for t in found["plain"])
    limited_cpu = statistics.median(t["server_cpu_ms_per_run"] for t in found["limited"])
    return {
        "backend": backend,
        "runs": count,
        "limit": f"{LIMITED_CUSTOMERS} customers x 100 slots",
        "plain": {"trials": found["plain"], "across": across(found["plain"])},
        "limited": {"trials": found["limited"], "across": across(found["limited"])},
        "throughput_ratio": round(limited / plain, 3),
        "cpu_overhead_ms_per_run": round(limited_cpu - plain_cpu, 3),
    }


# -- latency ---------------------------------------------------------------------------------------


async def latency_trial(client: ironflow.Client, count: int) -> dict[str, Any]:
    completed: list[float] = []
    step_start: list[float] = []
    for index in range(count):
        started = time.perf_counter_ns()
        [result] = await client.emit_sync(ONE_STEP_EVENT, {"i": index})
        ended = time.perf_counter_ns()
        if result.status != "completed":
            raise RuntimeError(f"run {result.run_id} ended {result.status}: {result.error}")
        completed.append((ended - started) / 1e6)
        step_start.append((int(result.output) - started) / 1e6)
    return {"completed": latency_summary(completed), "step_start": latency_summary(step_start)}


async def latency(backend: str, count: int, trials: int, tmp: Path, step: Step) -> dict[str, Any]:
    async with (
        deployment(backend, tmp) as target,
        Workers(target.url, 1, WORKER_CONCURRENCY, tmp),
        ironflow.Client(target.url) as client,
    ):
        await _warm_up(client, ONE_STEP_EVENT)
        results = []
        for trial in range(trials):
            step(f"latency {backend}, trial {trial + 1}/{trials}")
            results.append(await latency_trial(client, count))
    return {
        "backend": backend,
        "runs": count,
        "trials": results,
        "across": {key: across([trial[key] for trial in results]) for key in ("completed", "step_start")},
    }


# -- scaling ---------------------------------------------------------------------------------------


async def _offer(
    client: ironflow.Client, rate: float, count: int
) -> tuple[dict[str, float], list[float], list[str]]:
    """Emit `count` events at `rate` per second on a fixed schedule, each in its own task so a slow
    answer does not delay the next send. Returns {run_id: emit Unix time}, each accepted call's ms
    and the error codes of refused ones."""
    loop = asyncio.get_running_loop()
    emitted_at: dict[str, float] = {}
    call_ms: list[float] = []
    refused: list[str] = []

    async def send(index: int) -> None:
        sent_wall, sent = time.time(), time.perf_counter_ns()
        try:
            result = await client.emit(TWO_STEPS_EVENT, {"i": index})
        except ironflow.IronflowError as exc:
            # Past saturation the front door or the server may refuse (502, UNAVAILABLE): counted,
            # since an overloaded system that sheds load is part of the curve.
            refused.append(exc.code)
            return
        call_ms.append((time.perf_counter_ns() - sent) / 1e6)
        for run_id in result.run_ids:
            emitted_at[run_id] = sent_wall

    start = loop.time()
    tasks = []
    for index in range(count):
        delay = start + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the sender on its schedule, not waiting for a result
        tasks.append(asyncio.create_task(send(index)))
    await asyncio.gather(*tasks)
    return emitted_at, call_ms, refused


async def scaling_point(target: Deployment, client: ironflow.Client, rate: float) -> dict[str, Any]:
    count = min(int(rate * SCALING_SECONDS), SCALING_MAX_RUNS)
    since = _since()
    emitted_at, call_ms, refused = await _offer(client, rate, count)
    await target.reader.wait_ended(two_steps.id, since, len(emitted_at), within=ENDED_WITHIN_S)
    rows = [run for run in await target.reader.times(two_steps.id, since) if run.run_id in emitted_at]
    first = min(emitted_at.values())
    last_end = max(run.ended or 0.0 for run in rows)
    end_to_end = [((run.ended or 0.0) - emitted_at[run.run_id]) * 1000 for run in rows]
    queued = [((run.started or run.created) - run.created) * 1000 for run in rows]
    achieved = len(rows) / (last_end - first)
    return {
        "offered_per_s": rate,
        "runs": len(rows),
        "refused": len(refused),
        "achieved_per_s": round(achieved, 1),
        "p50_ms": latency_summary(end_to_end)["p50_ms"],
        "p99_ms": latency_summary(end_to_end)["p99_ms"],
        "emit_call_p99_ms": latency_summary(call_ms)["p99_ms"],
        "queue_wait_p99_ms": latency_summary(queued)["p99_ms"],
    }


async def scaling(
    backend: str, loads: Sequence[float], trials: int, tmp: Path, step: Step, *, max_load: float
) -> dict[str, Any]:
    points = []
    async with (
        deployment(backend, tmp) as target,
        Workers(target.url, 1, WORKER_CONCURRENCY, tmp),
        ironflow.Client(target.url) as client,
    ):
        await _warm_up(client, TWO_STEPS_EVENT)
        rate_list = list(loads)
        index = 0
        while index < len(rate_list):
            rate = rate_list[index]
            results = []
            for trial in range(trials):
                step(f"scaling {backend}, {rate:g} runs/s offered, trial {trial + 1}/{trials}")
                results.append(await scaling_point(target, client, rate))
            summary = across(results)
            points.append({"offered_per_s": rate, "trials": results, "across": summary})
            if index == len(rate_list) - 1 and _holds(points[-1]) and rate * 2 <= max_load:
                rate_list.append(rate * 2)  # still keeping up: offer more
            index += 1
    saturation = next(
        (
            p["offered_per_s"]
            for p in points
            if p["across"]["achieved_per_s"]["median"] < HOLDS_AT * p["offered_per_s"]
        ),
        None,
    )
    return {
        "backend": backend,
        "seconds_per_point": SCALING_SECONDS,
        "points": points,
        "saturates_at": saturation,
    }


def _holds(point: dict[str, Any]) -> bool:
    return bool(point["across"]["achieved_per_s"]["median"] >= HOLDS_AT * point["offered_per_s"])


# -- steady run: memory ----------------------------------------------------------------------------


async def steady(backend: str, rate: float, minutes: float, tmp: Path, step: Step) -> dict[str, Any]:
    """Offer `rate` two-step runs per second for `minutes`, sampling server RSS every 5 s."""
    samples: list[dict[str, float]] = []
    async with (
        deployment(backend, tmp) as target,
        Workers(target.url, 1, WORKER_CONCURRENCY, tmp),
        ironflow.Client(target.url) as client,
    ):
        await _warm_up(client, TWO_STEPS_EVENT)
        since = _since()
        started = time.monotonic()
        duration = minutes * 60
        count = int(rate * duration)

        async def sample() -> None:
            while True:
                elapsed = time.monotonic() - started
                samples.append({"seconds": round(elapsed, 1), "rss_mib": target.memory()["rss_mib"]})
                step(f"steady {backend}: {elapsed / 60:.1f} of {minutes:g} min")
                await asyncio.sleep(5.0)  # the sampling period

        sampler = asyncio.create_task(sample())
        try:
            emitted_at, _, _ = await _offer(client, rate, count)
            failed = await target.reader.wait_ended(
                two_steps.id, since, len(emitted_at), within=ENDED_WITHIN_S
            )
        finally:
            sampler.cancel()
        memory = target.memory()
    return {
        "backend": backend,
        "offered_per_s": rate,
        "minutes": minutes,
        "runs": len(emitted_at),
        "failed": failed,
        "samples": samples,
        "growth": _growth(samples),
        "server_memory": memory,
    }


def _growth(samples: Sequence[dict[str, float]]) -> dict[str, float]:
    """RSS after the first minute (warm caches, full pools) versus the end, and fitted slopes.

    The slope over the last third tells a leak from bounded buffers filling (the in-process
    firehose keeps `firehose_retention` messages): a leak keeps its slope to the end.
    """
    settled = [sample for sample in samples if sample["seconds"] >= 60] or list(samples)
    last_third = settled[len(settled) * 2 // 3 :]
    rss = [sample["rss_mib"] for sample in settled]
    return {
        "rss_at_1_min_mib": rss[0],
        "rss_at_end_mib": rss[-1],
        "growth_mib": round(rss[-1] - rss[0], 1),
        "slope_mib_per_min": _slope(settled),
        "last_third_slope_mib_per_min": _slope(last_third),
    }


def _slope(samples: Sequence[dict[str, float]]) -> float:
    if len(samples) < 2:
        return 0.0
    minutes = [sample["seconds"] / 60 for sample in samples]
    rss = [sample["rss_mib"] for sample in samples]
    return round(statistics.linear_regression(minutes, rss).slope, 3)


__all__ = ["latency", "one_step", "scaling", "steady", "throughput"]
