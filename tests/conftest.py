"""Shared test settings: where the real Postgres and Redis servers are.

Tests isolate themselves by unique names (uuid stream keys, a fresh schema or database file) rather than
by teardown, so they can share one server and run in any order.
"""

from __future__ import annotations

import os

POSTGRES_URL = os.environ.get(
    "IRONFLOW_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("IRONFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
