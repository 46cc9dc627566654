"""How long the scheduler takes to match one stored event against open `wait_for_event` waits.

    python bench/wait_matching.py [--backend sqlite|postgres] [--waits 10000] [--events 200]

Sets up N runs waiting for `shipment.created` on distinct keys (`async.data.orderId ==
event.data.orderId`), plus a smaller set of waits whose expression yields no index key (they are
evaluated for every event of their name), then times `Scheduler.trigger` for events that resume one
wait, events whose key matches none, and events with no waits at all (the baseline). Writes JSON and
a markdown table to bench/results/. Not a test: numbers vary with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ironflow.services.core.cel_keys import key_text
from ironflow.services.core.protojson import dict_to_struct, to_timestamp
from ironflow.services.core.signals import RunNotices
from ironflow.services.core.storage import Database, migrate, runs, waits
from ironflow.services.core.streams import MemoryStream
from ironflow.services.scheduler import FunctionCatalog, Scheduler
from ironflow.v1 import common_pb2, functions_pb2

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
KEYED = "async.data.orderId == event.data.orderId"
# `||` hides the equality from the index: these waits are evaluated one by one for each event.
UNKEYED = "async.data.orderId == event.data.orderId || async.data.force == true"
RESULTS = Path(__file__).resolve().parent / "results"


async def _no_functions() -> list[functions_pb2.Function]:
    return []


def _event(name: str, data: dict[str, Any]) -> common_pb2.Event:
    event = common_pb2.Event(
        id=f"evt_{uuid.uuid4().hex}", name=name, namespace="events", data=dict_to_struct(data)
    )
    event.timestamp.CopyFrom(to_timestamp(datetime.now(UTC)))
    return event


async def _open_database(backend: str, tmp: Path) -> Database:
    if backend == "postgres":
        db = Database.open(POSTGRES_URL, schema=f"bench_{uuid.uuid4().hex[:12]}")
    else:
        db = Database.open(f"sqlite+aiosqlite:///{tmp / 'bench.db'}")
    await migrate(db)
    return db


async def _seed(db: Database, count: int, match: str, prefix: str, name: str) -> None:
    """Waiting runs and their waits, stored as the scheduler stores them after a yield."""
    now = datetime.now(UTC)
    keyed = match == KEYED
    for start in range(0, count, 2000):
        batch = range(start, min(start + 2000, count))
        async with db.transaction() as conn:
            await conn.execute(
                runs.insert(),
                [
                    {
                        "id": f"run_{prefix}_{n}",
                        "function_id": "bench-waiter",
                        "function_version": 1,
                        "event_id": f"evt_{prefix}_{n}",
                        "status": "waiting",
                        "attempt": 1,
                        "input": {
                            "event": {
                                "id": f"evt_{prefix}_{n}",
                                "name": "order.placed",
                                "data": {"orderId": f"{prefix}-{n}"},
                            }
                        },
                        "execution_sequence": 1,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for n in batch
                ],
            )
            await conn.execute(
                waits.insert(),
                [
                    {
                        "id": f"wait_{prefix}_{n}",
                        "run_id": f"run_{prefix}_{n}",
                        "step_id": "shipment",
                        "kind": "event",
                        "event_name": name,
                        "match": match,
                        "match_path": "data.orderId" if keyed else None,
                        "match_value": key_text(f"{prefix}-{n}") if keyed else None,
                        "created_at": now,
                    }
                    for n in batch
                ],
            )


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "count": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p90_ms": round(ordered[int(len(ordered) * 0.9) - 1] * 1000, 3),
        "p99_ms": round(ordered[max(int(len(ordered) * 0.99) - 1, 0)] * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }


async def _time(scheduler: Scheduler, events: list[common_pb2.Event]) -> list[float]:
    samples = []
    for event in events:
        started = time.perf_counter()
        await scheduler.trigger(event)
        samples.append(time.perf_counter() - started)
    return samples


async def run(
    backend: str, wait_count: int, event_count: int, unkeyed_count: int, tmp: Path
) -> dict[str, Any]:
    db = await _open_database(backend, tmp)
    try:
        await _seed(db, wait_count, KEYED, "k", "shipment.created")
        await _seed(db, unkeyed_count, UNKEYED, "u", "parcel.moved")
        scheduler = Scheduler(
            db=db, stream=MemoryStream(), catalog=FunctionCatalog(_no_functions), notices=RunNotices()
        )
        cases = {
            "no waits for the name (baseline)": [
                _event("order.viewed", {"orderId": f"k-{n}"}) for n in range(event_count)
            ],
            f"{wait_count} keyed waits, key matches none": [
                _event("shipment.created", {"orderId": f"none-{n}"}) for n in range(event_count)
            ],
            f"{wait_count} keyed waits, resumes one": [
                _event("shipment.created", {"orderId": f"k-{n}"}) for n in range(event_count)
            ],
            f"{unkeyed_count} unkeyed waits (each evaluated)": [
                _event("parcel.moved", {"orderId": f"none-{n}"}) for n in range(max(event_count // 4, 10))
            ],
        }
        results = {name: _summary(await _time(scheduler, events)) for name, events in cases.items()}
    finally:
        await db.close()
    return {"backend": backend, "waits": wait_count, "unkeyed_waits": unkeyed_count, "cases": results}


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"### wait_for_event matching ({report['backend']}, {report['waits']} open keyed waits)",
        "",
        "| case | events | p50 ms | p90 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, numbers in report["cases"].items():
        cells = [name, numbers["count"], numbers["p50_ms"], numbers["p90_ms"], numbers["p99_ms"]]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--waits", type=int, default=10_000)
    parser.add_argument("--unkeyed-waits", type=int, default=1_000)
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    tmp = RESULTS / f"tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        report = asyncio.run(run(args.backend, args.waits, args.events, args.unkeyed_waits, tmp))
    finally:
        for path in tmp.iterdir():
            path.unlink()
        tmp.rmdir()
    name = f"wait_matching_{args.backend}"
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(_markdown(report))
    print(_markdown(report))


if __name__ == "__main__":
    main()
