"""Consumer groups as records: what a group is (pattern, filter, start, limits), kept in the database.

A group's progress (what it has delivered, what is pending) lives in the stream's own consumer group,
which Redis keeps across restarts of this service; the record is created first, so a crash between the
two leaves a record whose stream group the next member to join creates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ironflow.services.core.errors import ErrorCode, ServiceError, invalid_argument, not_found
from ironflow.services.core.storage import Database, consumer_groups, insert_or_ignore
from ironflow.services.core.subjects import Pattern

from ._messages import Selector

DEFAULT_ACK_WAIT = timedelta(seconds=30)
MIN_ACK_WAIT = timedelta(milliseconds=100)
MAX_ACK_WAIT = timedelta(hours=12)
DEFAULT_MAX_DELIVER = 5
MAX_MAX_DELIVER = 1000
DEFAULT_MAX_IN_FLIGHT = 1000
MAX_MAX_IN_FLIGHT = 100_000
START_NEW = "new"
START_EARLIEST = "earliest"

# Group names become a token of the dead-letter subject and part of stream keys: keep them plain.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def dead_letter_subject(group: str) -> str:
    return f"system.consumer.{group}.dead_letter"


def check_group_name(name: str, *, field: str = "group.name") -> str:
    if not name:
        raise invalid_argument(field, "a consumer group needs a name")
    if _NAME.fullmatch(name) is None:
        raise invalid_argument(field, f"must be 1 to 64 ASCII letters, digits, '_' or '-', got {name[:80]!r}")
    return name


def _check_start(start: str) -> str:
    start = start.strip() or START_NEW
    if start in (START_NEW, START_EARLIEST):
        return start
    if start.isascii() and start.isdigit():
        return str(int(start))
    raise invalid_argument("group.start", f"must be 'new', 'earliest' or a sequence number, got {start!r}")


@dataclass(frozen=True, slots=True)
class GroupConfig:
    name: str
    pattern: str
    filter: str
    start: str
    ack_wait: timedelta
    max_deliver: int
    max_in_flight: int
    created_at: datetime

    @classmethod
    def checked(
        cls,
        *,
        name: str,
        pattern: str,
        filter_text: str,
        start: str,
        ack_wait: timedelta | None,
        max_deliver: int,
        max_in_flight: int,
        created_at: datetime,
    ) -> GroupConfig:
        """Validate and fill defaults; every error names the field (`group.pattern`, ...)."""
        check_group_name(name)
        if not pattern:
            raise invalid_argument("group.pattern", "a consumer group needs a pattern")
        pattern = str(Pattern.parse(pattern, field="group.pattern"))
        Selector.compile([pattern], filter_text, patterns_field="group.pattern", filter_field="group.filter")
        # Unset (None) takes the default; an explicit zero is an error, not a silent default.
        wait = ack_wait if ack_wait is not None else DEFAULT_ACK_WAIT
        if not MIN_ACK_WAIT <= wait <= MAX_ACK_WAIT:
            raise invalid_argument(
                "group.ack_wait",
                f"must be between {MIN_ACK_WAIT.total_seconds():g}s and {MAX_ACK_WAIT.total_seconds():g}s",
            )
        if not 0 <= max_deliver <= MAX_MAX_DELIVER:
            raise invalid_argument(
                "group.max_deliver",
                f"must be between 1 and {MAX_MAX_DELIVER} (0 or unset: {DEFAULT_MAX_DELIVER})",
            )
        if not 0 <= max_in_flight <= MAX_MAX_IN_FLIGHT:
            raise invalid_argument(
                "group.max_in_flight",
                f"must be between 1 and {MAX_MAX_IN_FLIGHT} (0 or unset: {DEFAULT_MAX_IN_FLIGHT})",
            )
        return cls(
            name=name,
            pattern=pattern,
            filter=filter_text.strip(),
            start=_check_start(start),
            ack_wait=wait,
            max_deliver=max_deliver or DEFAULT_MAX_DELIVER,
            max_in_flight=max_in_flight or DEFAULT_MAX_IN_FLIGHT,
            created_at=created_at,
        )

    def selector(self) -> Selector:
        return Selector.compile(
            [self.pattern], self.filter, patterns_field="group.pattern", filter_field="group.filter"
        )

    def differences(self, other: GroupConfig) -> list[str]:
        fields = ("pattern", "filter", "start", "ack_wait", "max_deliver", "max_in_flight")
        return [name for name in fields if getattr(self, name) != getattr(other, name)]


class GroupStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, config: GroupConfig) -> tuple[GroupConfig, bool]:
        """Insert the group; an identical existing one is returned as is (created False), a different
        one is ALREADY_EXISTS naming what differs."""

        async def work(conn: AsyncConnection) -> tuple[GroupConfig, bool]:
            inserted = await conn.execute(
                insert_or_ignore(
                    consumer_groups,
                    _row(config),
                    dialect=self._db.dialect,
                    conflict_columns=["name"],
                ).returning(consumer_groups.c.name)
            )
            if inserted.first() is not None:
                return config, True
            existing = await _get(conn, config.name)
            assert existing is not None
            differs = config.differences(existing)
            if differs:
                raise ServiceError(
                    ErrorCode.ALREADY_EXISTS,
                    f"consumer group {config.name!r} exists with a different {', '.join(differs)}; "
                    "delete it first or use the same settings",
                )
            return existing, False

        return await self._db.run(work)

    async def get(self, name: str) -> GroupConfig:
        async with self._db.reading() as conn:
            found = await _get(conn, name)
        if found is None:
            raise not_found("consumer group", name)
        return found

    async def find(self, name: str) -> GroupConfig | None:
        async with self._db.reading() as conn:
            return await _get(conn, name)

    async def list(self) -> list[GroupConfig]:
        async with self._db.reading() as conn:
            rows = await conn.execute(sa.select(consumer_groups).order_by(consumer_groups.c.name))
            return [_config(row) for row in rows]

    async def delete(self, name: str) -> bool:
        async def work(conn: AsyncConnection) -> bool:
            result = await conn.execute(consumer_groups.delete().where(consumer_groups.c.name == name))
            return bool(result.rowcount)

        return await self._db.run(work)


async def _get(conn: AsyncConnection, name: str) -> GroupConfig | None:
    row = (await conn.execute(sa.select(consumer_groups).where(consumer_groups.c.name == name))).first()
    return _config(row) if row is not None else None


def _row(config: GroupConfig) -> dict[str, object]:
    return {
        "name": config.name,
        "pattern": config.pattern,
        "filter": config.filter,
        "start": config.start,
        "ack_wait_ms": int(config.ack_wait / timedelta(milliseconds=1)),
        "max_deliver": config.max_deliver,
        "max_in_flight": config.max_in_flight,
        "created_at": config.created_at,
    }


def _config(row: sa.Row[object]) -> GroupConfig:
    values = row._mapping
    return GroupConfig(
        name=values["name"],
        pattern=values["pattern"],
        filter=values["filter"],
        start=values["start"],
        ack_wait=timedelta(milliseconds=values["ack_wait_ms"]),
        max_deliver=values["max_deliver"],
        max_in_flight=values["max_in_flight"],
        created_at=values["created_at"],
    )
