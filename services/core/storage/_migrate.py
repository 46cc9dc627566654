"""The migration step: create or upgrade the schema and record which version it is at.

Migrations are an ordered list of (version, description, change). `migrate` applies the ones a
database has not seen, each in the same transaction as the row that records it, under a lock so that
several processes starting at once (replicas in the distributed shape) migrate exactly once.

Migration 1 creates every table of `_tables.metadata` that is missing. A later schema change appends
a migration that alters existing tables (add a column, an index); it must also be safe on a database
that migration 1 created after the change landed, so check before altering.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from ._database import Database
from ._tables import (
    accumulated_events,
    consumer_groups,
    cron_schedules,
    events,
    idempotency_keys,
    ix_runs_leased,
    ix_runs_ticket_outstanding,
    metadata,
    pending_runs,
    push_endpoints,
    rate_limit_admissions,
    rate_limit_keys,
    run_concurrency_keys,
    runs,
    schema_versions,
    throttle_keys,
    topic_stats,
    waits,
)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[sa.Connection], None]


def _create_initial_tables(conn: sa.Connection) -> None:
    metadata.create_all(conn, checkfirst=True)


def _add_run_columns(conn: sa.Connection, *columns: sa.Column[Any]) -> None:
    # A database that migration 1 created after these columns were declared has them already.
    existing = {column["name"] for column in sa.inspect(conn).get_columns(runs.name, schema=runs.schema)}
    for column in columns:
        if column.name not in existing:
            column_type = column.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {runs.name} ADD COLUMN {column.name} {column_type}"))


def _add_run_options_and_trigger_sweep(conn: sa.Connection) -> None:
    _add_run_columns(conn, runs.c.options, runs.c.timeout_at)
    for index in events.indexes:
        if index.name == "ix_events_untriggered":
            index.create(conn, checkfirst=True)


def _reshape_waits(conn: sa.Connection) -> None:
    # Versions 1 and 2 declared a waits table that nothing ever wrote to: replace it outright.
    inspector = sa.inspect(conn)
    if inspector.has_table(waits.name, schema=waits.schema):
        columns = {column["name"] for column in inspector.get_columns(waits.name, schema=waits.schema)}
        if "kind" in columns:
            return  # created by migration 1 after the reshape landed
        waits.drop(conn)
    waits.create(conn)


def _add_push_endpoints(conn: sa.Connection) -> None:
    push_endpoints.create(conn, checkfirst=True)


def _add_subscriptions(conn: sa.Connection) -> None:
    consumer_groups.create(conn, checkfirst=True)
    topic_stats.create(conn, checkfirst=True)


def _add_job_tickets(conn: sa.Connection) -> None:
    _add_run_columns(conn, runs.c.ticketed_sequence, runs.c.ticketed_at)


def _add_cron_schedules(conn: sa.Connection) -> None:
    cron_schedules.create(conn, checkfirst=True)


def _add_admission_tables(conn: sa.Connection) -> None:
    for table in (idempotency_keys, rate_limit_keys, rate_limit_admissions):
        table.create(conn, checkfirst=True)


def _add_concurrency_and_priority(conn: sa.Connection) -> None:
    _add_run_columns(conn, runs.c.priority)
    run_concurrency_keys.create(conn, checkfirst=True)
    for index in (ix_runs_leased, ix_runs_ticket_outstanding):
        index.create(conn, checkfirst=True)


def _add_throttle_keys(conn: sa.Connection) -> None:
    throttle_keys.create(conn, checkfirst=True)


def _add_pending_runs(conn: sa.Connection) -> None:
    for table in (pending_runs, accumulated_events):
        table.create(conn, checkfirst=True)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "events, functions, function versions, runs, steps, waits", _create_initial_tables),
    Migration(
        2, "run options and timeout deadline; index of untriggered events", _add_run_options_and_trigger_sweep
    ),
    Migration(3, "waits for timers, events and child runs, indexed by match key", _reshape_waits),
    Migration(4, "circuit breaker state of push endpoints", _add_push_endpoints),
    Migration(5, "consumer groups and topic statistics", _add_subscriptions),
    Migration(6, "job tickets: which runs have a delivery on the stream", _add_job_tickets),
    Migration(7, "cron triggers: the next tick of each schedule", _add_cron_schedules),
    Migration(8, "idempotency keys and rate limit logs of functions", _add_admission_tables),
    Migration(9, "concurrency keys of active runs; run priority", _add_concurrency_and_priority),
    Migration(10, "throttle schedules of functions, one per key", _add_throttle_keys),
    Migration(11, "debounce and batching: pending runs and the events they took in", _add_pending_runs),
)

SCHEMA_VERSION = MIGRATIONS[-1].version


async def migrate(db: Database) -> int:
    """Bring the schema to SCHEMA_VERSION; return the version it is at now."""
    async with db.transaction() as conn:
        if db.dialect == "postgresql":
            # Serialise concurrent migrators (service processes starting together) for the rest of
            # this transaction; first, since even CREATE SCHEMA IF NOT EXISTS races with itself.
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(7426348931)"))
            if db.schema is not None:
                await conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{db.schema}"'))
        await conn.run_sync(lambda sync: schema_versions.create(sync, checkfirst=True))
        current = (
            await conn.execute(sa.select(sa.func.coalesce(sa.func.max(schema_versions.c.version), 0)))
        ).scalar_one()
        for migration in MIGRATIONS:
            if migration.version <= current:
                continue
            await conn.run_sync(migration.apply)
            await conn.execute(
                schema_versions.insert().values(
                    version=migration.version,
                    description=migration.description,
                    applied_at=datetime.now(UTC),
                )
            )
            current = migration.version
        return int(current)


async def schema_version(db: Database) -> int:
    """The version recorded in the database (0 when it was never migrated)."""
    async with db.reading() as conn:
        exists = await conn.run_sync(lambda sync: sa.inspect(sync).has_table(schema_versions.name))
        if not exists:
            return 0
        value = (
            await conn.execute(sa.select(sa.func.coalesce(sa.func.max(schema_versions.c.version), 0)))
        ).scalar_one()
        return int(value)
