"""Push-mode functions for `ironflow functions register` tests, imported by TARGET like a user's app.

Fixed ids are safe: every test gets its own server and database.
"""

from __future__ import annotations

from typing import Any

import ironflow


@ironflow.function(id="push-targets-receipt", triggers=[ironflow.on_event("order.paid")], mode="push")
async def send_receipt(ctx: ironflow.Context) -> dict[str, Any]:
    return {"sent": ctx.event.data.get("orderId")}


@ironflow.function(id="push-targets-invoice", triggers=[ironflow.on_event("order.shipped")], mode="push")
async def make_invoice(ctx: ironflow.Context) -> dict[str, Any]:
    return {"invoiced": ctx.event.data.get("orderId")}


@ironflow.function(id="push-targets-pull", triggers=[ironflow.on_event("order.placed")])
async def pull_only(ctx: ironflow.Context) -> None:
    return None


FUNCTIONS = [send_receipt, make_invoice]


class App:
    """Stands in for the ASGI app from ironflow.serve(...): all the CLI needs is `.functions`."""

    functions = (send_receipt, make_invoice)


app = App()
NOT_FUNCTIONS = 42
