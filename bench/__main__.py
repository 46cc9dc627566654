"""Run every benchmark in one go: `python -m bench` (from the repository root, venv active).

Writes `results.json` (every trial, settings, versions), `results.md` (the tables) and PNG plots to
`bench/results/<UTC timestamp>/`, with a progress bar while it runs. A default run takes about
75 minutes on 2 cores (the steady memory run alone is 10); `--quick` is a smoke run of a few minutes
with small counts and one trial, whose numbers mean little.

Sections (`--only` picks some): throughput, latency, scaling, steady, fanout, waits, concurrency,
celery, dbos.
`--into DIR` re-runs the chosen sections into an earlier run's folder, replacing their figures there
(the re-run's plan and time are recorded under `reruns`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench import _peers, ironflow_runs
from bench._common import RESULTS, ROOT, versions
from bench._report import write_report

SECTIONS = ("throughput", "latency", "scaling", "steady", "fanout", "waits", "concurrency", "celery", "dbos")
BACKENDS = ("embedded", "distributed")


@dataclass(frozen=True)
class Plan:
    trials: int
    runs: int  # throughput runs per trial
    latency_runs: int
    worker_counts: tuple[int, ...]
    loads: tuple[float, ...]
    max_load: float
    steady_minutes: float
    steady_rate: float
    steady_backends: tuple[str, ...]
    fanout_args: tuple[str, ...]
    waits: int
    concurrency_runs: int  # per shape and trial
    celery_args: tuple[str, ...]
    dbos_args: tuple[str, ...]


FULL = Plan(
    trials=3,
    runs=5000,
    latency_runs=500,
    worker_counts=(1, 4),
    # The 100-800 runs/s, and below them, so the curve shows the knee as well as the overload.
    loads=(25, 50, 100, 200, 400, 800),
    max_load=6400,
    steady_minutes=10,
    # Well under the embedded server's capacity on 2 cores (about 60 two-step runs/s): a steady run
    # measures memory at a load it keeps up with, not a backlog that grows for ten minutes.
    steady_rate=30,
    steady_backends=("embedded",),
    fanout_args=(),
    waits=10_000,
    concurrency_runs=3000,
    celery_args=("--tasks", "5000", "--round-trips", "500"),
    dbos_args=("--workflows", "2000", "--round-trips", "300"),
)
QUICK = Plan(
    trials=1,
    runs=300,
    latency_runs=50,
    worker_counts=(1,),
    loads=(50, 100),
    max_load=100,
    steady_minutes=0.5,
    steady_rate=20,
    steady_backends=("embedded",),
    fanout_args=("--subscribers", "1,100", "--messages", "50", "--wire-messages", "20"),
    waits=1000,
    concurrency_runs=200,
    celery_args=("--tasks", "300", "--round-trips", "50"),
    dbos_args=("--workflows", "200", "--round-trips", "30"),
)


def _units(plan: Plan, sections: set[str]) -> int:
    """Progress bar steps, one per trial (the steady run: one per 5 s sample)."""
    per_backend = {
        "throughput": len(plan.worker_counts) * plan.trials,
        "latency": plan.trials,
        "scaling": len(plan.loads) * plan.trials,
        "concurrency": 2 * plan.trials,
    }
    total = sum(count * len(BACKENDS) for name, count in per_backend.items() if name in sections)
    if "steady" in sections:
        total += int(plan.steady_minutes * 12) * len(plan.steady_backends)
    total += sum(1 for name in ("fanout", "waits") if name in sections)
    total += sum(plan.trials for name in ("celery", "dbos") if name in sections)
    return total


def _script(module: str, args: list[str], log: Path) -> None:
    """Run one of the single-purpose bench scripts; its own progress output goes to `log`."""
    with log.open("wb") as out:
        result = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"{module} failed ({result.returncode}); see {log}")


async def _run(
    plan: Plan,
    sections: set[str],
    out: Path,
    *,
    step: Callable[[str], None],
    note: Callable[[str], None],
    save: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Run the parts in a fixed order, cheapest and most asked-about first, saving the report after
    each: a part that fails (or a run cut short) keeps everything measured before it."""
    tmp = Path(tempfile.mkdtemp(prefix="ironflow-bench-"))
    report: dict[str, Any] = {"ironflow": {}, "peers": {}, "failed": {}}
    runs = report["ironflow"]

    async def throughput(backend: str) -> None:
        for workers in plan.worker_counts:
            found = await ironflow_runs.throughput(
                backend, workers, plan.runs, trials=plan.trials, tmp=tmp, step=step
            )
            runs.setdefault("throughput", []).append(found)
            save(report)

    async def concurrency(backend: str) -> None:
        found = await ironflow_runs.concurrency_overhead(
            backend, plan.concurrency_runs, trials=plan.trials, tmp=tmp, step=step
        )
        runs.setdefault("concurrency", []).append(found)

    async def latency() -> None:
        for backend in BACKENDS:
            found = await ironflow_runs.latency(backend, plan.latency_runs, plan.trials, tmp, step)
            runs.setdefault("latency", []).append(found)

    async def peer(name: str, extra: tuple[str, ...]) -> None:
        report["peers"][name] = await asyncio.to_thread(
            _peer_trials, name, trials=plan.trials, out=out, extra=list(extra), step=step, note=note
        )

    async def waits() -> None:
        step(f"wait_for_event matching against {plan.waits:,} waits (bench/wait_matching.py)")
        args = ["--waits", str(plan.waits), "--trials", str(plan.trials), "--out", str(out)]
        await asyncio.to_thread(_script, "bench.wait_matching", args, out / "wait_matching.log")
        report["waits"] = json.loads((out / "wait_matching_sqlite.json").read_text())

    async def steady() -> None:
        for backend in plan.steady_backends:
            found = await ironflow_runs.steady(backend, plan.steady_rate, plan.steady_minutes, tmp, step)
            runs.setdefault("steady", []).append(found)

    async def scaling(backend: str) -> None:
        found = await ironflow_runs.scaling(
            backend, plan.loads, plan.trials, tmp, step, max_load=plan.max_load
        )
        runs.setdefault("scaling", []).append(found)

    async def fanout() -> None:
        step("fan-out: 1, 100, 1,000 subscribers (bench/fanout.py)")
        args = ["--trials", str(plan.trials), "--out", str(out), *plan.fanout_args]
        await asyncio.to_thread(_script, "bench.fanout", args, out / "fanout.log")
        report["fanout"] = json.loads((out / "fanout_both.json").read_text())

    parts: list[tuple[str, str, Callable[[], Awaitable[None]]]] = [
        ("latency", "latency", latency),
        ("celery", "celery", lambda: peer("celery", plan.celery_args)),
        ("dbos", "dbos", lambda: peer("dbos", plan.dbos_args)),
        ("throughput", "throughput embedded", lambda: throughput("embedded")),
        ("waits", "waits", waits),
        ("steady", "steady", steady),
        ("throughput", "throughput distributed", lambda: throughput("distributed")),
        ("scaling", "scaling embedded", lambda: scaling("embedded")),
        ("scaling", "scaling distributed", lambda: scaling("distributed")),
        ("fanout", "fanout", fanout),
        ("concurrency", "concurrency embedded", lambda: concurrency("embedded")),
        ("concurrency", "concurrency distributed", lambda: concurrency("distributed")),
    ]
    try:
        for section, label, part in parts:
            if section not in sections:
                continue
            try:
                await part()
            except Exception as exc:  # noqa: BLE001 - recorded in the report; the other parts still run
                report["failed"][label] = f"{type(exc).__name__}: {exc}"
                note(f"{label} failed: {exc}")
            save(report)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _peer_trials(
    peer: str,
    *,
    trials: int,
    out: Path,
    extra: list[str],
    step: Callable[[str], None],
    note: Callable[[str], None],
) -> dict[str, Any]:
    """One driver run per trial (a fresh worker or DBOS instance each time), merged into one."""
    _peers.ensure_venv(peer, log=lambda line: note(f"{peer}: {line}"))
    merged: dict[str, Any] = {}
    for trial in range(trials):
        step(f"{peer} trial {trial + 1}/{trials}")
        found = _peers.run_peer(peer, trials=1, out=out / f"{peer}-{trial + 1}.json", extra_args=extra)
        if not merged:
            merged = {**found, "trials": []}
        merged["trials"] += found["trials"]
    return merged


