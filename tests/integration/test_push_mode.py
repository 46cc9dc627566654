"""Push mode end to end: the scheduler POSTs signed requests to an `ironflow.serve` app that uvicorn
serves on a real port, on both backends. What is specific to push lives here (signatures, request
segments, endpoint outages and the circuit breaker); the behaviour shared with pull mode is in
test_modes.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.routing import Mount

import ironflow
from ironflow.services.core.signing import sign
from ironflow.v1 import runs_pb2
from tests.conftest import unique_name
from tests.integration.conftest import LiveServer, running_server, server_settings
from tests.integration.push import SIGNING_KEY, CountingApp, push_functions, serving
from tests.integration.workers import lifecycle, system_events, wait_for_run
from tests.support import eventually, free_port

# A breaker that opens after two failures and probes again after a second, and short run backoffs,
# so an outage and its recovery fit in a test.
FAST_BREAKER = {
    "signing_key": SIGNING_KEY,
    "push_breaker_threshold": 2,
    "push_breaker_reset": timedelta(seconds=1),
    "push_retry_max": timedelta(seconds=1),
    "push_concurrency": 2,
}


@pytest.fixture(params=["embedded", "postgres_redis"])
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LiveServer]:
    settings = server_settings(request.param, tmp_path).model_copy(update=FAST_BREAKER)
    async with running_server(settings) as live:
        yield live


@pytest.fixture
async def client(server: LiveServer) -> AsyncIterator[ironflow.Client]:
    async with ironflow.Client(server.url) as client:
        yield client


async def test_consecutive_steps_share_one_request_and_a_sleep_ends_it(
    server: LiveServer, client: ironflow.Client
) -> None:
    event = unique_name("signup")

    @ironflow.function(id=unique_name("onboard"), triggers=[ironflow.on_event(event)], mode="push")
    async def onboard(ctx: ironflow.Context) -> list[str]:
        done = [await ctx.step.run(name, lambda n=name: n) for name in ("profile", "welcome", "crm")]
        await ctx.step.sleep("nudge", "1s")
        return done

    async with push_functions(server.url, [onboard]) as app:
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])
        posts = app.posts

    assert run.status == "completed", run.error
    assert run.output == ["profile", "welcome", "crm"]
    # One request ran three steps and yielded on the sleep; the next one finished the run.
    assert posts == 2
    steps = await client.get_run_steps(run.id)
    assert [(s.id, s.status) for s in steps] == [
        ("profile", "completed"),
        ("welcome", "completed"),
        ("crm", "completed"),
        ("nudge", "completed"),
    ]
    subjects = lifecycle(await system_events(server, run.id), run.id)
    assert subjects[:2] == ["created", "started"]
    assert subjects[-1] == "completed"


async def test_a_spent_time_budget_splits_the_run_into_several_requests(
    server: LiveServer, client: ironflow.Client
) -> None:
    event = unique_name("slow")
    calls: list[str] = []

    async def slow(name: str) -> str:
        calls.append(name)
        await asyncio.sleep(0.3)  # the step's own work: a third of a second
        return name

    # The function's timeout caps each request at 2 s (a 1.6 s budget): six 0.3 s steps do not fit.
    @ironflow.function(id=unique_name("slow"), triggers=[ironflow.on_event(event)], mode="push", timeout="2s")
    async def handler(ctx: ironflow.Context) -> list[str]:
        return [await ctx.step.run(f"s{i}", slow, f"s{i}") for i in range(6)]

    async with push_functions(server.url, [handler]) as app:
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])
        posts = app.posts

    assert run.status == "completed", run.error
    assert run.output == [f"s{i}" for i in range(6)]
    assert calls == [f"s{i}" for i in range(6)]  # no step ran twice across the requests
    assert posts >= 2
    steps = await client.get_run_steps(run.id)
    assert [s.id for s in steps] == [f"s{i}" for i in range(6)]
    assert all(s.attempt == 1 for s in steps)


async def test_requests_in_flight_per_endpoint_stay_within_the_concurrency_limit(
    server: LiveServer, client: ironflow.Client
) -> None:
    event = unique_name("busy")
    in_flight: list[int] = [0]
    seen: list[int] = []

    async def busy() -> None:
        in_flight[0] += 1
        seen.append(in_flight[0])
        await asyncio.sleep(0.2)  # long enough for the dispatcher to try sending more
        in_flight[0] -= 1

    @ironflow.function(id=unique_name("busy"), triggers=[ironflow.on_event(event)], mode="push")
    async def handler(ctx: ironflow.Context) -> None:
        await ctx.step.run("busy", busy)

    async with push_functions(server.url, [handler]):
        run_ids = [(await client.emit(event, {"n": n})).run_ids[0] for n in range(6)]
        runs = [await wait_for_run(client, run_id) for run_id in run_ids]

    assert [run.status for run in runs] == ["completed"] * 6
    assert len(seen) == 6
    assert max(seen) == 2  # the server's push_concurrency: two at a time, never more


async def test_a_wrong_or_missing_signature_is_refused_with_401_and_changes_nothing(
    server: LiveServer, client: ironflow.Client
) -> None:
    event = unique_name("guarded")
    calls: list[str] = []

    @ironflow.function(id=unique_name("guarded"), triggers=[ironflow.on_event(event)], mode="push")
    async def guarded(ctx: ironflow.Context) -> str:
        return str(await ctx.step.run("charge", lambda: calls.append("charge") or "charged"))

    # The server sends its runs to an address nobody answers, so only our requests reach the app.
    await client.register([guarded], endpoint_url=f"http://127.0.0.1:{free_port()}/never")
    run_id = (await client.emit(event, {})).run_ids[0]
    job = runs_pb2.Job(
        run_id=run_id, function_id=guarded.id, lease_token="forged", execution_sequence=1, attempt=1
    )
    body = json_format.MessageToJson(runs_pb2.PushRequest(job=job)).encode()

    app = ironflow.serve([guarded], signing_key=SIGNING_KEY)
    async with serving(app) as url, httpx.AsyncClient() as http:
        wrong = await http.post(
            url, content=body, headers={"X-Ironflow-Signature": sign("not-the-key", body)}
        )
        missing = await http.post(url, content=body)
        an_hour_old = sign(SIGNING_KEY, body, timestamp=int(time.time()) - 3600)
        stale = await http.post(url, content=body, headers={"X-Ironflow-Signature": an_hour_old})
        garbage = await http.post(url, content=body, headers={"X-Ironflow-Signature": "t=abc,v1=zz"})
        refused_calls = list(calls)
        # The control: signed with the right key, the same request runs the handler.
        signed = await http.post(url, content=body, headers={"X-Ironflow-Signature": sign(SIGNING_KEY, body)})

    for response in (wrong, missing, stale, garbage):
        assert response.status_code == 401
        assert response.json()["code"] == "unauthenticated"
    assert "does not match" in wrong.json()["message"]
    assert "missing" in missing.json()["message"]
    assert "old" in stale.json()["message"]
    assert refused_calls == []
    assert signed.status_code == 200
    assert signed.json()["completed"] == "charged"
    assert calls == ["charge"]
    # The app answers; only the server records. Nothing the refused requests carried reached the run.
    run = await client.get_run(run_id)
    assert run.status in ("queued", "running")
    assert run.output is None
    assert await client.get_run_steps(run_id) == []


async def test_the_app_names_what_is_wrong_with_other_requests() -> None:
    @ironflow.function(id="served", mode="push")
    async def served(ctx: ironflow.Context) -> str:
        return "ok"

    app = ironflow.serve([served], signing_key=SIGNING_KEY)
    unknown = json_format.MessageToJson(
        runs_pb2.PushRequest(job=runs_pb2.Job(run_id="r1", function_id="elsewhere", lease_token="t"))
    ).encode()

    def signed(body: bytes) -> dict[str, str]:
        return {"X-Ironflow-Signature": sign(SIGNING_KEY, body)}

    async with serving(app) as url, httpx.AsyncClient() as http:
        not_found = await http.post(url, content=unknown, headers=signed(unknown))
        bad_body = await http.post(url, content=b"{nope", headers=signed(b"{nope"))
        status = await http.get(url)
        wrong_method = await http.put(url, content=b"")

    assert not_found.status_code == 404
    assert not_found.json()["code"] == "not_found"
    assert "'elsewhere'" in not_found.json()["message"]
    assert "served" in not_found.json()["message"]
    assert bad_body.status_code == 400
    assert bad_body.json()["code"] == "invalid_argument"
    assert status.json() == {"status": "ok", "functions": ["served"]}
    assert wrong_method.status_code == 405


async def test_serve_refuses_what_cannot_work() -> None:
    @ironflow.function(id="pulled")
    async def pulled(ctx: ironflow.Context) -> None:
        return None

    with pytest.raises(ValueError, match="pull-mode function"):
        ironflow.serve([pulled])
    with pytest.raises(ValueError, match="at least one"):
        ironflow.serve([])


async def _circuit(client: ironflow.Client, function_id: str) -> str:
    return (await client.get_function(function_id)).circuit_state


async def test_runs_wait_while_the_endpoint_is_down_and_complete_once_it_is_back(
    server: LiveServer, client: ironflow.Client
) -> None:
    event = unique_name("outage")
    calls: list[str] = []

    @ironflow.function(id=unique_name("outage"), triggers=[ironflow.on_event(event)], mode="push")
    async def handler(ctx: ironflow.Context) -> str:
        return str(await ctx.step.run("work", calls.append, ctx.event.data["n"]) or ctx.event.data["n"])

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    await client.register([handler], endpoint_url=url)
    run_ids = [(await client.emit(event, {"n": str(n)})).run_ids[0] for n in range(3)]

    await eventually(lambda: _is(client, handler.id, "open"), within=20, what="the breaker to open")
    # Nothing ran and nothing failed: the runs keep their place and no retry attempt was spent.
    for run_id in run_ids:
        run = await client.get_run(run_id)
        assert run.status in ("queued", "running")
        assert run.attempt <= 1
        assert await client.get_run_steps(run_id) == []
    # After the reset delay the next request is a probe: the breaker shows half open until it goes.
    assert await _circuit(client, handler.id) in ("open", "half_open")

    app = CountingApp(ironflow.serve([handler], signing_key=SIGNING_KEY))
    async with serving(app, port=port):
        runs = [await wait_for_run(client, run_id, within=30) for run_id in run_ids]
        await eventually(lambda: _is(client, handler.id, "closed"), what="the breaker to close")

    assert [run.status for run in runs] == ["completed"] * 3
    assert sorted(run.output for run in runs) == ["0", "1", "2"]
    assert sorted(calls) == ["0", "1", "2"]
    for run in runs:
        (step,) = await client.get_run_steps(run.id)
        assert (step.status, step.attempt) == ("completed", 1)
    failures = [
        m.data
        for run_id in run_ids
        for m in await system_events(server, run_id)
        if m.subject.endswith(".delivery_failed")
    ]
    assert failures, "each failed delivery is announced on the run"
    assert {f["code"] for f in failures} == {"UNREACHABLE"}
    assert all(f["endpoint"] == url for f in failures)


async def test_an_endpoint_answering_5xx_opens_the_breaker_and_its_runs_wait(
    server: LiveServer, client: ironflow.Client
) -> None:
    event = unique_name("broken")
    answers: list[int] = []

    async def failing_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        answers.append(503)
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b"down for maintenance"})

    @ironflow.function(id=unique_name("broken"), triggers=[ironflow.on_event(event)], mode="push")
    async def handler(ctx: ironflow.Context) -> str:
        return "done"

    async with serving(failing_app) as url:
        await client.register([handler], endpoint_url=url)
        run_id = (await client.emit(event, {})).run_ids[0]
        await eventually(
            lambda: _is(client, handler.id, "open"), within=20, what="the breaker to open on 503 answers"
        )
    run = await client.get_run(run_id)
    assert run.status in ("queued", "running")
    assert answers
    assert set(answers) == {503}
    failures = [m.data for m in await system_events(server, run_id) if m.subject.endswith(".delivery_failed")]
    assert failures[0]["code"] == "HTTP_503"
    assert "down for maintenance" in failures[0]["message"]


async def _is(client: ironflow.Client, function_id: str, state: str) -> bool:
    return await _circuit(client, function_id) == state


async def test_a_mounted_app_is_reached_through_its_trailing_slash_redirect(
    server: LiveServer, client: ironflow.Client
) -> None:
    event = unique_name("mounted")

    @ironflow.function(id=unique_name("mounted"), triggers=[ironflow.on_event(event)], mode="push")
    async def handler(ctx: ironflow.Context) -> str:
        return str(await ctx.step.run("hello", lambda: "hi"))

    push_app = ironflow.serve([handler], signing_key=SIGNING_KEY)
    app = Starlette(routes=[Mount("/api/ironflow", app=push_app)])
    async with serving(app) as url:
        # Registered without the trailing slash: Starlette answers 307 to `/api/ironflow/`.
        await client.register([handler], endpoint_url=f"{url}api/ironflow")
        run = await wait_for_run(client, (await client.emit(event, {})).run_ids[0])

    assert (run.status, run.output) == ("completed", "hi")
    assert await _circuit(client, handler.id) == "closed"
