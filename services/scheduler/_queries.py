"""Reading runs and steps for clients: GetRun, ListRuns, GetRunSteps and run results."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ironflow.services.core.errors import invalid_argument, not_found
from ironflow.services.core.storage import Database, runs, steps
from ironflow.v1 import runs_pb2

from ._convert import RUN_STATUS_NAMES, run_to_proto, step_to_proto

DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 1000


async def get_run(db: Database, run_id: str) -> runs_pb2.Run:
    if not run_id:
        raise invalid_argument("id", "is required")
    async with db.reading() as conn:
        row = (await conn.execute(sa.select(runs).where(runs.c.id == run_id))).first()
        if row is None:
            raise not_found("run", run_id)
        children = await conn.execute(
            sa.select(runs.c.id).where(runs.c.parent_run_id == run_id).order_by(runs.c.created_at, runs.c.id)
        )
        child_ids = list(children.scalars())
    run = run_to_proto(row)
    run.child_run_ids.extend(child_ids)
    return run


async def list_runs(db: Database, request: runs_pb2.ListRunsRequest) -> runs_pb2.ListRunsResponse:
    if not 0 <= request.limit <= MAX_LIST_LIMIT:
        raise invalid_argument("limit", f"must be between 1 and {MAX_LIST_LIMIT}")
    limit = request.limit or DEFAULT_LIST_LIMIT
    query = sa.select(runs)
    if request.function_id:
        query = query.where(runs.c.function_id == request.function_id)
    if request.event_id:
        query = query.where(runs.c.event_id == request.event_id)
    if request.status:
        if request.status not in RUN_STATUS_NAMES:
            raise invalid_argument("status", f"unknown run status {request.status}")
        query = query.where(runs.c.status == RUN_STATUS_NAMES[request.status])
    if request.cursor:
        created_at, run_id = _parse_cursor(request.cursor)
        query = query.where(
            sa.or_(
                runs.c.created_at < created_at,
                sa.and_(runs.c.created_at == created_at, runs.c.id < run_id),
            )
        )
    query = query.order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit + 1)
    async with db.reading() as conn:
        rows = (await conn.execute(query)).all()
    page = rows[:limit]
    cursor = f"{page[-1].created_at.isoformat()}|{page[-1].id}" if len(rows) > limit else ""
    return runs_pb2.ListRunsResponse(runs=[run_to_proto(row) for row in page], next_cursor=cursor)


async def get_run_steps(db: Database, run_id: str) -> list[runs_pb2.Step]:
    if not run_id:
        raise invalid_argument("run_id", "is required")
    async with db.reading() as conn:
        exists = (await conn.execute(sa.select(runs.c.id).where(runs.c.id == run_id))).first()
        if exists is None:
            raise not_found("run", run_id)
        rows = (
            await conn.execute(
                sa.select(steps).where(steps.c.run_id == run_id).order_by(steps.c.started_at, steps.c.step_id)
            )
        ).all()
    return [step_to_proto(row) for row in rows]


async def read_runs(db: Database, run_ids: Sequence[str]) -> dict[str, sa.Row[Any]]:
    async with db.reading() as conn:
        rows = await conn.execute(sa.select(runs).where(runs.c.id.in_(list(run_ids))))
        return {row.id: row for row in rows}


def run_result(row: Any, *, timed_out: bool = False) -> runs_pb2.RunResult:
    run = run_to_proto(row)
    return runs_pb2.RunResult(
        run_id=run.id,
        function_id=run.function_id,
        status=run.status,
        output=run.output,
        error=run.error if run.HasField("error") else None,
        timed_out=timed_out,
    )


def _parse_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created_at, run_id = cursor.split("|", 1)
        return datetime.fromisoformat(created_at), run_id
    except ValueError:
        raise invalid_argument("cursor", "is not a cursor returned by a previous page") from None