def _merged(earlier: dict[str, Any], rerun: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """An earlier report with the re-run sections' figures in place of its own, and the re-run noted."""
    earlier["ironflow"] |= rerun["ironflow"]
    earlier["peers"] |= rerun["peers"]
    for key in ("fanout", "waits"):
        if key in rerun:
            earlier[key] = rerun[key]
    earlier.setdefault("reruns", []).append(run)
    return earlier


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run: small counts, one trial")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}")
    parser.add_argument("--trials", type=int, help="trials per figure [3; --quick: 1]")
    parser.add_argument("--out", type=Path, help="results folder [bench/results/<UTC timestamp>]")
    parser.add_argument(
        "--into",
        type=Path,
        metavar="DIR",
        help="re-run the --only sections into an earlier run's folder: they replace its figures there",
    )
    args = parser.parse_args()
    if args.into is not None and args.out is not None:
        parser.error("--into and --out: give one (--into writes into the earlier run's folder)")
    if args.into is not None and not (args.into / "results.json").exists():
        parser.error(f"--into: no results.json in {args.into}")
    sections = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = sections - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    plan = QUICK if args.quick else FULL
    if args.trials is not None:
        if args.trials < 1:
            parser.error("--trials: must be at least 1")
        plan = Plan(**{**plan.__dict__, "trials": args.trials})
    out = args.into or args.out or RESULTS / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)

    started = time.time()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        bar = progress.add_task("starting", total=_units(plan, sections))

        def step(description: str) -> None:
            """One unit of work begins (the scaling curve may add loads: the total grows)."""
            task = progress.tasks[0]
            if task.total is not None and task.completed >= task.total:
                progress.update(bar, total=task.total + 1)
            progress.update(bar, description=description, advance=1)

        def note(description: str) -> None:
            progress.update(bar, description=description)

        def save(partial: dict[str, Any]) -> None:
            (out / "results.partial.json").write_text(json.dumps(partial, indent=2) + "\n")

        report = asyncio.run(_run(plan, sections, out, step=step, note=note, save=save))
        progress.update(bar, description="writing the report")
    run = {
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
        "minutes": round((time.time() - started) / 60, 1),
        "plan": {**plan.__dict__, "quick": args.quick},
        "sections": sorted(sections),
        "machine": asyncio.run(versions(distributed=True)),
        "load_average": os.getloadavg(),
    }
    if args.into is not None:
        report = _merged(json.loads((out / "results.json").read_text()), report, run)
    else:
        report |= run
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    write_report(report, out)
    print(f"results: {out}/results.md (JSON and plots alongside)")


if __name__ == "__main__":
    main()
