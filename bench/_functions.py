"""The functions the Ironflow benchmarks run; the peers' harnesses run the same shapes.

- `bench-two-steps` (event `bench.two`): two no-op steps, the throughput workload.
- `bench-two-steps-limited` (event `bench.two.limited`): the same two steps under a concurrency limit
  per customer that never binds (10 customers x 100 slots, more than the workers take at once), so
  comparing it with `bench-two-steps` shows what the limit's bookkeeping costs.
- `bench-one-step` (event `bench.one`): one step that returns `time.perf_counter_ns()` as it starts,
  so the emitting process can tell emit -> step start from emit -> completed. `perf_counter_ns` is
  CLOCK_MONOTONIC on Linux, so readings from different processes on one machine compare.
"""

from __future__ import annotations

import time

import ironflow

TWO_STEPS_EVENT = "bench.two"
LIMITED_EVENT = "bench.two.limited"
LIMITED_CUSTOMERS = 10
ONE_STEP_EVENT = "bench.one"


def noop() -> None:
    return None


def started_at_ns() -> int:
    return time.perf_counter_ns()


@ironflow.function(id="bench-two-steps", triggers=[ironflow.on_event(TWO_STEPS_EVENT)])
async def two_steps(ctx: ironflow.Context) -> None:
    await ctx.step.run("first", noop)
    await ctx.step.run("second", noop)


@ironflow.function(
    id="bench-two-steps-limited",
    triggers=[ironflow.on_event(LIMITED_EVENT)],
    concurrency=[ironflow.Concurrency(limit=100, key="event.data.customer")],
)
async def two_steps_limited(ctx: ironflow.Context) -> None:
    await ctx.step.run("first", noop)
    await ctx.step.run("second", noop)


@ironflow.function(id="bench-one-step", triggers=[ironflow.on_event(ONE_STEP_EVENT)])
async def one_step(ctx: ironflow.Context) -> int:
    started: int = await ctx.step.run("start", started_at_ns)
    return started


ALL_FUNCTIONS = [two_steps, two_steps_limited, one_step]
