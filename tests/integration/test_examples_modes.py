"""The embedded-worker and push-endpoint examples as users run them: `ironflow serve` and the example app
under uvicorn, each a real process on a real port, talking over real sockets. Each test ends the app with
SIGTERM, as a process manager would, and expects a clean exit: uvicorn runs the lifespan shutdown.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

import ironflow
from tests.support import eventually, free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Process:
    """A child process whose stdout and stderr go to files (a full pipe would block it)."""

    name: str
    process: asyncio.subprocess.Process
    stdout: Path
    stderr: Path

    def output(self) -> str:
        text = [path.read_text(errors="replace") for path in (self.stdout, self.stderr) if path.exists()]
        return f"--- {self.name} output ---\n" + "\n".join(text)

    def check_alive(self) -> None:
        if self.process.returncode is not None:
            raise AssertionError(f"{self.name} exited early with {self.process.returncode}\n{self.output()}")

    async def terminate(self, within: float = 15.0) -> int:
        """SIGTERM, then the exit code; fails if the process has not exited within `within` seconds."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout=within)
        except TimeoutError:
            raise AssertionError(
                f"{self.name} still running {within}s after SIGTERM\n{self.output()}"
            ) from None

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


def _environment(extra: Mapping[str, str]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("IRONFLOW_")}
    env.update(extra)
    return env


async def _spawn(name: str, args: list[str], *, cwd: Path, env: Mapping[str, str], logs: Path) -> Process:
    stdout, stderr = logs / f"{name}.out", logs / f"{name}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *args, cwd=cwd, env=_environment(env), stdout=out, stderr=err
        )
    return Process(name, process, stdout, stderr)


@asynccontextmanager
async def ironflow_server(tmp: Path, env: Mapping[str, str] | None = None) -> AsyncIterator[str]:
    """`ironflow serve` on a free port and a fresh SQLite file; yields its URL once /ready answers."""
    port = free_port()
    server = await _spawn(
        "ironflow-serve",
        [
            "-m",
            "ironflow.services.server",
            "serve",
            "--port",
            str(port),
            "--database-url",
            f"sqlite+aiosqlite:///{tmp / 'ironflow.db'}",
        ],
        cwd=tmp,
        env=env or {},
        logs=tmp,
    )
    url = f"http://127.0.0.1:{port}"

    async def ready() -> bool:
        server.check_alive()
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{url}/ready")).status_code == 200

    try:
        await eventually(ready, within=30, what="ironflow serve to become ready")
        yield url
    finally:
        try:
            await server.terminate(within=30)
        finally:
            await server.kill()


