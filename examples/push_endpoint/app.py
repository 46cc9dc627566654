r"""Push endpoint: Ironflow calls the app over HTTP to run its functions; no worker process at all.

`ironflow.serve(...)` is an ASGI app. Mounted at /api/ironflow, it receives the server's signed POSTs,
checks the signature, runs the handler's steps and answers with what happened. Several steps in a row
run in one request; `step.sleep` ends the request, and the server calls again when the sleep is over.
That makes it a fit for platforms that scale HTTP apps (serverless, autoscaled containers).

    export IRONFLOW_SIGNING_KEY=$(python -c "import secrets; print(secrets.token_hex(32))")
    ironflow serve                                                          # terminal 1, same key
    IRONFLOW_ENDPOINT_URL=http://127.0.0.1:8000/api/ironflow \
      uvicorn examples.push_endpoint.app:app --port 8000                    # terminal 2
    ironflow emit user.signed_up --data '{"userId": "u_1", "email": "ada@example.com"}'
    ironflow runs steps <run id>    # create-profile, send-welcome, nudge-delay (2s), send-tips
    ironflow functions get onboard-user                                     # mode push, circuit_state

With IRONFLOW_ENDPOINT_URL set, the app registers its functions at startup, which is handy locally.
Production deploys usually register from CI once the new version is live instead:

    ironflow functions register examples.push_endpoint.app:functions \
      --endpoint-url https://app.example.com/api/ironflow

Without IRONFLOW_SIGNING_KEY the endpoint accepts unsigned requests: fine on a laptop, never in
production. With it, a request whose signature is missing or wrong is refused with 401.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import ironflow

# -- stand-ins for the account and mail services (deterministic: same user, same ids) ----------


def create_profile(user_id: str, email: str) -> dict[str, Any]:
    return {"profile_id": f"prof_{user_id}", "email": email}


async def send_email(to: str, template: str) -> dict[str, Any]:
    return {"message_id": f"msg_{template}_{to}", "template": template}


@ironflow.function(
    id="onboard-user",
    triggers=[ironflow.on_event("user.signed_up")],
    retry=ironflow.Retry(max_attempts=3, initial_delay="1s"),
    mode="push",
)
async def onboard_user(ctx: ironflow.Context) -> dict[str, Any]:
    user = ctx.event.data
    # Consecutive steps share one request while the push timeout leaves room.
    profile = await ctx.step.run("create-profile", create_profile, user["userId"], user["email"])
    welcome = await ctx.step.run("send-welcome", send_email, user["email"], "welcome")
    # Ends this request; the server calls again once the sleep is over (no connection held meanwhile).
    await ctx.step.sleep("nudge-delay", "2s")
    tips = await ctx.step.run("send-tips", send_email, user["email"], "tips")
    return {
        "user": user["userId"],
        "profile": profile["profile_id"],
        "emails": [welcome["message_id"], tips["message_id"]],
    }


# What `ironflow functions register examples.push_endpoint.app:functions` registers.
functions = [onboard_user]

ironflow_app = ironflow.serve(functions=functions, signing_key=os.environ.get("IRONFLOW_SIGNING_KEY"))


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    endpoint_url = os.environ.get("IRONFLOW_ENDPOINT_URL")
    if endpoint_url:
        # Registering an unchanged definition keeps its version, so doing it on every start is safe.
        async with ironflow.Client(os.environ.get("IRONFLOW_SERVER_URL")) as client:
            await client.register(functions, endpoint_url=endpoint_url)
    try:
        yield
    finally:
        # A mounted app gets no lifespan events of its own: close its client (for step.publish) here.
        await ironflow_app.close()


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "functions": [function.id for function in ironflow_app.functions]})


app = Starlette(
    routes=[
        Route("/health", health),
        # A Mount alone answers its bare prefix (the URL registered above) with a redirect to
        # /api/ironflow/, which costs Ironflow a second round trip: the exact path gets a route too.
        Route("/api/ironflow", ironflow_app),
        Mount("/api/ironflow", app=ironflow_app),
    ],
    lifespan=lifespan,
)
