"""Shared test settings: where the real Postgres and Redis servers are.

Tests isolate themselves by unique names (uuid stream keys, a fresh schema or database file) rather than
by teardown, so they can share one server and run in any order.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ironflow.services.core.storage import Database, migrate

POSTGRES_URL = os.environ.get(
    "IRONFLOW_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("IRONFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


async def open_test_database(backend: str, tmp_path: Path) -> Database:
    """A migrated, empty database of the given backend, isolated from every other test."""
    if backend == "sqlite":
        db = Database.open(f"sqlite+aiosqlite:///{tmp_path / 'ironflow.db'}")
    else:
        db = Database.open(POSTGRES_URL, schema=unique_name("t"))
    await migrate(db)
    return db


async def drop_test_database(db: Database) -> None:
    if db.dialect == "postgresql" and db.schema:
        async with db.transaction() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA "{db.schema}" CASCADE')
    await db.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """The storage layer on both backends: every test using it runs on SQLite and on Postgres."""
    db = await open_test_database(request.param, tmp_path)
    try:
        yield db
    finally:
        await drop_test_database(db)
