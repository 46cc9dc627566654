"""The local cluster's relay for old nginx: each connection goes to the h2c or the HTTP/1.1 listener
by its first bytes, and everything it sends and receives passes through unchanged."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from ironflow.services.server._protocol_switch import PREFACE, serve
from tests.support import free_port


@contextlib.asynccontextmanager
async def upstream(name: bytes) -> AsyncIterator[int]:
    """A listener that answers every chunk it gets with `name: <chunk>`."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            writer.write(name + b": " + chunk)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def exchange(port: int, sent: bytes, expected: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(sent)
    await writer.drain()
    received = b""
    while len(received) < expected:
        chunk = await asyncio.wait_for(reader.read(65536), timeout=5)
        if not chunk:
            break
        received += chunk
    writer.close()
    await writer.wait_closed()
    return received


async def test_each_connection_reaches_the_listener_its_protocol_needs() -> None:
    async with upstream(b"h2c") as h2c, upstream(b"http1") as http1:
        port = free_port()
        relay = asyncio.create_task(serve(port, h2c=h2c, http1=http1))
        try:

            async def listening() -> bytes:
                return await exchange(port, b"GET / HTTP/1.1\r\n\r\n", 1)

            for _ in range(100):  # until the relay listens
                with contextlib.suppress(OSError):
                    await listening()
                    break
                await asyncio.sleep(0.01)
            http2 = PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
            assert await exchange(port, http2, len(http2) + 5) == b"h2c: " + http2
            request = b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n"
            assert await exchange(port, request, len(request) + 7) == b"http1: " + request
            # One that starts like the preface and then differs is HTTP/1.1 too.
            odd = b"PRIVATE / HTTP/1.1\r\n\r\n"
            assert await exchange(port, odd, len(odd) + 7) == b"http1: " + odd
        finally:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
