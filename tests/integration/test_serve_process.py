"""`ironflow serve` as a user runs it: a real process, default storage under .ironflow/, clean stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

import ironflow
from tests.support import eventually, free_port

BUF = Path(__file__).resolve().parents[2] / "node_modules" / ".bin" / "buf"


async def _start(cwd: Path, *args: str) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRONFLOW_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ironflow.services.server",
        "serve",
        "--port",
        str(port),
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    async def ready() -> bool:
        if process.returncode is not None:
            raise AssertionError(f"server exited early with {process.returncode}")
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{url}/ready")).status_code == 200

    await eventually(ready, within=30, what="ironflow serve to become ready")
    return process, url


async def _stop(process: asyncio.subprocess.Process, sig: signal.Signals) -> tuple[int, str]:
    process.send_signal(sig)
    out, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, out.decode()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_serve_defaults_to_sqlite_under_dot_ironflow_and_stops_cleanly(
    tmp_path: Path, sig: signal.Signals
) -> None:
    process, url = await _start(tmp_path)
    try:
        async with ironflow.Client(url) as client:
            event_id = (await client.emit("order.placed", {"orderId": "ord_1"})).event_id
    finally:
        code, output = await _stop(process, sig)
    assert code == 0, output
    assert "Traceback" not in output
    assert "Ironflow stopped" in output
    assert (tmp_path / ".ironflow" / "ironflow.db").exists()

    # The event survived the restart: it was stored, not just streamed.
    process, url = await _start(tmp_path)
    try:
        async with ironflow.Client(url) as client:
            assert (await client.get_event(event_id)).data == {"orderId": "ord_1"}
    finally:
        await _stop(process, signal.SIGTERM)


async def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    process, url = await _start(tmp_path)
    try:
        port = url.rsplit(":", 1)[1]
        second = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ironflow.services.server",
            "serve",
            "--port",
            port,
            "--database-url",
            f"sqlite+aiosqlite:///{tmp_path / 'other.db'}",
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(second.communicate(), timeout=30)
        assert second.returncode == 2
        assert "already in use" in err.decode()
        assert "Traceback" not in err.decode()
    finally:
        await _stop(process, signal.SIGTERM)


async def test_bad_database_url_is_a_clear_error(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ironflow.services.server",
        "serve",
        "--port",
        str(free_port()),
        "--database-url",
        "mysql://nope",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    assert "database_url" in err.decode()
    assert "Traceback" not in err.decode()


async def test_grpc_web_and_connect_reach_the_same_service(tmp_path: Path) -> None:
    assert BUF.exists(), "the buf CLI is missing: run `npm ci` in the repository root"
    process, url = await _start(tmp_path)
    try:
        for protocol in ("grpcweb", "connect"):
            buf = await asyncio.create_subprocess_exec(
                str(BUF),
                "curl",
                "--protocol",
                protocol,
                "--http2-prior-knowledge",
                "--reflect",
                "--data",
                json.dumps({"name": "order.placed", "data": {"via": protocol}}),
                f"{url}/ironflow.v1.EventService/Emit",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(buf.communicate(), timeout=60)
            assert buf.returncode == 0, err.decode()
            assert json.loads(out)["eventId"].startswith("evt_")
        async with ironflow.Client(url) as client:
            page = await client.list_events(name="order.placed")
        assert sorted(e.data["via"] for e in page.events) == ["connect", "grpcweb"]
    finally:
        await _stop(process, signal.SIGTERM)


def test_sync_client_emits_and_reads_from_a_plain_script(tmp_path: Path) -> None:
    """SyncClient is for code with no event loop; it must also work when one is running elsewhere."""

    async def scenario() -> None:
        process, url = await _start(tmp_path)
        try:

            def blocking_work() -> tuple[str, dict[str, object]]:
                with ironflow.SyncClient(url) as client:
                    event_id = client.emit("order.placed", {"n": 1}).event_id
                    return event_id, client.get_event(event_id).data

            event_id, data = await asyncio.to_thread(blocking_work)
            assert event_id.startswith("evt_")
            assert data == {"n": 1}
            with ironflow.SyncClient(url) as client:  # called from inside a running loop
                assert client.list_events().events[0].id == event_id
                with pytest.raises(ironflow.IronflowError) as info:
                    client.emit("bad name", {})
                assert info.value.code == "INVALID_ARGUMENT"
        finally:
            await _stop(process, signal.SIGTERM)

    asyncio.run(scenario())


async def test_unreachable_server_is_unavailable() -> None:
    async with ironflow.Client(f"http://127.0.0.1:{free_port()}", timeout=5) as client:
        with pytest.raises(ironflow.IronflowError) as info:
            await client.emit("order.placed", {})
    assert info.value.code == "UNAVAILABLE"
    assert "cannot reach" in info.value.message
