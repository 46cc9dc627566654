"""The gateway's side of pull delivery: taking job tickets from the stream's consumer group.

The scheduler puts one ticket per due run on `<prefix>:jobs:<function_id>` (see the scheduler's
`_tickets.py`). Every gateway replica reads those streams as one consumer group, so each ticket
reaches one replica; a replica asks only for as many tickets as its workers have free slots. A
ticket it took but could not use goes straight back (made idle, so the next claim takes it); a
ticket left pending by a replica that died is claimed by another after `claim_after`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from ironflow.services.core.errors import ErrorCode, ServiceError
from ironflow.services.core.streams import GroupEntry, Stream

log = logging.getLogger("ironflow.worker_gateway")

# The scheduler's names for the same streams and group; repeated here (rather than imported) because
# a service never imports another service's code, only its contracts.
JOBS_GROUP = "gateways"
# Large enough that a claim by any replica takes the ticket at once (see Stream.set_idle).
_RELEASED_IDLE_MS = 10**12


def jobs_key(prefix: str, function_id: str) -> str:
    return f"{prefix}:jobs:{function_id}"


@dataclass(frozen=True)
class Ticket:
    entry_id: str
    run_id: str


class TicketReader:
    def __init__(self, *, stream: Stream, prefix: str, consumer: str, claim_after: timedelta) -> None:
        self._stream = stream
        self._prefix = prefix
        self.consumer = consumer
        self._claim_after_ms = int(claim_after.total_seconds() * 1000)
        self._groups: set[str] = set()

    async def take(self, function_id: str, count: int) -> list[Ticket]:
        """Up to `count` tickets: first ones another replica abandoned, then new ones."""
        key = jobs_key(self._prefix, function_id)
        if key not in self._groups:
            # Start at "0": tickets issued before any gateway looked (or before Redis lost the
            # group) are still delivered.
            await self._stream.create_group(key, JOBS_GROUP, start="0")
            self._groups.add(key)
        try:
            entries: list[GroupEntry] = await self._stream.claim_idle(
                key, JOBS_GROUP, self.consumer, min_idle_ms=self._claim_after_ms, count=count
            )
            if len(entries) < count:
                entries += await self._stream.read_group(
                    key, JOBS_GROUP, self.consumer, count=count - len(entries), block_ms=None
                )
        except ServiceError as exc:
            if exc.code == ErrorCode.NOT_FOUND:  # the group vanished (Redis lost its data): recreate
                self._groups.discard(key)
                return []
            raise
        tickets = []
        for delivered in entries:
            run_id = delivered.entry.fields.get("run_id", "")
            tickets.append(Ticket(entry_id=delivered.entry.id, run_id=run_id))
        return tickets

    async def done(self, function_id: str, tickets: Sequence[Ticket]) -> None:
        if tickets:
            await self._stream.ack(
                jobs_key(self._prefix, function_id), JOBS_GROUP, [ticket.entry_id for ticket in tickets]
            )

    async def give_back(self, function_id: str, tickets: Sequence[Ticket]) -> None:
        """Tickets this replica cannot use now: any replica's next claim takes them."""
        if tickets:
            await self._stream.set_idle(
                jobs_key(self._prefix, function_id),
                JOBS_GROUP,
                self.consumer,
                [ticket.entry_id for ticket in tickets],
                idle_ms=_RELEASED_IDLE_MS,
            )
