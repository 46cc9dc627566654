"""Ingest: store every event first, then put it on the stream, then hand it to the scheduler.

Order matters. The event is committed before anything else, so an acknowledged emit is never lost.
The stream append and the scheduler's trigger happen after the commit; if the process dies between
them, the outbox relay below re-appends events whose stream sequence was never recorded (delivery on
the stream is therefore at least once; subscribers see the same event id twice in that rare case).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from ironflow.services.core import telemetry
from ironflow.services.core.errors import ErrorCode, ServiceError, invalid_argument, not_found
from ironflow.services.core.firehose import DEFAULT_FIREHOSE_MAXLEN, FIREHOSE_STREAM, FirehoseMessage
from ironflow.services.core.ids import Clock, IdSource, random_id, utc_now
from ironflow.services.core.storage import Database
from ironflow.services.core.streams import Stream
from ironflow.services.core.subjects import NAMESPACES, subject_for, validate_name
from ironflow.v1 import runs_pb2

from ._store import EventStore, StoredEvent
from ._validation import DEFAULT_MAX_PAYLOAD_BYTES, check_data, check_idempotency_key, check_metadata

log = logging.getLogger("ironflow.ingest")

# Starts the runs an event triggers and returns their ids (SchedulerService.Trigger).
Trigger = Callable[[StoredEvent], Awaitable[list[str]]]
# Blocks until the runs end or the timeout passes; one result per run (SchedulerService.WaitForRuns).
WaitForRuns = Callable[[list[str], timedelta], Awaitable[list[runs_pb2.RunResult]]]

DEFAULT_SYNC_TIMEOUT = timedelta(seconds=30)
MAX_SYNC_TIMEOUT = timedelta(minutes=5)

# How long the sequence recorder lets records gather after each flush (see `_record_sequences_forever`).
RECORD_LINGER_S = 0.05

DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 1000


@dataclass(frozen=True, kw_only=True)
class IngestSettings:
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    firehose_maxlen: int = DEFAULT_FIREHOSE_MAXLEN
    # How often the outbox relay looks for events a crash left off the stream, and how old they must
    # be (younger ones are most likely still being appended by the request that stored them).
    outbox_interval: timedelta = timedelta(seconds=1)
    outbox_grace: timedelta = timedelta(seconds=5)
    firehose: str = FIREHOSE_STREAM


@dataclass(frozen=True)
class Accepted:
    event: StoredEvent
    sequence: int
    duplicate: bool


class Ingest:
    def __init__(
        self,
        *,
        db: Database,
        stream: Stream,
        trigger: Trigger | None = None,
        wait_for_runs: WaitForRuns | None = None,
        settings: IngestSettings | None = None,
        clock: Clock = utc_now,
        ids: IdSource = random_id,
    ) -> None:
        self._store = EventStore(db)
        self._stream = stream
        self._trigger = trigger
        self._wait_for_runs = wait_for_runs
        self._settings = settings or IngestSettings()
        self._clock = clock
        self._ids = ids
        self._recorded: list[tuple[str, int]] = []
        self._triggered: list[tuple[str, list[str]]] = []
        self._record_wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._record_sequences_forever(), name="ingest-sequence-recorder"),
            asyncio.create_task(self._relay_outbox_forever(), name="ingest-outbox-relay"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._flush_recorded()

    # -- operations -------------------------------------------------------------------------

    async def emit(
        self, name: str, data: Any, *, idempotency_key: Any = None, metadata: Any = None
    ) -> tuple[Accepted, list[str]]:
        # The span's context goes on with the event: its firehose entry, the trigger, the runs.
        with telemetry.span(telemetry.SPAN_EMIT) as span:
            accepted = await self._accept("events", name, data, idempotency_key, metadata, field="name")
            span.update_name(f"{telemetry.SPAN_EMIT} {accepted.event.name}")  # a valid name by now
            span.set_attributes(
                {
                    telemetry.ATTR_EVENT_NAME: accepted.event.name,
                    telemetry.ATTR_EVENT_ID: accepted.event.id,
                    telemetry.ATTR_EVENT_DUPLICATE: accepted.duplicate,
                }
            )
            if accepted.duplicate and accepted.event.run_ids is not None:
                return accepted, list(accepted.event.run_ids)
            # A first emit, or a repeat of one whose triggering is not recorded yet (triggering is
            # idempotent, so asking again returns the same runs).
            return accepted, await self._trigger_event(accepted.event)

    async def emit_sync(
        self,
        name: str,
        data: Any,
        *,
        idempotency_key: Any = None,
        metadata: Any = None,
        wait: timedelta | None = None,
    ) -> tuple[Accepted, list[runs_pb2.RunResult]]:
        """Emit, then wait until every run the event started has ended or `wait` [30s] passed."""
        within = DEFAULT_SYNC_TIMEOUT if wait is None else wait
        if not timedelta(0) <= within <= MAX_SYNC_TIMEOUT:
            raise invalid_argument("timeout", f"must be between 0 and {MAX_SYNC_TIMEOUT.total_seconds():g}s")
        accepted, run_ids = await self.emit(name, data, idempotency_key=idempotency_key, metadata=metadata)
        if not run_ids:
            return accepted, []
        if self._wait_for_runs is None:
            raise ServiceError(
                ErrorCode.UNAVAILABLE, "this ingest cannot reach the scheduler to wait for runs"
            )
        return accepted, await self._wait_for_runs(run_ids, within)

    async def trigger_watermark(self) -> datetime | None:
        """Every user event stored before this time has been handed to the scheduler (None: all)."""
        return await self._store.oldest_untriggered()

    async def publish(
        self, topic: str, data: Any, *, idempotency_key: Any = None, metadata: Any = None
    ) -> Accepted:
        return await self._accept("topic", topic, data, idempotency_key, metadata, field="topic")

    async def get(self, event_id: str) -> StoredEvent:
        if not event_id:
            raise invalid_argument("id", "is required")
        event = await self._store.get(event_id)
        if event is None:
            raise not_found("event", event_id)
        return event

    async def list_events(
        self, *, namespace: str = "", name: str = "", limit: int = 0, cursor: str = ""
    ) -> tuple[list[StoredEvent], str]:
        namespace = namespace or "events"
        if namespace not in NAMESPACES:
            raise invalid_argument("namespace", f"must be one of {', '.join(NAMESPACES)}")
        if name:
            validate_name(name, field="name")
        if limit < 0 or limit > MAX_LIST_LIMIT:
            raise invalid_argument("limit", f"must be between 1 and {MAX_LIST_LIMIT}")
        limit = limit or DEFAULT_LIST_LIMIT
        page = await self._store.page(
            namespace=namespace, name=name or None, before_position=_parse_cursor(cursor), limit=limit + 1
        )
        next_cursor = str(page[limit - 1].position) if len(page) > limit else ""
        return page[:limit], next_cursor

    # -- internals --------------------------------------------------------------------------

    async def _accept(
        self, namespace: str, name: Any, data: Any, idempotency_key: Any, metadata: Any, *, field: str
    ) -> Accepted:
        if not isinstance(name, str):
            raise invalid_argument(field, "must be a string")
        validate_name(name, field=field)
        event = StoredEvent(
            id=self._ids("evt"),
            namespace=namespace,
            name=name,
            data=check_data(data, max_bytes=self._settings.max_payload_bytes),
            metadata=check_metadata(metadata),
            idempotency_key=check_idempotency_key(idempotency_key),
            created_at=self._clock(),
            position=0,
            stream_sequence=None,
            # Set once triggering is recorded; topic messages never start runs.
            run_ids=[] if namespace != "events" else None,
        )
        stored, duplicate = await self._store.insert(event)
        if duplicate:
            return Accepted(event=stored, sequence=stored.stream_sequence or 0, duplicate=True)
        sequence = await self._append(stored)
        return Accepted(
            event=replace(stored, stream_sequence=sequence or None), sequence=sequence, duplicate=False
        )

    async def _append(self, event: StoredEvent) -> int:
        """Put a stored event on the stream; 0 when the stream is down (the relay retries later)."""
        try:
            entry = await self._stream.append(
                self._settings.firehose,
                # Subscribers can continue the emit's trace (`traceparent`, `tracestate` fields).
                telemetry.inject_trace(_firehose_message(event).encode()),
                maxlen=self._settings.firehose_maxlen,
            )
        except Exception as exc:  # noqa: BLE001 - any stream failure: the event is durable, the relay retries
            log.warning(
                "event %s stored but not yet streamed (%s); the outbox relay will retry", event.id, exc
            )
            return 0
        self._recorded.append((event.id, entry.sequence))
        self._record_wakeup.set()
        return entry.sequence

    async def _trigger_event(self, event: StoredEvent) -> list[str]:
        """Start the event's runs. If the scheduler cannot be reached the event stays untriggered and
        the sweeper hands it over later: the emit succeeds, nothing is lost."""
        if self._trigger is None:
            return []
        try:
            run_ids = await self._trigger(event)
        except Exception as exc:  # noqa: BLE001 - any failure: the event is stored, the sweeper retries
            log.warning("event %s stored but not yet triggered (%s); the sweeper will retry", event.id, exc)
            return []
        self._triggered.append((event.id, run_ids))
        self._record_wakeup.set()
        return run_ids

    async def _flush_recorded(self) -> None:
        await self._flush_triggered()
        batch, self._recorded = self._recorded, []
        if batch:
            try:
                await self._store.record_stream_sequences(batch)
            except asyncio.CancelledError:
                # Stopping mid-commit (the transaction rolled back): keep the batch for stop()'s flush.
                self._recorded = batch + self._recorded
                raise
            except Exception:
                # Unrecorded events are re-appended by the relay: a duplicate on the stream, never a loss.
                log.exception("could not record stream sequences of %d events", len(batch))

    async def _flush_triggered(self) -> None:
        batch, self._triggered = self._triggered, []
        if not batch:
            return
        try:
            await self._store.record_triggered(batch, at=self._clock())
        except asyncio.CancelledError:
            self._triggered = batch + self._triggered
            raise
        except Exception:
            # Unrecorded ones are triggered again by the sweeper, which finds the same runs.
            log.exception("could not record the triggering of %d events", len(batch))

    async def sweep_untriggered(self, *, batch_size: int = 200) -> int:
        """Hand the scheduler events whose triggering was never recorded. Returns how many."""
        if self._trigger is None:
            return 0
        await self._flush_triggered()
        pending = await self._store.untriggered(
            created_before=self._clock() - self._settings.outbox_grace, limit=batch_size
        )
        done = 0
        for event in pending:
            try:
                run_ids = await self._trigger(event)
            except Exception as exc:  # noqa: BLE001 - the scheduler is still away; try again next round
                log.warning("triggering event %s failed (%s); will retry", event.id, exc)
                break
            self._triggered.append((event.id, run_ids))
            done += 1
        await self._flush_triggered()
        if done:
            log.info("trigger sweeper handed %d events to the scheduler", done)
        return done

    async def _record_sequences_forever(self) -> None:
        # One transaction per batch of appended events, not one per event.
        while True:
            # Emits that arrive while a flush commits, or within the linger after it, are gathered
            # into the next one. The records are bookkeeping (the outbox relay repairs a lost one),
            # so a few milliseconds' delay costs nothing, and with one run at a time it halves the
            # transactions these flushes take from the runs' own.
            await self._record_wakeup.wait()
            self._record_wakeup.clear()
            await self._flush_recorded()
            await asyncio.sleep(RECORD_LINGER_S)

    async def _relay_outbox_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.outbox_interval.total_seconds())
            try:
                await self.relay_outbox()
            except Exception:
                log.exception("outbox relay failed; retrying in %s", self._settings.outbox_interval)
            try:
                await self.sweep_untriggered()
            except Exception:
                log.exception("trigger sweeper failed; retrying in %s", self._settings.outbox_interval)

    async def relay_outbox(self, *, batch_size: int = 500) -> int:
        """Append events that were stored but never recorded as streamed. Returns how many."""
        await self._flush_recorded()
        pending = await self._store.unstreamed(
            created_before=self._clock() - self._settings.outbox_grace, limit=batch_size
        )
        if not pending:
            return 0
        entries = await self._stream.append_many(
            self._settings.firehose,
            [_firehose_message(event).encode() for event in pending],
            maxlen=self._settings.firehose_maxlen,
        )
        await self._store.record_stream_sequences(
            [(event.id, entry.sequence) for event, entry in zip(pending, entries, strict=True)]
        )
        log.info("outbox relay streamed %d events", len(pending))
        return len(pending)


def _firehose_message(event: StoredEvent) -> FirehoseMessage:
    return FirehoseMessage(
        subject=subject_for(event.namespace, event.name),
        event_id=event.id,
        timestamp=event.created_at,
        data=event.data,
        metadata=event.metadata,
    )


def _parse_cursor(cursor: str) -> int | None:
    if not cursor:
        return None
    if not cursor.isdigit():
        raise invalid_argument("cursor", "is not a cursor returned by a previous page")
    return int(cursor)
