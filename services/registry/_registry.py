"""The registry: versioned function definitions.

A registration that changes nothing keeps the version; any change to a definition makes the next
version and keeps the old one in `function_versions`, so a run can always be explained by the exact
definition it started with. Registering a batch is one transaction: all of it or none of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from google.protobuf import json_format
from sqlalchemy.ext.asyncio import AsyncConnection

from ironflow.services.core.errors import ErrorCode, ServiceError, invalid_argument, not_found
from ironflow.services.core.firehose import DEFAULT_FIREHOSE_MAXLEN, FIREHOSE_STREAM, FirehoseMessage
from ironflow.services.core.ids import Clock, IdSource, random_id, utc_now
from ironflow.services.core.revisions import bump_revision
from ironflow.services.core.storage import (
    Database,
    function_versions,
    functions,
    insert_or_ignore,
    push_endpoints,
)
from ironflow.services.core.streams import Stream
from ironflow.v1 import functions_pb2

from ._validation import MAX_FUNCTIONS_PER_REQUEST, check_endpoint_url, normalise_definition

log = logging.getLogger("ironflow.registry")

DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000

_STATUS_NAMES: dict[int, str] = {
    functions_pb2.FUNCTION_STATUS_ACTIVE: "active",
    functions_pb2.FUNCTION_STATUS_PAUSED: "paused",
    functions_pb2.FUNCTION_STATUS_DELETED: "deleted",
}
_MODE_NAMES: dict[int, str] = {
    functions_pb2.FUNCTION_MODE_PULL: "pull",
    functions_pb2.FUNCTION_MODE_PUSH: "push",
}


@dataclass(frozen=True)
class StoredFunction:
    definition: functions_pb2.FunctionDefinition
    version: int
    status: str
    created_at: datetime
    updated_at: datetime
    # Push mode: the breaker of the endpoint as the scheduler's dispatcher last recorded it.
    circuit_state: str = ""

    def to_proto(self) -> functions_pb2.Function:
        status = {name: value for value, name in _STATUS_NAMES.items()}[self.status]
        function = functions_pb2.Function(
            definition=self.definition,
            version=self.version,
            status=functions_pb2.FunctionStatus.ValueType(status),
        )
        function.created_at.FromDatetime(self.created_at)
        function.updated_at.FromDatetime(self.updated_at)
        if self.definition.mode == functions_pb2.FUNCTION_MODE_PUSH:
            function.circuit_state = self.circuit_state or "closed"
        return function


def canonical_json(definition: functions_pb2.FunctionDefinition) -> dict[str, Any]:
    return json_format.MessageToDict(definition, preserving_proto_field_name=True)


def digest(document: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _definition_from_json(document: dict[str, Any]) -> functions_pb2.FunctionDefinition:
    return json_format.ParseDict(document, functions_pb2.FunctionDefinition())


def _from_row(row: sa.Row[Any]) -> StoredFunction:
    return StoredFunction(
        definition=_definition_from_json(row.definition),
        version=row.version,
        status=row.status,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class Registry:
    def __init__(
        self,
        *,
        db: Database,
        stream: Stream,
        firehose: str = FIREHOSE_STREAM,
        firehose_maxlen: int = DEFAULT_FIREHOSE_MAXLEN,
        revision_key: str | None = None,
        clock: Clock = utc_now,
        ids: IdSource = random_id,
    ) -> None:
        self._change_listeners: list[Callable[[], None]] = []
        # Bumped after every change, before answering (see services/core/revisions.py).
        self._revision_key = revision_key
        self._db = db
        self._firehose = firehose
        self._firehose_maxlen = firehose_maxlen
        self._stream = stream
        self._clock = clock
        self._ids = ids

    async def register(
        self,
        definitions: list[functions_pb2.FunctionDefinition],
        *,
        endpoint_url: str = "",
        takeover: bool = False,
    ) -> list[StoredFunction]:
        if not definitions:
            raise invalid_argument("functions", "at least one function definition is required")
        if len(definitions) > MAX_FUNCTIONS_PER_REQUEST:
            raise invalid_argument("functions", f"at most {MAX_FUNCTIONS_PER_REQUEST} per request")
        if endpoint_url:
            check_endpoint_url(endpoint_url, field="endpoint_url")
        now = self._clock()
        normalised = [
            normalise_definition(d, field=f"functions[{i}]", default_endpoint_url=endpoint_url, now=now)
            for i, d in enumerate(definitions)
        ]
        seen: set[str] = set()
        for index, definition in enumerate(normalised):
            if definition.id in seen:
                raise invalid_argument(
                    f"functions[{index}].id", f"{definition.id!r} appears twice in the request"
                )
            seen.add(definition.id)

        async def work(conn: AsyncConnection) -> list[tuple[StoredFunction, bool]]:
            return [await self._upsert(conn, d, takeover=takeover) for d in normalised]

        results = await self._db.run(work)
        changed = [stored for stored, was_changed in results if was_changed]
        if changed:
            await self._changed()
        await self._announce(changed)
        async with self._db.reading() as conn:
            return await self._with_circuits(conn, [stored for stored, _ in results])

    async def _upsert(
        self, conn: AsyncConnection, definition: functions_pb2.FunctionDefinition, *, takeover: bool
    ) -> tuple[StoredFunction, bool]:
        now = self._clock()
        document = canonical_json(definition)
        definition_digest = digest(document)
        mode = _MODE_NAMES[definition.mode]
        inserted = (
            await conn.execute(
                insert_or_ignore(
                    functions,
                    {
                        "id": definition.id,
                        "version": 1,
                        "status": "active",
                        "mode": mode,
                        "endpoint_url": definition.endpoint_url or None,
                        "definition": document,
                        "definition_digest": definition_digest,
                        "created_at": now,
                        "updated_at": now,
                    },
                    dialect=self._db.dialect,
                    conflict_columns=["id"],
                ).returning(functions.c.id)
            )
        ).scalar_one_or_none()
        if inserted is not None:
            await conn.execute(
                function_versions.insert().values(
                    function_id=definition.id,
                    version=1,
                    definition=document,
                    definition_digest=definition_digest,
                    created_at=now,
                )
            )
            return StoredFunction(definition, 1, "active", now, now), True

        current = (
            await conn.execute(sa.select(functions).where(functions.c.id == definition.id).with_for_update())
        ).one()
        if current.status != "deleted" and current.mode != mode and not takeover:
            raise ServiceError(
                ErrorCode.FAILED_PRECONDITION,
                f"function {definition.id!r} is registered in {current.mode} mode; registering it in {mode} "
                "mode replaces that, which needs an explicit takeover",
            )
        if current.definition_digest == definition_digest and current.status == "active":
            return _from_row(current), False
        version = current.version + (0 if current.definition_digest == definition_digest else 1)
        await conn.execute(
            functions.update()
            .where(functions.c.id == definition.id)
            .values(
                version=version,
                status="active",
                mode=mode,
                endpoint_url=definition.endpoint_url or None,
                definition=document,
                definition_digest=definition_digest,
                updated_at=now,
            )
        )
        if version != current.version:
            await conn.execute(
                function_versions.insert().values(
                    function_id=definition.id,
                    version=version,
                    definition=document,
                    definition_digest=definition_digest,
                    created_at=now,
                )
            )
        return StoredFunction(definition, version, "active", current.created_at, now), True

    async def get(self, function_id: str, *, version: int = 0) -> StoredFunction:
        if not function_id:
            raise invalid_argument("id", "is required")
        if version < 0:
            raise invalid_argument("version", "must not be negative")
        async with self._db.reading() as conn:
            row = (await conn.execute(sa.select(functions).where(functions.c.id == function_id))).first()
            if row is None or (row.status == "deleted" and version == 0):
                raise not_found("function", function_id)
            if version in (0, row.version):
                return (await self._with_circuits(conn, [_from_row(row)]))[0]
            old = (
                await conn.execute(
                    sa.select(function_versions).where(
                        function_versions.c.function_id == function_id, function_versions.c.version == version
                    )
                )
            ).first()
        if old is None:
            raise not_found("function version", f"{function_id}@{version}")
        return StoredFunction(
            _definition_from_json(old.definition), old.version, row.status, row.created_at, old.created_at
        )

    async def list_functions(
        self, *, status: int = 0, limit: int = 0, cursor: str = ""
    ) -> tuple[list[StoredFunction], str]:
        if limit < 0 or limit > MAX_LIST_LIMIT:
            raise invalid_argument("limit", f"must be between 1 and {MAX_LIST_LIMIT}")
        limit = limit or DEFAULT_LIST_LIMIT
        query = sa.select(functions).order_by(functions.c.id).limit(limit + 1)
        if status:
            if status not in _STATUS_NAMES:
                raise invalid_argument("status", f"unknown status {status}")
            query = query.where(functions.c.status == _STATUS_NAMES[status])
        else:
            query = query.where(functions.c.status != "deleted")
        if cursor:
            query = query.where(functions.c.id > cursor)
        async with self._db.reading() as conn:
            rows = (await conn.execute(query)).all()
            page = await self._with_circuits(conn, [_from_row(row) for row in rows[:limit]])
        return page, (page[-1].definition.id if len(rows) > limit else "")

    async def set_status(self, function_id: str, status: int) -> StoredFunction:
        if status not in (functions_pb2.FUNCTION_STATUS_ACTIVE, functions_pb2.FUNCTION_STATUS_PAUSED):
            raise invalid_argument("status", "must be FUNCTION_STATUS_ACTIVE or FUNCTION_STATUS_PAUSED")
        await self._update_status(function_id, _STATUS_NAMES[status])
        return await self.get(function_id)

    async def delete(self, function_id: str) -> None:
        await self._update_status(function_id, "deleted")

    async def _update_status(self, function_id: str, status: str) -> None:
        if not function_id:
            raise invalid_argument("id", "is required")

        async def work(conn: AsyncConnection) -> int:
            result = await conn.execute(
                functions.update()
                .where(functions.c.id == function_id, functions.c.status != "deleted")
                .values(status=status, updated_at=self._clock())
            )
            return int(result.rowcount)

        if await self._db.run(work) == 0:
            raise not_found("function", function_id)
        await self._changed()

    async def _with_circuits(
        self, conn: AsyncConnection, stored: list[StoredFunction]
    ) -> list[StoredFunction]:
        """Fill in the breaker state of push functions. The scheduler writes it when it changes; an
        open breaker whose reset time has passed shows as half open (its next request is the probe)."""
        urls = {
            s.definition.endpoint_url for s in stored if s.definition.mode == functions_pb2.FUNCTION_MODE_PUSH
        }
        if not urls:
            return stored
        rows = await conn.execute(sa.select(push_endpoints).where(push_endpoints.c.url.in_(sorted(urls))))
        now = self._clock()
        states: dict[str, str] = {}
        for row in rows:
            state = row.circuit_state
            if state == "open" and row.retry_at is not None and row.retry_at <= now:
                state = "half_open"
            states[row.url] = state
        return [
            replace(s, circuit_state=states.get(s.definition.endpoint_url, "closed"))
            if s.definition.mode == functions_pb2.FUNCTION_MODE_PUSH
            else s
            for s in stored
        ]

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every committed change (an in-process reader refreshes its copy)."""
        self._change_listeners.append(listener)

    async def _changed(self) -> None:
        for listener in self._change_listeners:
            listener()
        if self._revision_key is not None:
            try:
                await bump_revision(self._stream, self._revision_key)
            except ServiceError:
                # Readers still refresh on their own timer; the change is committed either way.
                log.warning("could not record a functions revision", exc_info=True)

    async def _announce(self, changed: list[StoredFunction]) -> None:
        """Publish `system.function.<id>.registered` for each new or changed definition."""
        if not changed:
            return
        now = self._clock()
        messages = [
            FirehoseMessage(
                subject=f"system.function.{stored.definition.id}.registered",
                event_id=self._ids("evt"),
                timestamp=now,
                data={"function_id": stored.definition.id, "version": stored.version},
            ).encode()
            for stored in changed
        ]
        try:
            await self._stream.append_many(self._firehose, messages, maxlen=self._firehose_maxlen)
        except Exception:  # noqa: BLE001 - the registration is durable; the notice is best effort
            log.warning("could not publish registration events for %d functions", len(changed))
