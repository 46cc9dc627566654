"""Opening the database by URL, and transactions that behave the same on SQLite and Postgres.

The backend is chosen by URL only (`sqlite+aiosqlite://...` or `postgresql+psycopg://...`); nothing
above this module branches on it.

SQLite notes: the driver's own transaction handling is switched off and every transaction begins with
`BEGIN IMMEDIATE`, which takes the write lock up front. With the driver's default deferred BEGIN two
connections can both read, then one loses its update when the other commits (measured here). WAL mode
lets readers run alongside the writer, so `reading()` begins a plain (deferred) transaction and never
takes the write lock.

SQLite allows one writer at a time, and a connection that finds the lock taken waits in SQLite's busy
handler, which sleeps (1, 2, 5 ... 100 ms) and polls. With many coroutines of one process writing at
once those sleeps dominated: 40 emits/s and 44 ms for a one-step run, with the process mostly idle.
So the transactions of one `Database` on SQLite take an asyncio lock first (FIFO, woken the moment
the previous one commits); the busy handler only still applies between processes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from ironflow.services.core.errors import invalid_argument

from ._sqlite_inline import InlineConnection, inline_creator

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_SQLITE_URL = "sqlite+aiosqlite:///.ironflow/ironflow.db"

# Postgres SQLSTATEs worth a retry: serialization failure, deadlock, and connection loss.
# Connections kept open on SQLite; more requests than this wait for one (see `_sqlite_engine`).
_SQLITE_POOL_SIZE = 64
# Execution option that marks a connection from `reading()`.
_READ_ONLY = "ironflow_read_only"
_TRANSIENT_PG_STATES = {"40001", "40P01", "08000", "08003", "08006", "57P01"}


def is_transient(exc: BaseException) -> bool:
    """True for database errors that a fresh transaction can succeed after."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    state = getattr(exc.orig, "sqlstate", None)
    if state in _TRANSIENT_PG_STATES:
        return True
    return isinstance(exc, OperationalError) and "database is locked" in str(exc.orig)


class Database:
    """An async engine plus the transaction discipline every service uses."""

    def __init__(self, engine: AsyncEngine, *, schema: str | None = None) -> None:
        self.engine = engine
        self.schema = schema
        # SQLite only (see the module docstring): the lock and the event loop it belongs to.
        self._serialize_writes = engine.dialect.name == "sqlite"
        self._write_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @classmethod
    def open(cls, url: str, *, schema: str | None = None, pool_size: int = 10) -> Database:
        """Create the engine for `url`. Does not connect; call `migrate` (or `ping`) next."""
        try:
            parsed = make_url(url)
        except sa.exc.ArgumentError as exc:
            raise invalid_argument("database_url", f"not a database URL: {url!r}") from exc
        backend = parsed.get_backend_name()
        if parsed.drivername == "sqlite+aiosqlite":
            return cls(_sqlite_engine(parsed.database or ""))
        if backend == "postgresql":
            if parsed.drivername != "postgresql+psycopg":
                parsed = parsed.set(drivername="postgresql+psycopg")
            return cls(_postgres_engine(parsed, schema=schema, pool_size=pool_size), schema=schema)
        raise invalid_argument(
            "database_url",
            f"unsupported database {parsed.drivername!r}; use sqlite+aiosqlite:///path or "
            "postgresql+psycopg://user@host/db",
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One transaction: committed when the block exits, rolled back if it raises."""
        if not self._serialize_writes:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._writer_lock(), self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads only (on SQLite a deferred transaction that takes no write lock)."""
        async with self.engine.connect() as conn:
            if self._serialize_writes:
                # In place on the started connection (no I/O, so no trip through the async adapter).
                assert conn.sync_connection is not None
                conn.sync_connection.execution_options(**{_READ_ONLY: True})
            yield conn

    def _writer_lock(self) -> asyncio.Lock:
        # An asyncio.Lock belongs to one event loop; a Database may outlive a loop (tests, CLIs).
        loop = asyncio.get_running_loop()
        if self._write_lock is None or self._write_lock[0] is not loop:
            self._write_lock = (loop, asyncio.Lock())
        return self._write_lock[1]

    async def run(self, work: Callable[[AsyncConnection], Awaitable[T]], *, attempts: int = 5) -> T:
        """Run `work` in a transaction, retrying the whole transaction on transient errors only."""
        # The first attempt goes straight in: building the retry machinery for every transaction
        # showed up in profiles, and almost every transaction succeeds the first time.
        try:
            async with self.transaction() as conn:
                return await work(conn)
        except Exception as exc:
            if attempts <= 1 or not is_transient(exc):
                raise
            log.debug("transient database error, retrying: %s", exc)
        await asyncio.sleep(random.uniform(0, 0.02))  # the backoff the first retry would have had
        retrying = AsyncRetrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(attempts - 1),
            wait=wait_random_exponential(multiplier=0.02, max=1.0),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                async with self.transaction() as conn:
                    return await work(conn)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()


def _sqlite_engine(path: str) -> AsyncEngine:
    if path and path != ":memory:":
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{path}",
        # A lock held by another process is waited for (up to 30 s), not failed at once.
        async_creator=inline_creator(path or ":memory:", timeout=30),
        # Connections are opened lazily and kept: every request that overflowed a small pool opened
        # (and set up) a new connection and closed it after, 0.3 ms each. Past the pool they queue.
        pool_size=_SQLITE_POOL_SIZE,
        max_overflow=0,
        pool_timeout=60,
        # Every transaction here ends in COMMIT or ROLLBACK before its connection goes back (and
        # SQLAlchemy rolls back any it finds open), so the pool's extra ROLLBACK is skipped.
        pool_reset_on_return=None,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to us (see module docstring).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        read_only = conn.get_execution_options().get(_READ_ONLY, False)
        # Straight to SQLite: through `exec_driver_sql` this statement cost a quarter of an empty
        # transaction.
        inline = cast("InlineConnection", conn.connection.driver_connection)
        inline.sqlite.execute("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _postgres_engine(url: sa.URL, *, schema: str | None, pool_size: int) -> AsyncEngine:
    connect_args: dict[str, Any] = {}
    if schema is not None:
        if not schema.replace("_", "").isalnum():
            raise invalid_argument("schema", f"must be letters, digits and underscores: {schema!r}")
        connect_args["options"] = f"-c search_path={schema}"
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args=connect_args,
    )
