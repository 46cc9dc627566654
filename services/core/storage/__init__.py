"""Durable state on SQLite or Postgres: one schema source, a migration step, transaction discipline."""

from ._database import DEFAULT_SQLITE_URL, Database, is_transient
from ._migrate import MIGRATIONS, SCHEMA_VERSION, migrate, schema_version
from ._tables import (
    accumulated_events,
    consumer_groups,
    cron_schedules,
    events,
    function_versions,
    functions,
    idempotency_keys,
    metadata,
    pending_runs,
    push_endpoints,
    rate_limit_admissions,
    rate_limit_keys,
    run_concurrency_keys,
    runs,
    schema_versions,
    steps,
    throttle_keys,
    topic_stats,
    waits,
)
from ._types import UTCDateTime
from ._upsert import insert_or_ignore

__all__ = [
    "DEFAULT_SQLITE_URL",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Database",
    "UTCDateTime",
    "accumulated_events",
    "consumer_groups",
    "cron_schedules",
    "events",
    "function_versions",
    "functions",
    "idempotency_keys",
    "insert_or_ignore",
    "is_transient",
    "metadata",
    "migrate",
    "pending_runs",
    "push_endpoints",
    "rate_limit_admissions",
    "rate_limit_keys",
    "run_concurrency_keys",
    "runs",
    "schema_version",
    "schema_versions",
    "steps",
    "throttle_keys",
    "topic_stats",
    "waits",
]
