"""An aiosqlite connection that runs each SQLite call on the event loop's own thread.

aiosqlite gives every connection a worker thread and hands each call to it through a queue, then
wakes the event loop from that thread when the call is done. On the embedded server that hop cost
more than the SQL: each call needs the GIL back from the busy event loop thread (up to the 5 ms
switch interval) and a self-pipe wake-up, and a transaction makes several calls. Measured on the
2-core machine: 14 ms for an emit that starts no run, the process a third idle.

SQLite's calls are short here (WAL with synchronous=NORMAL: a commit appends to the log without an
fsync), and the embedded server's transactions take an in-process lock before they begin (see
`_database.py`), so a call never waits for SQLite's own lock inside the process. Running them inline
costs the loop a few microseconds each instead. Another process holding the write lock would make the
busy handler block the loop; the embedded server owns its database file, and other processes only read.

SQLAlchemy's aiosqlite dialect is kept (its type handling, pool and async adaptation), and this is its
`async_creator`: the connection object is aiosqlite's, with the thread replaced by a queue that runs
each item as it is put.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Generator
from typing import Any

import aiosqlite

# aiosqlite's default number of rows fetched per step when iterating a cursor.
_ITER_CHUNK_SIZE = 64


class _RunAtOnce:
    """Stands in for aiosqlite's queue to its worker thread: runs each call as it is queued and
    settles its future, so the `await` that follows finds it done."""

    def put_nowait(self, item: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting caller, as aiosqlite does
            if future is not None and not future.done():
                future.set_exception(exc)
            return
        if future is not None and not future.done():
            future.set_result(result)


class InlineConnection(aiosqlite.Connection):
    def __init__(self, connector: Callable[[], sqlite3.Connection]) -> None:
        super().__init__(connector, _ITER_CHUNK_SIZE)
        self._tx = _RunAtOnce()  # type: ignore[assignment]

    @property
    def sqlite(self) -> sqlite3.Connection:
        """The SQLite connection itself, for statements that need none of the adaptation."""
        return self._conn

    def __await__(self) -> Generator[Any, None, aiosqlite.Connection]:
        # aiosqlite starts its worker thread here; there is none.
        return self._connect().__await__()


def inline_creator(path: str, *, timeout: float) -> Callable[[], Any]:
    """An `async_creator` for `create_async_engine`: opens `path` with an inline connection."""

    async def create() -> aiosqlite.Connection:
        # check_same_thread off: the pool may close a connection from the thread that disposes it.
        return await InlineConnection(lambda: sqlite3.connect(path, timeout=timeout, check_same_thread=False))

    return create
