"""Topic statistics: per event name and topic, how many messages, first and last sequence and time.

Counted from the firehose through a consumer group of its own, so each message is counted once however
many replicas of this service run (each replica reads a share), and written to the database in one
transaction per batch. Engine subjects (`system.run.<id>...`) are not counted: they name individual
runs, so there would be one row per run.

A crash between writing a batch and acknowledging it counts that batch again when another reader
claims it; counts are for operators, and this keeps the hot path to one commit per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from ironflow.services.core.errors import ServiceError, invalid_argument, not_found
from ironflow.services.core.firehose import FirehoseMessage
from ironflow.services.core.storage import Database, topic_stats
from ironflow.services.core.streams import GroupEntry, Stream
from ironflow.services.core.subjects import SYSTEM_NAMESPACE, Pattern, split_subject
from ironflow.services.core.tasks import cancel_requested, stop_task

log = logging.getLogger("ironflow.subscription")

STATS_GROUP = "topic-stats"
_BATCH = 500
_BLOCK_MS = 1000
# A reader that died holding a batch: another takes it over after this long.
_ORPHAN_IDLE_MS = 60_000
_RETRY_DELAY_S = 1.0
# Pause after a batch that held messages (see `_count_forever`).
_LINGER_S = 0.05
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class TopicStats:
    subject: str
    messages: int
    first_sequence: int
    last_sequence: int
    first_message_at: datetime
    last_message_at: datetime


@dataclass(slots=True)
class _Tally:
    messages: int
    first_sequence: int
    last_sequence: int
    first_at: datetime
    last_at: datetime


def is_topic_subject(subject: str) -> bool:
    try:
        return split_subject(subject)[0] != SYSTEM_NAMESPACE
    except ServiceError:
        return False


class TopicCounter:
    """Reads the firehose through the stats group and folds each batch into `topic_stats`."""

    def __init__(self, *, db: Database, stream: Stream, firehose: str, consumer: str) -> None:
        self._db = db
        self._stream = stream
        self._firehose = firehose
        self._consumer = consumer
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        await self._stream.create_group(self._firehose, STATS_GROUP, start="$")
        self._task = asyncio.create_task(self._count_forever(), name="topic-stats")

    async def stop(self) -> None:
        self._stopping = True
        await stop_task(self._task)

    async def count_once(self, *, block_ms: int | None = None) -> int:
        """Fold one batch (orphans of a dead reader first); returns how many messages it held."""
        batch = await self._stream.claim_idle(
            self._firehose, STATS_GROUP, self._consumer, min_idle_ms=_ORPHAN_IDLE_MS, count=_BATCH
        )
        if not batch:
            batch = await self._stream.read_group(
                self._firehose, STATS_GROUP, self._consumer, count=_BATCH, block_ms=block_ms
            )
        if batch:
            await self._fold(batch)
            await self._stream.ack(self._firehose, STATS_GROUP, [one.entry.id for one in batch])
        return len(batch)

    async def _count_forever(self) -> None:
        while not self._stopping and not cancel_requested():
            try:
                if await self.count_once(block_ms=_BLOCK_MS):
                    # Let the next batch gather: the counts are for ListTopics, where a moment's lag
                    # is invisible, and a transaction per message competed with the runs' own.
                    await asyncio.sleep(_LINGER_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - counting waits for the store to come back
                log.warning("counting topic messages failed (%s); retrying", exc)
                await asyncio.sleep(_RETRY_DELAY_S)
                # The stream store may have lost the group with its data; still away is fine too.
                with contextlib.suppress(Exception):
                    await self._stream.create_group(self._firehose, STATS_GROUP, start="$")

    async def _fold(self, batch: list[GroupEntry]) -> None:
        tallies: dict[str, _Tally] = {}
        for one in batch:
            subject = one.entry.fields.get("subject", "")
            if not is_topic_subject(subject):
                continue
            at = FirehoseMessage.decode(one.entry.fields).timestamp
            sequence = one.entry.sequence
            tally = tallies.get(subject)
            if tally is None:
                tallies[subject] = _Tally(1, sequence, sequence, at, at)
            else:
                tally.messages += 1
                tally.last_sequence = max(tally.last_sequence, sequence)
                tally.last_at = max(tally.last_at, at)
        if tallies:
            await self._db.run(lambda conn: self._upsert(conn, tallies))

    async def _upsert(self, conn: AsyncConnection, tallies: dict[str, _Tally]) -> None:
        insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        for subject, tally in sorted(tallies.items()):  # a fixed order, so replicas never deadlock
            statement = insert(topic_stats).values(
                subject=subject,
                messages=tally.messages,
                first_sequence=tally.first_sequence,
                last_sequence=tally.last_sequence,
                first_message_at=tally.first_at,
                last_message_at=tally.last_at,
            )
            await conn.execute(
                statement.on_conflict_do_update(
                    index_elements=[topic_stats.c.subject],
                    # Replicas may fold batches out of order: the last message is the greatest.
                    set_={
                        "messages": topic_stats.c.messages + statement.excluded.messages,
                        "last_sequence": _greatest(
                            topic_stats.c.last_sequence, statement.excluded.last_sequence
                        ),
                        "last_message_at": _greatest(
                            topic_stats.c.last_message_at, statement.excluded.last_message_at
                        ),
                    },
                )
            )


def _greatest(current: Any, incoming: Any) -> Any:
    return sa.case((incoming > current, incoming), else_=current)


class TopicQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, subject: str) -> TopicStats:
        if not subject:
            raise invalid_argument("subject", "a subject is required, e.g. events:order.placed")
        if not is_topic_subject(subject):
            raise invalid_argument(
                "subject",
                f"{subject[:80]!r} is not an events: or topic: subject; only those are counted",
            )
        async with self._db.reading() as conn:
            row = (await conn.execute(sa.select(topic_stats).where(topic_stats.c.subject == subject))).first()
        if row is None:
            raise not_found("topic", subject)
        return _stats(row)

    async def list(self, *, pattern: str, limit: int, cursor: str) -> tuple[list[TopicStats], str]:
        if limit < 0 or limit > MAX_LIST_LIMIT:
            raise invalid_argument("limit", f"must be between 1 and {MAX_LIST_LIMIT}")
        limit = limit or DEFAULT_LIST_LIMIT
        wanted = Pattern.parse(pattern, field="pattern") if pattern else None
        found: list[TopicStats] = []
        after = cursor
        # One more than the page, so a full last page is known to be the last (empty next_cursor).
        while len(found) <= limit:
            async with self._db.reading() as conn:
                rows = (
                    await conn.execute(
                        sa.select(topic_stats)
                        .where(topic_stats.c.subject > after)
                        .order_by(topic_stats.c.subject)
                        .limit(500)
                    )
                ).all()
            if not rows:
                break
            for row in rows:
                after = row.subject
                if wanted is None or wanted.matches(row.subject):
                    found.append(_stats(row))
                    if len(found) > limit:
                        break
        if len(found) > limit:
            return found[:limit], found[limit - 1].subject
        return found, ""


def _stats(row: sa.Row[object]) -> TopicStats:
    values = row._mapping
    return TopicStats(
        subject=values["subject"],
        messages=values["messages"],
        first_sequence=values["first_sequence"],
        last_sequence=values["last_sequence"],
        first_message_at=values["first_message_at"],
        last_message_at=values["last_message_at"],
    )
