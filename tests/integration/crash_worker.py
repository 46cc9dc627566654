"""A worker process for crash tests, with handlers whose every side effect is logged.

Run as `python -m tests.integration.crash_worker SERVER_URL TRANSPORT FUNCTION_ID EVENT LOG GATE [SHAPE]`.
Every step appends its name to LOG when its side effect happens, so a test can count executions.
Shapes:
- `five` (default): five steps; step 3 waits until the GATE file exists (a test kills the process there).
- `map`: one step, then a map over six items run concurrently; item 3 waits for the GATE.
- `sleep`: a step, a 2 s sleep, a step.
- `wait`: a step, then a wait for `<EVENT>.reply` whose `data.key` equals the trigger's, then a step.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import ironflow


def build(function_id: str, event: str, log: Path, gate: Path, shape: str = "five") -> ironflow.Function:
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

    @ironflow.function(id=function_id, triggers=[ironflow.on_event(event)])
    async def mapped(ctx: ironflow.Context) -> list[str]:
        await ctx.step.run("before", side_effect, "before")

        async def item(number: int) -> str:
            if number == 3:
                return await gated(f"item{number}")
            return side_effect(f"item{number}")

        items: list[str] = await ctx.step.map("items", list(range(6)), item)
        return items

    @ironflow.function(id=function_id, triggers=[ironflow.on_event(event)])
    async def sleeper(ctx: ironflow.Context) -> list[str]:
        done = [await ctx.step.run("before", side_effect, "before")]
        await ctx.step.sleep("nap", "2s")
        done.append(await ctx.step.run("after", side_effect, "after"))
        return done

    @ironflow.function(id=function_id, triggers=[ironflow.on_event(event)])
    async def waiter(ctx: ironflow.Context) -> dict[str, object]:
        await ctx.step.run("before", side_effect, "before")
        reply = await ctx.step.wait_for_event(
            "reply", event=f"{event}.reply", match="async.data.key == event.data.key", timeout="60s"
        )
        await ctx.step.run("after", side_effect, "after")
        return {"reply": reply.data if reply is not None else None}

    return {"five": five_steps, "map": mapped, "sleep": sleeper, "wait": waiter}[shape]


def main() -> None:
    server_url, transport, function_id, event, log, gate = sys.argv[1:7]
    shape = sys.argv[7] if len(sys.argv) > 7 else "five"
    function = build(function_id, event, Path(log), Path(gate), shape)
    worker = ironflow.Worker(server_url, [function], transport=transport)  # type: ignore[arg-type]
    asyncio.run(worker.run())


if __name__ == "__main__":
    main()
