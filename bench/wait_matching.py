"""How long the scheduler takes to match one stored event against open `wait_for_event` waits.

    python -m bench.wait_matching [--backend sqlite|postgres] [--waits 10000] [--events 200] [--trials 3]

Sets up N runs waiting for `shipment.created` on distinct keys (`async.data.orderId ==
event.data.orderId`), plus a smaller set of waits whose expression yields no index key (they are
evaluated for every event of their name), then times `Scheduler.trigger` for events that resume one
wait, events whose key matches none, and events with no waits at all (the baseline). Each trial seeds
a fresh database (resuming a wait consumes it). Writes JSON and a markdown table to bench/results/
(or `--out`). Not a test: numbers vary with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench._common import POSTGRES_URL, RESULTS, across, latency_summary
from ironflow.services.core.cel_keys import key_text
from ironflow.services.core.protojson import dict_to_struct, to_timestamp
from ironflow.services.core.signals import RunNotices
from ironflow.services.core.storage import Database, migrate, runs, waits
from ironflow.services.core.streams import MemoryStream
from ironflow.services.scheduler import FunctionCatalog, Scheduler
from ironflow.v1 import common_pb2, functions_pb2

KEYED = "async.data.orderId == event.data.orderId"
# `||` hides the equality from the index: these waits are evaluated one by one for each event.
UNKEYED = "async.data.orderId == event.data.orderId || async.data.force == true"


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


async def _time(scheduler: Scheduler, events: list[common_pb2.Event]) -> list[float]:
    samples = []
    for event in events:
        started = time.perf_counter()
        await scheduler.trigger(event)
        samples.append(time.perf_counter() - started)
    return samples


async def run_trial(
    backend: str, wait_count: int, event_count: int, unkeyed_count: int, tmp: Path
) -> dict[str, dict[str, Any]]:
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
        return {
            name: latency_summary([seconds * 1000 for seconds in await _time(scheduler, events)])
            for name, events in cases.items()
        }
    finally:
        if db.schema is not None:
            async with db.transaction() as conn:
                await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{db.schema}" CASCADE')
        await db.close()


async def run(
    backend: str, wait_count: int, event_count: int, unkeyed_count: int, *, trials: int, tmp: Path
) -> dict[str, Any]:
    results = []
    for trial in range(trials):
        trial_dir = tmp / f"trial-{trial}"
        trial_dir.mkdir()
        results.append(await run_trial(backend, wait_count, event_count, unkeyed_count, trial_dir))
    cases = {}
    for name in results[0]:
        per_trial = [trial[name] for trial in results]
        cases[name] = {"trials": per_trial, "across": across(per_trial)}
    return {"backend": backend, "waits": wait_count, "unkeyed_waits": unkeyed_count, "cases": cases}


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"### wait_for_event matching ({report['backend']}, {report['waits']} open keyed waits)",
        "",
        "Median over trials [min-max] of each trial's percentile.",
        "",
        "| case | events per trial | p50 ms | p90 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, numbers in report["cases"].items():
        across_trials = numbers["across"]
        cells = [name, numbers["trials"][0]["count"]]
        for key in ("p50_ms", "p90_ms", "p99_ms"):
            value = across_trials[key]
            cells.append(f"{value['median']:.3f} [{value['min']:.3f}-{value['max']:.3f}]")
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--waits", type=int, default=10_000)
    parser.add_argument("--unkeyed-waits", type=int, default=1_000)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder [bench/results]")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        report = asyncio.run(
            run(
                args.backend,
                args.waits,
                args.events,
                args.unkeyed_waits,
                trials=args.trials,
                tmp=Path(tmp),
            )
        )
    name = f"wait_matching_{args.backend}"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(_markdown(report))
    print(_markdown(report))


if __name__ == "__main__":
    main()
