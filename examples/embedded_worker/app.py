r"""Embedded worker: an ordinary web app that also runs Ironflow functions, in its own event loop.

The app's lifespan starts an `ironflow.Worker` next to the HTTP server and stops it on shutdown
(`await worker.stop()` lets in-flight jobs finish first). The worker dials out to Ironflow exactly like
a stand-alone pull worker; nothing has to reach the app from outside for its functions to run.

    ironflow serve                                          # terminal 1: the server
    uvicorn examples.embedded_worker.app:app --port 8000    # terminal 2: this app
    curl http://localhost:8000/health                       # {"status":"ok","worker":"connected"}
    curl -X POST http://localhost:8000/orders -H "Content-Type: application/json" \
      -d '{"orderId": "ord_1", "items": ["book", "pen"], "total": 42.5}'
    # {"event_id":"evt_...","run_ids":["run_..."]}
    ironflow runs steps <run id>                            # reserve-stock, charge-card, send-confirmation

Set IRONFLOW_SERVER_URL when the server is not on http://localhost:9123. Ctrl-C or SIGTERM stops
uvicorn, which runs the lifespan shutdown: the worker drains, then the app exits.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import ironflow

# -- stand-ins for the inventory and payment services ------------------------------------------
# Deterministic on purpose: the same order always gets the same ids, so a replay changes nothing.


def reserve_stock(order_id: str, items: list[str]) -> dict[str, Any]:
    return {"reservation_id": f"res_{order_id}", "items": items}


async def charge_card(order_id: str, total: float) -> dict[str, Any]:
    if total <= 0:
        raise ironflow.NonRetryableError(f"order {order_id} has nothing to charge")
    return {"charge_id": f"ch_{order_id}", "amount": total}


async def send_confirmation(order_id: str, charge_id: str) -> str:
    return f"confirmation for {order_id} ({charge_id}) sent"


@ironflow.function(
    id="accept-order",
    triggers=[ironflow.on_event("order.placed")],
    retry=ironflow.Retry(max_attempts=3, initial_delay="1s"),
)
async def accept_order(ctx: ironflow.Context) -> dict[str, Any]:
    order = ctx.event.data
    reservation = await ctx.step.run("reserve-stock", reserve_stock, order["orderId"], order.get("items", []))
    charge = await ctx.step.run("charge-card", charge_card, order["orderId"], order.get("total", 0))
    message = await ctx.step.run(
        "send-confirmation", send_confirmation, order["orderId"], charge["charge_id"]
    )
    return {
        "order": order["orderId"],
        "reservation": reservation["reservation_id"],
        "charge": charge["charge_id"],
        "confirmation": message,
    }


# -- the web app ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    server_url = os.environ.get("IRONFLOW_SERVER_URL")  # None: http://localhost:9123
    worker = ironflow.Worker(server_url, functions=[accept_order])
    client = ironflow.Client(server_url)
    app.state.worker = worker
    app.state.client = client
    # start() returns at once: the worker connects (and reconnects) in the background of this loop.
    worker.start()
    try:
        yield
    finally:
        await worker.stop()  # stop taking jobs, finish the ones in flight, disconnect
        await client.close()


async def health(request: Request) -> JSONResponse:
    worker: ironflow.Worker = request.app.state.worker
    return JSONResponse(
        {"status": "ok", "worker": "connected" if worker.connected.is_set() else "connecting"}
    )


async def place_order(request: Request) -> JSONResponse:
    try:
        order = await request.json()
    except ValueError:
        return JSONResponse({"code": "invalid_argument", "message": "body: not JSON"}, status_code=400)
    if not isinstance(order, dict) or not isinstance(order.get("orderId"), str):
        return JSONResponse(
            {"code": "invalid_argument", "message": "body: a JSON object with a string orderId"},
            status_code=400,
        )
    client: ironflow.Client = request.app.state.client
    try:
        result = await client.emit("order.placed", order, idempotency_key=order["orderId"])
    except ironflow.IronflowError as exc:
        status = 400 if exc.code == "INVALID_ARGUMENT" else 503
        return JSONResponse({"code": exc.code.lower(), "message": exc.message}, status_code=status)
    return JSONResponse({"event_id": result.event_id, "run_ids": list(result.run_ids)}, status_code=202)


app = Starlette(
    routes=[Route("/health", health), Route("/orders", place_order, methods=["POST"])],
    lifespan=lifespan,
)
