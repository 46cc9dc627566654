"""Server settings: flags override `IRONFLOW_*` environment variables, which override defaults."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ironflow.services.core.durations import parse_duration
from ironflow.services.core.firehose import DEFAULT_FIREHOSE_MAXLEN, DEFAULT_MEMORY_FIREHOSE_MAXLEN
from ironflow.services.core.storage import DEFAULT_SQLITE_URL


def _duration(field: str) -> Any:
    """A settings field that takes seconds or strings such as "30s" and "5m"."""
    return BeforeValidator(lambda value: parse_duration(value, field=field, allow_zero=False))


DEFAULT_PORT = 9123


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IRONFLOW_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    database_url: str = DEFAULT_SQLITE_URL
    # Postgres only: keep Ironflow's tables in this schema (created if missing).
    database_schema: str | None = None
    stream_url: str = "memory://"
    # Newest firehose messages kept on the stream for replay and for subscribers resuming from a
    # sequence (events themselves are stored in the database forever). Unset: 50,000 on the
    # in-process stream, whose messages live in the server's memory (about 1 KiB each), 1,000,000
    # on Redis.
    firehose_retention: int | None = Field(default=None, ge=1000)
    # Prefix of every stream key, so several deployments can share one Redis.
    stream_prefix: str = Field(default="ironflow", pattern=r"^[A-Za-z0-9_.-]+$")
    # Largest event/topic `data` accepted, as compact JSON.
    max_payload_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Seconds in-flight requests get to finish after SIGINT/SIGTERM.
    graceful_timeout: float = Field(default=10.0, ge=0)
    log_level: str = "info"
    # A worker holds a job this long without a heartbeat before it is handed to another worker.
    lease_duration: Annotated[timedelta, _duration("lease_duration")] = timedelta(seconds=30)
    # How often workers are asked to heartbeat (well inside the lease).
    heartbeat_interval: Annotated[timedelta, _duration("heartbeat_interval")] = timedelta(seconds=10)
    # Messages a subscription may have waiting for its subscriber; a live subscriber that falls
    # further behind is dropped (it can resume from its last sequence).
    subscriber_buffer: int = Field(default=1000, ge=10, le=1_000_000)
    # Push mode: the key push requests are signed with (the same as the apps' ironflow.serve).
    signing_key: str | None = None
    # The longest a push request may take (a function's own timeout lowers it for that function).
    push_timeout: Annotated[timedelta, _duration("push_timeout")] = timedelta(seconds=30)
    # Requests in flight at once per push endpoint.
    push_concurrency: int = Field(default=10, ge=1, le=1000)
    # Consecutive transport failures that open an endpoint's circuit breaker, and how long it stays
    # open before one probe request is let through.
    push_breaker_threshold: int = Field(default=5, ge=1, le=1000)
    push_breaker_reset: Annotated[timedelta, _duration("push_breaker_reset")] = timedelta(seconds=30)
    # The longest wait between two delivery attempts of one run (the backoff doubles from 1 s up to it).
    push_retry_max: Annotated[timedelta, _duration("push_retry_max")] = timedelta(seconds=60)

    def firehose_maxlen(self) -> int:
        """`firehose_retention`, or the default for the configured stream backend."""
        if self.firehose_retention is not None:
            return self.firehose_retention
        if self.stream_url.startswith("memory:"):
            return DEFAULT_MEMORY_FIREHOSE_MAXLEN
        return DEFAULT_FIREHOSE_MAXLEN
