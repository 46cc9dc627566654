"""A worker process for crash tests: five steps that log each execution, the third behind a gate.

Run as `python -m tests.integration.crash_worker SERVER_URL TRANSPORT FUNCTION_ID EVENT LOG GATE`.
Every step appends its name to LOG when its side effect happens, so a test can count executions.
Step 3 waits until the GATE file exists before its side effect: a test kills the process there.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import ironflow


def build(function_id: str, event: str, log: Path, gate: Path) -> ironflow.Function:
    def side_effect(step: str) -> str:
        with log.open("a") as out:
            out.write(step + "\n")
        return step

    async def gated(step: str) -> str:
        # Async on purpose: a cancelled job must stop here, where a thread would carry on. The gate is
        # another process's file, so there is no event to await; this workload polls for it.
        while not await asyncio.to_thread(gate.exists):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return side_effect(step)

    @ironflow.function(id=function_id, triggers=[ironflow.on_event(event)])
    async def five_steps(ctx: ironflow.Context) -> list[str]:
        done = [await ctx.step.run("step1", side_effect, "step1")]
        done.append(await ctx.step.run("step2", side_effect, "step2"))
        done.append(await ctx.step.run("step3", gated, "step3"))
        done.append(await ctx.step.run("step4", side_effect, "step4"))
        done.append(await ctx.step.run("step5", side_effect, "step5"))
        return done

    return five_steps


def main() -> None:
    server_url, transport, function_id, event, log, gate = sys.argv[1:7]
    function = build(function_id, event, Path(log), Path(gate))
    worker = ironflow.Worker(server_url, [function], transport=transport)  # type: ignore[arg-type]
    asyncio.run(worker.run())


if __name__ == "__main__":
    main()
