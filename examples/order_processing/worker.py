"""Order processing: a durable function with four steps, run by a pull worker.

    ironflow serve                                   # terminal 1: the server
    python examples/order_processing/worker.py       # terminal 2: this worker
    ironflow emit order.placed --data '{"orderId": "ord_1", "total": 120, "items": ["book", "pen"]}'
    ironflow runs list                               # watch the run complete
    ironflow runs steps <run id>

Kill the worker in the middle of a run and start it again: completed steps are not run again.
"""

from __future__ import annotations

import asyncio
import logging
import random

import ironflow


def reserve_stock(items: list[str]) -> dict[str, object]:
    # A plain function: Ironflow runs it in a thread so it cannot block the worker.
    return {"reservation_id": f"res_{random.randrange(10**6)}", "items": items}


async def charge_card(order_id: str, total: float) -> dict[str, object]:
    # Flaky on purpose: a failed attempt is retried with backoff; its output is stored once it succeeds.
    if random.random() < 0.3:
        raise ConnectionError("payment provider timed out")
    if total <= 0:
        raise ironflow.NonRetryableError(f"order {order_id} has nothing to charge")
    return {"charge_id": f"ch_{order_id}", "amount": total}


async def ship(order_id: str, reservation_id: str) -> str:
    await asyncio.sleep(0.5)  # stands in for a call to the carrier
    return f"trk_{order_id}_{reservation_id}"


@ironflow.function(
    id="process-order",
    triggers=[ironflow.on_event("order.placed", if_="event.data.total > 0")],
    retry=ironflow.Retry(max_attempts=5, initial_delay="1s", factor=2.0, max_delay="30s"),
    timeout="5m",
)
async def process_order(ctx: ironflow.Context) -> dict[str, object]:
    order = ctx.event.data
    reservation = await ctx.step.run("reserve-stock", reserve_stock, order.get("items", []))
    charge = await ctx.step.run("charge-card", charge_card, order["orderId"], order["total"])
    tracking = await ctx.step.run("ship", ship, order["orderId"], reservation["reservation_id"])
    await ctx.step.run("notify", lambda: ctx.logger.info("order %s shipped: %s", order["orderId"], tracking))
    return {"order": order["orderId"], "charge": charge["charge_id"], "tracking": tracking}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(ironflow.Worker(functions=[process_order]).run())
