"""The one schema source: SQLAlchemy Core tables for every service's durable state.

Each table belongs to one service (ARCHITECTURE.md section 2); they share one database in both shapes
so a service reads another's rows only through that service's RPCs, never through these tables.
"""

from __future__ import annotations

import sqlalchemy as sa

from ._types import BigIntKey, JSONDocument, UTCDateTime

metadata = sa.MetaData()

# Bookkeeping for the migration step: one row per applied schema version.
schema_versions = sa.Table(
    "ironflow_schema_versions",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("applied_at", UTCDateTime, nullable=False),
)

# ingest: every emitted event and published topic message, kept forever.
events = sa.Table(
    "events",
    metadata,
    # Storage order; the cursor for listing. Distinct from the stream sequence, which is assigned
    # when the event is appended to the stream (an outbox relay re-appends events a crash left behind).
    sa.Column("position", BigIntKey, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("namespace", sa.String(16), nullable=False),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("data", JSONDocument, nullable=False),
    sa.Column("metadata", JSONDocument, nullable=False),
    sa.Column("idempotency_key", sa.String(256), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # Set once the event is on the stream (the outbox marker).
    sa.Column("stream_sequence", sa.BigInteger, nullable=True),
    # Set once SchedulerService.Trigger has processed the event (the trigger sweeper's marker).
    sa.Column("triggered_at", UTCDateTime, nullable=True),
    sa.Column("run_ids", JSONDocument, nullable=True),
    sa.Index("ix_events_namespace_name_position", "namespace", "name", "position"),
    sa.Index(
        "ux_events_idempotency",
        "namespace",
        "idempotency_key",
        unique=True,
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    ),
    sa.Index(
        "ix_events_untriggered",
        "position",
        sqlite_where=sa.text("triggered_at IS NULL AND namespace = 'events'"),
        postgresql_where=sa.text("triggered_at IS NULL AND namespace = 'events'"),
    ),
    sa.Index(
        "ix_events_outbox",
        "position",
        sqlite_where=sa.text("stream_sequence IS NULL"),
        postgresql_where=sa.text("stream_sequence IS NULL"),
    ),
)

# registry: the current definition of each function ...
functions = sa.Table(
    "functions",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("endpoint_url", sa.String(2048), nullable=True),
    # The FunctionDefinition as canonical JSON, and its digest to tell a change from a re-registration.
    sa.Column("definition", JSONDocument, nullable=False),
    sa.Column("definition_digest", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# ... and every version it ever had, so old runs can be explained and replayed.
function_versions = sa.Table(
    "function_versions",
    metadata,
    sa.Column("function_id", sa.String(128), primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True),
    sa.Column("definition", JSONDocument, nullable=False),
    sa.Column("definition_digest", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# scheduler: one row per run; the lease columns fence workers (ARCHITECTURE.md section 4).
runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("function_id", sa.String(128), nullable=False),
    sa.Column("function_version", sa.BigInteger, nullable=False),
    sa.Column("event_id", sa.String(64), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, default=0),
    sa.Column("input", JSONDocument, nullable=True),
    sa.Column("output", JSONDocument, nullable=True),
    sa.Column("error", JSONDocument, nullable=True),
    sa.Column("parent_run_id", sa.String(64), nullable=True),
    sa.Column("parent_step_id", sa.String(256), nullable=True),
    sa.Column("idempotency_key", sa.String(256), nullable=True),
    # What the run keeps of its function version (retry policy, timeout), so a later registration
    # never changes how a run already under way behaves. Added by migration 2.
    sa.Column("options", JSONDocument, nullable=True),
    # When the run is next due for dispatch (queued now, or a retry/timer later).
    sa.Column("available_at", UTCDateTime, nullable=True),
    sa.Column("execution_sequence", sa.BigInteger, nullable=False, default=0),
    sa.Column("lease_token", sa.String(64), nullable=True),
    sa.Column("lease_expires_at", UTCDateTime, nullable=True),
    sa.Column("worker_id", sa.String(128), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("ended_at", UTCDateTime, nullable=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # The function timeout turned into a deadline when the run starts. Added by migration 2.
    sa.Column("timeout_at", UTCDateTime, nullable=True),
    # Pull delivery: the execution sequence a job ticket was last put on the stream for, and when.
    # A due run whose sequence differs has no ticket yet. Added by migration 6.
    sa.Column("ticketed_sequence", sa.BigInteger, nullable=True),
    sa.Column("ticketed_at", UTCDateTime, nullable=True),
    # Seconds of head start in the dispatch order of a prioritised function (`_priority.py`); null
    # means 0. Added by migration 9.
    sa.Column("priority", sa.Integer, nullable=True),
    # Triggering is idempotent per (event, function).
    sa.UniqueConstraint("event_id", "function_id", name="ux_runs_event_function"),
    sa.Index("ix_runs_status_available", "status", "available_at"),
    sa.Index("ix_runs_function_created", "function_id", "created_at"),
    sa.Index("ix_runs_parent", "parent_run_id"),
)

# Runs a worker holds, and due runs with a job ticket no gateway has used yet: few at any time however
# long the queue, so counting a concurrency key's taken slots reads these, not the key's backlog.
# Partial indexes on both backends. Added by migration 9.
_LEASED = runs.c.lease_token.is_not(None)
_TICKET_OUTSTANDING = sa.and_(
    runs.c.lease_token.is_(None), runs.c.ticketed_sequence == runs.c.execution_sequence
)
ix_runs_leased = sa.Index(
    "ix_runs_leased", runs.c.function_id, postgresql_where=_LEASED, sqlite_where=_LEASED
)
ix_runs_ticket_outstanding = sa.Index(
    "ix_runs_ticket_outstanding",
    runs.c.function_id,
    postgresql_where=_TICKET_OUTSTANDING,
    sqlite_where=_TICKET_OUTSTANDING,
)

# scheduler: the concurrency keys of active runs of functions with concurrency limits, one row per
# (run, key); a run leaves its rows when it ends. `key` hashes (function, limit's key expression, key
# value); `limit` is the limit the run was created under. Added by migration 9.
run_concurrency_keys = sa.Table(
    "run_concurrency_keys",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("function_id", sa.String(128), nullable=False),
    sa.Column("limit", sa.Integer, nullable=False),
    sa.Index("ix_run_concurrency_keys_key", "key"),
    sa.Index("ix_run_concurrency_keys_function", "function_id"),
)

# scheduler: memoized steps of a run, keyed by deterministic step id.
steps = sa.Table(
    "steps",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("step_id", sa.String(512), primary_key=True),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("output", JSONDocument, nullable=True),
    sa.Column("error", JSONDocument, nullable=True),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("ended_at", UTCDateTime, nullable=True),
)

# scheduler: what suspended runs wait for, one row per yielded step: a timer (`sleep`), an event
# (`event`, indexed by name and by the equality key of its `match`, so each stored event is checked
# only against the waits that could match it), or a child run (`invoke`). `timeout_at` is the timer:
# the wake time of a sleep, the deadline of an event wait or an invoke. Reshaped by migration 3.
waits = sa.Table(
    "waits",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("step_id", sa.String(512), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("event_name", sa.String(256), nullable=True),
    sa.Column("match", sa.Text, nullable=True),
    # `async.<match_path> == <match_value>` holds for every event the match accepts (None: no such key).
    sa.Column("match_path", sa.String(512), nullable=True),
    sa.Column("match_value", sa.String(512), nullable=True),
    sa.Column("child_run_id", sa.String(64), nullable=True),
    sa.Column("timeout_at", UTCDateTime, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("resolved_at", UTCDateTime, nullable=True),
    sa.Column("resolved_event_id", sa.String(64), nullable=True),
    sa.UniqueConstraint("run_id", "step_id", name="ux_waits_run_step"),
    sa.Index(
        "ix_waits_open_by_key",
        "event_name",
        "match_path",
        "match_value",
        sqlite_where=sa.text("resolved_at IS NULL"),
        postgresql_where=sa.text("resolved_at IS NULL"),
    ),
    sa.Index(
        "ix_waits_open_by_timeout",
        "timeout_at",
        sqlite_where=sa.text("resolved_at IS NULL"),
        postgresql_where=sa.text("resolved_at IS NULL"),
    ),
    sa.Index(
        "ix_waits_open_by_child",
        "child_run_id",
        sqlite_where=sa.text("resolved_at IS NULL"),
        postgresql_where=sa.text("resolved_at IS NULL"),
    ),
)

# scheduler: where each cron trigger of an active function stands. One row per (function, schedule,
# zone); a changed schedule or zone is a new row. `next_at` is the next tick not yet fired or skipped:
# scheduler replicas claim due rows with SKIP LOCKED, start the tick's run and move `next_at` on in
# one transaction. Rows follow the registry's active functions (paused and deleted ones lose theirs,
# so re-activating one starts from its next tick). Added by migration 7.
cron_schedules = sa.Table(
    "cron_schedules",
    metadata,
    sa.Column("function_id", sa.String(128), primary_key=True),
    sa.Column("schedule", sa.String(256), primary_key=True),
    sa.Column("timezone", sa.String(64), primary_key=True),
    sa.Column("catch_up", sa.Boolean, nullable=False),
    sa.Column("next_at", UTCDateTime, nullable=False),
    # The scheduled time of the last tick that started a run, and that run.
    sa.Column("last_tick_at", UTCDateTime, nullable=True),
    sa.Column("last_run_id", sa.String(64), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_cron_schedules_next_at", "next_at"),
)

# scheduler: idempotency keys of functions declaring `idempotency`, one row per (function, key) while
# its window lasts. Claimed with INSERT ... ON CONFLICT DO NOTHING in the transaction that creates the
# event's run, so two replicas triggering events with one key at once start one run; an expired row
# is taken over by `UPDATE ... WHERE expires_at <= now` and swept later. `key_hash` is the sha256 of
# the key's canonical text (`cel_keys.key_text`). Added by migration 8.
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("function_id", sa.String(128), primary_key=True),
    sa.Column("key_hash", sa.String(64), primary_key=True),
    # The event whose run holds the key.
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_idempotency_keys_expires_at", "expires_at"),
)

# scheduler: rate limits (`rate_limit`), a sliding log per (function, key). The key row is the lock a
# trigger takes (SELECT ... FOR UPDATE on Postgres; SQLite's BEGIN IMMEDIATE serialises writers) and
# counts the key's admissions still in `rate_limit_admissions`; admissions older than the period are
# pruned under that lock, so `admitted` is the number of runs started in the last period. `expires_at`
# is when the last admission leaves the window: from then on the key row and its log can be swept.
# Added by migration 8.
rate_limit_keys = sa.Table(
    "rate_limit_keys",
    metadata,
    sa.Column("function_id", sa.String(128), primary_key=True),
    sa.Column("key_hash", sa.String(64), primary_key=True),
    sa.Column("admitted", sa.Integer, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_rate_limit_keys_expires_at", "expires_at"),
)

rate_limit_admissions = sa.Table(
    "rate_limit_admissions",
    metadata,
    sa.Column("function_id", sa.String(128), primary_key=True),
    sa.Column("key_hash", sa.String(64), primary_key=True),
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("admitted_at", UTCDateTime, nullable=False),
    sa.Index("ix_rate_limit_admissions_key_time", "function_id", "key_hash", "admitted_at"),
)

# scheduler: throttles (`throttle`), one row per (function, key): `tat` is the key's theoretical
# arrival time (GCRA), the earliest time the next run could start with no burst to spend. A trigger
# locks the row (SELECT ... FOR UPDATE on Postgres; SQLite's BEGIN IMMEDIATE serialises writers),
# gives its run a start time from it and moves it on, in the transaction that creates the run. A row
# whose `tat` has passed means the same as no row, so idle rows are swept. Added by migration 10.
throttle_keys = sa.Table(
    "throttle_keys",
    metadata,
    sa.Column("function_id", sa.String(128), primary_key=True),
    sa.Column("key_hash", sa.String(64), primary_key=True),
    sa.Column("tat", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_throttle_keys_tat", "tat"),
)

# scheduler: debounce and batching (`_pending_runs.py`). One row per (function, control, key) whose
# events are gathering into a run not yet started: the row is the lock a trigger takes (SELECT ...
# FOR UPDATE on Postgres; SQLite's BEGIN IMMEDIATE serialises writers) before joining the run.
# `first_at` is when the run's first event arrived (debounce's `max_wait` counts from it); `size` and
# `bytes` are how many events, and how much event JSON, the run holds. A row whose run was leased or
# ended is stale: the next event opens a new run, and the sweeper deletes what is left. Added by
# migration 11.
pending_runs = sa.Table(
    "pending_runs",
    metadata,
    sa.Column("function_id", sa.String(128), primary_key=True),
    # debounce or batching
    sa.Column("control", sa.String(16), primary_key=True),
    sa.Column("key_hash", sa.String(64), primary_key=True),
    # None only inside the transaction that inserted the row and is creating its run.
    sa.Column("run_id", sa.String(64), nullable=True),
    sa.Column("first_at", UTCDateTime, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# scheduler: every event a debounced or batched run took in, so a replayed trigger of the event finds
# its run (a debounced run's own `event_id` moves to its newest event; a batch run's is its first).
# Batching keeps the event itself here too, in `position` order: the job's `events` are read from
# these rows, so adding an event to a batch writes one row, not the whole batch again. Kept as long
# as runs are, like the unique (event, function) of the runs table. Added by migration 11.
accumulated_events = sa.Table(
    "accumulated_events",
    metadata,
    sa.Column("function_id", sa.String(128), primary_key=True),
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    # Batching only: the event as kept with a run (`event_to_json`).
    sa.Column("event", JSONDocument, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_accumulated_events_run", "run_id", "position"),
)

# scheduler: the circuit breaker of each push endpoint, written when its state changes so that
# GetFunction can show it and a restarted dispatcher resumes where it was. Added by migration 4.
push_endpoints = sa.Table(
    "push_endpoints",
    metadata,
    sa.Column("url", sa.String(2048), primary_key=True),
    # closed, open or half_open.
    sa.Column("circuit_state", sa.String(16), nullable=False),
    sa.Column("consecutive_failures", sa.Integer, nullable=False),
    # While open: when a probe request may be tried (the breaker is half open from then on).
    sa.Column("retry_at", UTCDateTime, nullable=True),
    sa.Column("last_error", JSONDocument, nullable=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# subscription: consumer groups created by CreateConsumerGroup (or by the first member to join one).
# Their position and pending messages live in the stream's own consumer group (Redis keeps them across
# restarts of the service); this row is what the group is. Added by migration 5.
consumer_groups = sa.Table(
    "consumer_groups",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("pattern", sa.String(1024), nullable=False),
    sa.Column("filter", sa.Text, nullable=False),
    # new, earliest, or a sequence as text.
    sa.Column("start", sa.String(32), nullable=False),
    sa.Column("ack_wait_ms", sa.BigInteger, nullable=False),
    sa.Column("max_deliver", sa.Integer, nullable=False),
    sa.Column("max_in_flight", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# subscription: what each event name and topic has carried, counted once per stream message by
# whichever subscription replica reads it from the stats consumer group. Added by migration 5.
topic_stats = sa.Table(
    "topic_stats",
    metadata,
    sa.Column("subject", sa.String(300), primary_key=True),
    sa.Column("messages", sa.BigInteger, nullable=False),
    sa.Column("first_sequence", sa.BigInteger, nullable=False),
    sa.Column("last_sequence", sa.BigInteger, nullable=False),
    sa.Column("first_message_at", UTCDateTime, nullable=False),
    sa.Column("last_message_at", UTCDateTime, nullable=False),
)
