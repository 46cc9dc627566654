"""One port for HTTP/1.1 and h2c in front of an nginx that can only do one per port.

nginx serves both on one plain listener from 1.25.1 (`http2 on`); Debian 12 ships 1.22. For the local
cluster on such a machine, this relay takes the front door port, looks at the first bytes of each
connection (an HTTP/2 client with prior knowledge starts with the fixed connection preface, every
HTTP/1.1 request with a method name) and hands the connection, bytes included, to nginx's h2c
listener or its HTTP/1.1 listener. nginx still does all routing and balancing.

Run as `python -m ironflow.services.server._protocol_switch PORT H2C_PORT HTTP1_PORT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_CHUNK = 64 * 1024


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(_CHUNK):
            sink.write(chunk)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
    except (ConnectionError, OSError):
        sink.close()


async def _relay(
    client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter, *, h2c: int, http1: int
) -> None:
    writers = [client_writer]
    try:
        await _choose_and_pipe(client_reader, writers, h2c=h2c, http1=http1)
    finally:
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


async def _choose_and_pipe(
    client_reader: asyncio.StreamReader, writers: list[asyncio.StreamWriter], *, h2c: int, http1: int
) -> None:
    client_writer = writers[0]
    head = b""
    with contextlib.suppress(ConnectionError, OSError):
        # Read until the bytes either are the whole preface or stop matching it.
        while len(head) < len(PREFACE) and PREFACE.startswith(head):
            chunk = await client_reader.read(len(PREFACE) - len(head))
            if not chunk:
                break
            head += chunk
    if not head:
        return
    port = h2c if head.startswith(PREFACE) else http1
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    writers.append(upstream_writer)
    upstream_writer.write(head)
    await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))


async def serve(port: int, *, h2c: int, http1: int) -> None:
    """Relay until cancelled; open connections are closed on the way out."""
    connections: set[asyncio.Task[None]] = set()

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(_relay(reader, writer, h2c=h2c, http1=http1))
        connections.add(task)
        task.add_done_callback(connections.discard)

    server = await asyncio.start_server(accept, "127.0.0.1", port)
    try:
        async with server:
            await server.serve_forever()
    finally:
        for task in list(connections):
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)


def main() -> None:
    port, h2c, http1 = (int(value) for value in sys.argv[1:4])
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(port, h2c=h2c, http1=http1))


if __name__ == "__main__":
    main()
