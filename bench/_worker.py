"""A benchmark worker process: `python -m bench._worker SERVER_URL [--concurrency N]`.

Serves the benchmark functions (`bench/_functions.py`), prints `ready` once connected (the harness
waits for that line), and drains and exits on SIGTERM. Each worker is its own process, so the
server, the emitting client and every worker have their own interpreter, as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

import ironflow

from ._functions import ALL_FUNCTIONS


async def serve(server_url: str, concurrency: int, transport: str) -> None:
    worker = ironflow.Worker(
        server_url,
        functions=ALL_FUNCTIONS,
        max_concurrent_jobs=concurrency,
        transport="poll" if transport == "poll" else "stream",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    worker.start()
    await worker.connected.wait()
    print("ready", flush=True)
    await stop.wait()
    await worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("server_url")
    parser.add_argument("--concurrency", type=int, default=100, help="max_concurrent_jobs [100]")
    parser.add_argument("--transport", choices=["stream", "poll"], default="stream")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args.server_url, args.concurrency, args.transport))


if __name__ == "__main__":
    main()
