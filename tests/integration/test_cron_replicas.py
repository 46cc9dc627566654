"""The acceptance test of cron triggers: the distributed shape with two scheduler replicas, in real
time. Every service is its own `ironflow service` process on Postgres and Redis (registry, ingest,
worker-gateway, and the scheduler twice); a worker registers an every-minute function through the
gateway. Two consecutive ticks each start exactly one run, which the worker completes with the tick's
time from its event, and no tick ever starts a second run.

It takes real minutes (the first tick comes at the next minute boundary, the second one a minute
later), so it is the only test of cron triggers that waits for the clock.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import ironflow
from ironflow.services.core.storage import Database, runs
from tests.conftest import POSTGRES_URL, unique_name
from tests.replicas import running_services
from tests.support import eventually

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(300)]


def ticking_function(function_id: str) -> ironflow.Function:
    @ironflow.function(id=function_id, triggers=[ironflow.on_cron("* * * * *")])
    async def tick(ctx: ironflow.Context) -> dict[str, Any]:
        return {"name": ctx.event.name, "scheduled_at": ctx.event.data["scheduled_at"]}

    return tick


async def test_an_every_minute_schedule_fires_once_per_minute_with_two_schedulers(tmp_path: Path) -> None:
    function_id = unique_name("every-minute")
    async with running_services(tmp_path, "cron") as services:
        db = Database.open(POSTGRES_URL, schema=services.schema)
        worker = ironflow.Worker(
            server_url=services.url("worker-gateway"), functions=[ticking_function(function_id)]
        )
        worker.start()
        try:

            async def completed_ticks() -> list[Any] | None:
                services.check_running()
                async with db.reading() as conn:
                    rows = (
                        await conn.execute(
                            sa.select(runs.c.status, runs.c.input, runs.c.output).where(
                                runs.c.function_id == function_id
                            )
                        )
                    ).all()
                done = sorted(
                    (row for row in rows if row.status == "completed"),
                    key=lambda row: row.input["event"]["data"]["scheduled_at"],
                )
                return rows if len(done) >= 2 else None

            # The first tick is the next minute boundary after the worker registers, the second one
            # a minute later: at most about two minutes.
            rows = await eventually(completed_ticks, within=160, interval=0.5, what="two completed ticks")
        finally:
            await worker.stop()
            await db.close()

    scheduled = [row.input["event"]["data"]["scheduled_at"] for row in rows]
    assert len(scheduled) == len(set(scheduled)), f"a tick started two runs: {sorted(scheduled)}"
    times = sorted(datetime.fromisoformat(text.replace("Z", "+00:00")) for text in scheduled)
    assert all(later - earlier == timedelta(minutes=1) for earlier, later in itertools.pairwise(times))
    for row in rows:
        event = row.input["event"]
        assert event["name"] == f"system.cron.{function_id}"
        if row.status == "completed":
            assert row.output == {"name": event["name"], "scheduled_at": event["data"]["scheduled_at"]}