async def start_app(target: str, port: int, tmp: Path, env: Mapping[str, str]) -> tuple[Process, str]:
    """`python -m uvicorn <target>` from the repository root, as the examples' docstrings say."""
    app = await _spawn(
        "uvicorn",
        ["-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        logs=tmp,
    )
    return app, f"http://127.0.0.1:{port}"


async def wait_for_health(app: Process, url: str, **expected: object) -> dict[str, object]:
    async def healthy() -> dict[str, object] | None:
        app.check_alive()
        async with httpx.AsyncClient() as http:
            response = await http.get(f"{url}/health")
        body: dict[str, object] = response.json()
        if response.status_code == 200 and all(body.get(k) == v for k, v in expected.items()):
            return body
        return None

    body = await eventually(healthy, within=20, what=f"{url}/health with {expected}")
    assert body is not None
    return body


async def wait_for_end(client: ironflow.Client, run_id: str, *, within: float) -> ironflow.Run:
    async def ended() -> ironflow.Run | None:
        run = await client.get_run(run_id)
        return run if run.status in ("completed", "failed", "cancelled") else None

    run = await eventually(ended, within=within, interval=0.1, what=f"run {run_id} to end")
    assert run is not None
    return run


async def stop_cleanly(app: Process) -> None:
    code = await app.terminate()
    stderr = app.stderr.read_text(errors="replace")
    # After its graceful shutdown uvicorn re-raises the signal it caught, so that whoever started it
    # sees how it ended: SIGTERM exits with -SIGTERM (older releases exited 0).
    assert code in (0, -signal.SIGTERM), app.output()
    assert "Traceback" not in stderr, app.output()
    assert "Application shutdown complete" in stderr, app.output()  # the lifespan shutdown ran
    assert "Finished server process" in stderr, app.output()


async def test_embedded_worker_app_runs_an_order_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """The app's lifespan starts the worker inside uvicorn's loop; POST /orders emits, the embedded
    worker runs all three steps; SIGTERM makes uvicorn run the shutdown, which drains the worker."""
    async with ironflow_server(tmp_path) as server_url:
        app, app_url = await start_app(
            "examples.embedded_worker.app:app", free_port(), tmp_path, {"IRONFLOW_SERVER_URL": server_url}
        )
        try:
            # The worker registers its function when it connects, after startup: wait for that too.
            await wait_for_health(app, app_url, worker="connected")
            order = {"orderId": "ord_1", "items": ["book", "pen"], "total": 42.5}
            async with httpx.AsyncClient() as http:
                response = await http.post(f"{app_url}/orders", json=order)
            assert response.status_code == 202, response.text
            placed = response.json()
            assert placed["event_id"].startswith("evt_")
            assert len(placed["run_ids"]) == 1, placed

            async with ironflow.Client(server_url) as client:
                run = await wait_for_end(client, placed["run_ids"][0], within=20)
                assert run.status == "completed", (run.error, app.output())
                assert run.function_id == "accept-order"
                assert run.event_id == placed["event_id"]
                assert run.output == {
                    "order": "ord_1",
                    "reservation": "res_ord_1",
                    "charge": "ch_ord_1",
                    "confirmation": "confirmation for ord_1 (ch_ord_1) sent",
                }
                steps = await client.get_run_steps(run.id)
            assert [(s.id, s.kind, s.status) for s in steps] == [
                ("reserve-stock", "run", "completed"),
                ("charge-card", "run", "completed"),
                ("send-confirmation", "run", "completed"),
            ]
            assert steps[0].output == {"reservation_id": "res_ord_1", "items": ["book", "pen"]}
            assert steps[1].output == {"charge_id": "ch_ord_1", "amount": 42.5}

            await stop_cleanly(app)
        finally:
            await app.kill()


def _signed_with(key: str, body: bytes) -> str:
    timestamp = int(time.time())
    digest = hmac.new(key.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


async def test_push_endpoint_app_runs_steps_and_a_sleep_and_refuses_bad_signatures(tmp_path: Path) -> None:
    """Server and app share IRONFLOW_SIGNING_KEY; the app registers its endpoint at startup. The server
    pushes the run: two steps, a sleep that ends the request, then a later request for the last step.
    A request signed with another key is refused with 401 and changes nothing."""
    key = secrets.token_hex(32)
    async with ironflow_server(tmp_path, {"IRONFLOW_SIGNING_KEY": key}) as server_url:
        port = free_port()
        endpoint_url = f"http://127.0.0.1:{port}/api/ironflow"
        app, app_url = await start_app(
            "examples.push_endpoint.app:app",
            port,
            tmp_path,
            {
                "IRONFLOW_SIGNING_KEY": key,
                "IRONFLOW_SERVER_URL": server_url,
                "IRONFLOW_ENDPOINT_URL": endpoint_url,
            },
        )
        try:
            # The lifespan registers before uvicorn listens: a healthy app is a registered one.
            await wait_for_health(app, app_url, functions=["onboard-user"])
            async with ironflow.Client(server_url) as client:
                function = await client.get_function("onboard-user")
                assert (function.mode, function.endpoint_url) == ("push", endpoint_url)

                emitted = await client.emit("user.signed_up", {"userId": "u_1", "email": "ada@example.com"})
                assert len(emitted.run_ids) == 1
                run = await wait_for_end(client, emitted.run_ids[0], within=20)
                assert run.status == "completed", (run.error, app.output())
                assert run.output == {
                    "user": "u_1",
                    "profile": "prof_u_1",
                    "emails": ["msg_welcome_ada@example.com", "msg_tips_ada@example.com"],
                }
                steps = await client.get_run_steps(run.id)
                # Keyed by id, not listed in order: steps that ran in the same push request are
                # recorded together, with the same timestamps.
                assert {s.id: (s.kind, s.status) for s in steps} == {
                    "create-profile": ("run", "completed"),
                    "send-welcome": ("run", "completed"),
                    "nudge-delay": ("sleep", "completed"),
                    "send-tips": ("run", "completed"),
                }
                sleep = next(s for s in steps if s.id == "nudge-delay")
                assert sleep.started_at is not None
                assert sleep.ended_at is not None
                assert (sleep.ended_at - sleep.started_at).total_seconds() >= 1.9  # on the server's clock
                assert (await client.get_function("onboard-user")).circuit_state == "closed"

                # Someone who knows the URL but not the key: refused, and nothing runs or changes.
                before = [(r.id, r.status, r.attempt) for r in await client.list_runs()]
                body = json.dumps({"job": {"run_id": run.id, "function_id": "onboard-user"}}).encode()
                async with httpx.AsyncClient() as http:
                    for headers in (
                        {"X-Ironflow-Signature": _signed_with(secrets.token_hex(32), body)},
                        {},
                    ):
                        response = await http.post(
                            endpoint_url,
                            content=body,
                            headers={"Content-Type": "application/json", **headers},
                        )
                        assert response.status_code == 401, response.text
                        assert response.json()["code"] == "unauthenticated"
                assert [(r.id, r.status, r.attempt) for r in await client.list_runs()] == before
                assert [(s.id, s.status, s.attempt) for s in await client.get_run_steps(run.id)] == [
                    (s.id, s.status, s.attempt) for s in steps
                ]

            await stop_cleanly(app)
            # Two pushes: create-profile, send-welcome and the sleep in the first (the sleep ends it),
            # send-tips in the second, once the sleep was over.
            pushes = app.stdout.read_text().count('"POST /api/ironflow HTTP/1.1" 200')
            assert pushes == 2, app.output()
        finally:
            await app.kill()
