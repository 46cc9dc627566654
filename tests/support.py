"""Helpers for tests: wait for conditions with a deadline (never sleep for a result), free ports."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    *,
    within: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """Call `probe` until it returns a truthy value without raising; fail after `within` seconds."""
    deadline = time.monotonic() + within
    last_error: BaseException | None = None
    while True:
        try:
            result = await probe()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last failure at the deadline
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}; last error: {last_error!r}")
        await asyncio.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
