"""From `results.json` to `results.md` and PNG plots: the summary against targets and peers first,
then one table per benchmark. Every cell is the median over trials with the [min-max] range."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

Row = list[str]


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _spread(values: Sequence[float], digits: int = 1) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:,.{digits}f}"
    return f"{_median(values):,.{digits}f} [{min(values):,.{digits}f}-{max(values):,.{digits}f}]"


def _table(header: Sequence[str], rows: Sequence[Row]) -> list[str]:
    aligns = ["---"] + ["---:"] * (len(header) - 1)
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(aligns) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]


# -- what the sections measured, as plain numbers --------------------------------------------------


def _ironflow_throughput(report: dict[str, Any]) -> dict[tuple[str, int], list[float]]:
    return {
        (entry["backend"], entry["workers"]): [trial["runs_per_s"] for trial in entry["trials"]]
        for entry in report["ironflow"].get("throughput", [])
    }


def _best_throughput(report: dict[str, Any], backend: str) -> tuple[int, list[float]] | None:
    found = [
        (workers, values)
        for (name, workers), values in _ironflow_throughput(report).items()
        if name == backend
    ]
    return max(found, key=lambda item: _median(item[1])) if found else None


def _ironflow_latency(report: dict[str, Any], backend: str, key: str, percentile: str) -> list[float]:
    for entry in report["ironflow"].get("latency", []):
        if entry["backend"] == backend:
            return [trial[key][percentile] for trial in entry["trials"]]
    return []


def _peer_values(report: dict[str, Any], peer: str, section: str, key: str) -> list[float]:
    found = report["peers"].get(peer)
    return [trial[section][key] for trial in found["trials"]] if found else []


def _fanout_p99(report: dict[str, Any], layer: str, backend: str, subscribers: int) -> list[float]:
    for row in report.get("fanout", {}).get("rows", []):
        if (
            row.get("layer") == layer
            and row.get("backend") == backend
            and row.get("subscribers") == subscribers
        ):
            return [trial["p99_ms"] for trial in row.get("trials", []) if "p99_ms" in trial]
    return []


def _wait_match(report: dict[str, Any], case_suffix: str, percentile: str) -> list[float]:
    cases = report.get("waits", {}).get("cases", {})
    for name, case in cases.items():
        if name.endswith(case_suffix):
            return [trial[percentile] for trial in case["trials"]]
    return []


# -- summary ---------------------------------------------------------------------------------------


def _ratio(ours: list[float], theirs: list[float], *, lower_is_better: bool) -> str:
    if not ours or not theirs:
        return "n/a"
    mine, peer = _median(ours), _median(theirs)
    ratio = peer / mine if lower_is_better else mine / peer
    return f"{ratio:.2f}x"


def _verdict(value: list[float], target: float, *, at_most: bool) -> str:
    if not value:
        return "not run"
    met = _median(value) <= target if at_most else _median(value) >= target
    return "met" if met else "**not met**"


def summary_rows(report: dict[str, Any]) -> list[Row]:
    celery_tput = _peer_values(report, "celery", "throughput", "per_second")
    dbos_queue = _peer_values(report, "dbos", "queue", "per_second")
    rows: list[Row] = []

    embedded = _best_throughput(report, "embedded")
    distributed = _best_throughput(report, "distributed")
    for label, best, peer_label, peer, factor in (
        ("embedded throughput vs Celery", embedded, "Celery", celery_tput, 3.0),
        ("embedded throughput vs DBOS queue", embedded, "DBOS queue", dbos_queue, 10.0),
        ("distributed throughput vs Celery", distributed, "Celery", celery_tput, 1.0),
    ):
        ours = best[1] if best else []
        workers = f" ({best[0]} worker{'s' if best[0] > 1 else ''})" if best else ""
        ratio = _median(ours) / _median(peer) if ours and peer else None
        rows.append(
            [
                label,
                f"{_spread(ours)} runs/s{workers}",
                f"{peer_label} {_spread(peer)}/s",
                f"{ratio:.2f}x" if ratio is not None else "n/a",
                f">= {factor:g}x",
                "not run" if ratio is None else ("met" if ratio >= factor else "**not met**"),
            ]
        )

    best_peer_latency = _best_peer_latency(report)
    for label, backend, percentile, target in (
        ("1-step emit -> completed p50, embedded", "embedded", "p50_ms", 5.0),
        ("1-step emit -> completed p99, embedded", "embedded", "p99_ms", 20.0),
        ("1-step emit -> completed p50, distributed", "distributed", "p50_ms", 15.0),
    ):
        ours = _ironflow_latency(report, backend, "completed", percentile)
        peer_name, peer = best_peer_latency.get(percentile, ("", []))
        rows.append(
            [
                label,
                f"{_spread(ours)} ms",
                f"{peer_name} {_spread(peer)} ms" if peer else "n/a",
                _ratio(ours, peer, lower_is_better=True),
                f"<= {target:g} ms",
                _verdict(ours, target, at_most=True),
            ]
        )

    for layer, label in (("wire", "over gRPC, one server"), ("engine", "in the engine")):
        for backend in ("embedded", "distributed"):
            ours = _fanout_p99(report, layer, backend, 1000)
            if ours:
                rows.append(
                    [
                        f"fan-out to 1,000 subscribers p99, {label}, {backend}",
                        f"{_spread(ours)} ms",
                        "n/a",
                        "n/a",
                        "<= 50 ms",
                        _verdict(ours, 50.0, at_most=True),
                    ]
                )
    waits_count = report.get("waits", {}).get("waits", 0)
    for suffix, label in (
        ("key matches none", "looked up, none waiting on the key"),
        ("resumes one", "looked up and one run resumed (its writes and commit)"),
    ):
        found = _wait_match(report, suffix, "p50_ms")
        if found:
            rows.append(
                [
                    f"one event matched against {waits_count:,} waits, p50: {label}",
                    f"{_spread(found, 2)} ms",
                    "n/a",
                    "n/a",
                    "<= 5 ms",
                    _verdict(found, 5.0, at_most=True),
                ]
            )
    return rows


def _best_peer_latency(report: dict[str, Any]) -> dict[str, tuple[str, list[float]]]:
    """Per percentile, the peer with the lowest median round trip."""
    best: dict[str, tuple[str, list[float]]] = {}
    for percentile in ("p50_ms", "p90_ms", "p99_ms"):
        candidates = [
            (name, _peer_values(report, peer, "latency", percentile))
            for peer, name in (("celery", "Celery"), ("dbos", "DBOS"))
        ]
        candidates = [(name, values) for name, values in candidates if values]
        if candidates:
            best[percentile] = min(candidates, key=lambda item: _median(item[1]))
    return best


# -- detail tables ---------------------------------------------------------------------------------


def _throughput_section(report: dict[str, Any]) -> list[str]:
    rows: list[Row] = []
    for entry in report["ironflow"].get("throughput", []):
        trials = entry["trials"]
        rows.append(
            [
                f"Ironflow {entry['backend']}, {entry['workers']} worker(s)",
                f"{entry['runs']:,} runs x 2 steps",
                _spread([t["runs_per_s"] for t in trials]),
                _spread([t["emits_per_s"] for t in trials]),
                _spread([t["server_cpu_s"] for t in trials]),
                f"{entry['server_memory']['peak_rss_mib']:,.0f}",
            ]
        )
    for peer, label, section, unit in (
        ("celery", "Celery, prefork x2", "throughput", "no-op tasks"),
        ("dbos", "DBOS, queue", "queue", "2-step workflows"),
        ("dbos", "DBOS, started directly", "direct", "2-step workflows"),
    ):
        values = _peer_values(report, peer, section, "per_second")
        if values:
            count = report["peers"][peer]["trials"][0][section]["count"]
            rows.append([label, f"{count:,} {unit}", _spread(values), "", "", ""])
    if not rows:
        return []
    header = ["system", "work", "completed per s", "emits per s", "server CPU s", "server peak RSS MiB"]
    return ["## Throughput", "", "First emit (or submit) to last completion.", "", *_table(header, rows)]


def _concurrency_section(report: dict[str, Any]) -> list[str]:
    rows: list[Row] = []
    for entry in report["ironflow"].get("concurrency", []):
        for shape, label in (("plain", "plain"), ("limited", "concurrency-keyed")):
            trials = entry[shape]["trials"]
            rows.append(
                [
                    f"Ironflow {entry['backend']}, {label}",
                    _spread([t["runs_per_s"] for t in trials]),
                    _spread([t["server_cpu_ms_per_run"] for t in trials], digits=2),
                ]
            )
        rows.append(
            [
                f"Ironflow {entry['backend']}, keyed / plain",
                f"{entry['throughput_ratio']:.2f}x",
                f"{entry['cpu_overhead_ms_per_run']:+.2f}",
            ]
        )
    if not rows:
        return []
    header = ["two-step runs, 1 worker", "completed per s", "server CPU ms per run"]
    note = (
        "The same two steps with and without a concurrency limit per customer that never binds "
        f"({report['ironflow']['concurrency'][0]['limit']}), trials alternating in one deployment."
    )
    return ["## Concurrency-key overhead", "", note, "", *_table(header, rows)]


def _latency_section(report: dict[str, Any]) -> list[str]:
    rows: list[Row] = []
    for entry in report["ironflow"].get("latency", []):
        for key, label in (("completed", "emit -> completed"), ("step_start", "emit -> step start")):
            trials = [trial[key] for trial in entry["trials"]]
            rows.append(
                [f"Ironflow {entry['backend']}, {label}"]
                + [f"{_spread([t[p] for t in trials])}" for p in ("p50_ms", "p90_ms", "p99_ms", "max_ms")]
            )
    for peer, label in (("celery", "Celery, delay().get()"), ("dbos", "DBOS, 1-step workflow call")):
        found = report["peers"].get(peer)
        if found:
            trials = [trial["latency"] for trial in found["trials"]]
            rows.append(
                [label] + [_spread([t[p] for t in trials]) for p in ("p50_ms", "p90_ms", "p99_ms", "max_ms")]
            )
    if not rows:
        return []
    header = ["sequential one-step round trips", "p50 ms", "p90 ms", "p99 ms", "max ms"]
    return ["## Latency", "", *_table(header, rows)]


def _scaling_section(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for entry in report["ironflow"].get("scaling", []):
        rows = []
        for point in entry["points"]:
            trials = point["trials"]
            rows.append(
                [
                    f"{point['offered_per_s']:g}",
                    _spread([t["achieved_per_s"] for t in trials]),
                    _spread([t["p50_ms"] for t in trials]),
                    _spread([t["p99_ms"] for t in trials]),
                    _spread([t["emit_call_p99_ms"] for t in trials]),
                    _spread([t["queue_wait_p99_ms"] for t in trials]),
                ]
            )
        saturates = entry["saturates_at"]
        note = (
            f"Falls behind at {saturates:g} runs/s offered."
            if saturates
            else "Kept up at every load offered."
        )
        header = [
            "offered runs/s",
            "achieved runs/s",
            "p50 ms",
            "p99 ms",
            "emit call p99 ms",
            "queue wait p99 ms",
        ]
        lines += [f"### Scaling, {entry['backend']}", "", note, "", *_table(header, rows)]
    return ["## Scaling curve", "", *lines] if lines else []


def _steady_section(report: dict[str, Any]) -> list[str]:
    rows = []
    for entry in report["ironflow"].get("steady", []):
        growth = entry["growth"]
        rows.append(
            [
                entry["backend"],
                f"{entry['offered_per_s']:g} runs/s for {entry['minutes']:g} min ({entry['runs']:,} runs)",
                f"{growth['rss_at_1_min_mib']:,.1f}",
                f"{growth['rss_at_end_mib']:,.1f}",
                f"{growth['growth_mib']:+,.1f}",
                f"{growth['slope_mib_per_min']:+.3f}",
                f"{growth['last_third_slope_mib_per_min']:+.3f}"
                if "last_third_slope_mib_per_min" in growth
                else "",
                f"{entry['server_memory']['peak_rss_mib']:,.1f}",
            ]
        )
    if not rows:
        return []
    header = [
        "server",
        "load",
        "RSS at 1 min MiB",
        "RSS at end MiB",
        "growth MiB",
        "slope MiB/min",
        "slope over the last third",
        "peak MiB",
    ]
    return ["## Memory over a steady run", "", *_table(header, rows)]


def _settings_section(report: dict[str, Any]) -> list[str]:
    lines = ["## Versions and settings", ""]
    machine = report.get("machine", {})
    lines.append("- Machine: " + ", ".join(f"{key} {value}" for key, value in machine.items()))
    for peer, found in report["peers"].items():
        versions = ", ".join(f"{key} {value}" for key, value in found.get("versions", {}).items())
        settings = ", ".join(f"{key}={value}" for key, value in found.get("settings", {}).items())
        lines.append(f"- {peer}: {versions}; {settings}")
    lines.append(f"- Plan: {report.get('plan')}")
    lines.append(f"- Load average at the end: {report.get('load_average')}; took {report.get('minutes')} min")
    for rerun in report.get("reruns", []):
        lines.append(
            f"- Re-run later (`--into`): {', '.join(rerun['sections'])} at {rerun['started_at']}"
            f" ({rerun['minutes']} min), plan {rerun['plan']}"
        )
    return [*lines, ""]


def markdown(report: dict[str, Any], plots: Sequence[str], extra_sections: Sequence[str] = ()) -> str:
    lines = [
        "# Ironflow benchmark results",
        "",
        "Median over trials, [min-max] across trials. Ratio: Ironflow against the best peer on the line,",
        "above 1x when Ironflow does better (for latency, the peer's time divided by Ironflow's).",
        "",
        "## Summary against targets",
        "",
        *_table(["measure", "Ironflow", "best peer", "ratio", "target", "verdict"], summary_rows(report)),
        *_throughput_section(report),
        *_latency_section(report),
        *_scaling_section(report),
        *_steady_section(report),
        *_concurrency_section(report),
    ]
    for section in extra_sections:
        lines += [section.replace("### ", "## ", 1), ""]
    lines += [f"![{name}]({name})" for name in plots]
    lines += ["", *_settings_section(report)]
    return "\n".join(lines) + "\n"


# -- plots -----------------------------------------------------------------------------------------


def _bar_with_range(ax: Any, labels: list[str], values: list[list[float]], color: str) -> None:
    medians = [_median(v) for v in values]
    errors = [
        [m - min(v) for m, v in zip(medians, values, strict=True)],
        [max(v) - m for m, v in zip(medians, values, strict=True)],
    ]
    ax.barh(labels, medians, xerr=errors, color=color, capsize=3)
    for index, median in enumerate(medians):
        ax.text(median, index, f" {median:,.0f}", va="center", fontsize=8)


def _save(fig: Any, path: Path) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_throughput(report: dict[str, Any], path: Path) -> bool:
    labels, values = [], []
    for (backend, workers), found in _ironflow_throughput(report).items():
        labels.append(f"Ironflow {backend}, {workers}w")
        values.append(found)
    for peer, section, label in (
        ("celery", "throughput", "Celery"),
        ("dbos", "queue", "DBOS queue"),
        ("dbos", "direct", "DBOS direct"),
    ):
        found = _peer_values(report, peer, section, "per_second")
        if found:
            labels.append(label)
            values.append(found)
    if not values:
        return False
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(labels) + 1.5))
    _bar_with_range(ax, labels, values, "#4c72b0")
    ax.set_xlabel("completed per second (median, range over trials)")
    ax.set_title("Throughput: no-op two-step runs / tasks / workflows")
    ax.invert_yaxis()
    return _save(fig, path)


def plot_latency(report: dict[str, Any], path: Path) -> bool:
    series: list[tuple[str, dict[str, float]]] = []
    for entry in report["ironflow"].get("latency", []):
        trials = [trial["completed"] for trial in entry["trials"]]
        series.append(
            (
                f"Ironflow {entry['backend']}",
                {p: _median([t[p] for t in trials]) for p in ("p50_ms", "p90_ms", "p99_ms")},
            )
        )
    for peer, label in (("celery", "Celery"), ("dbos", "DBOS")):
        found = report["peers"].get(peer)
        if found:
            trials = [trial["latency"] for trial in found["trials"]]
            series.append(
                (label, {p: _median([t[p] for t in trials]) for p in ("p50_ms", "p90_ms", "p99_ms")})
            )
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(series)
    percentiles = ("p50_ms", "p90_ms", "p99_ms")
    for index, (label, numbers) in enumerate(series):
        positions = [p + index * width for p in range(len(percentiles))]
        ax.bar(positions, [numbers[p] for p in percentiles], width, label=label)
    ax.set_xticks([p + width * (len(series) - 1) / 2 for p in range(len(percentiles))], ["p50", "p90", "p99"])
    ax.set_ylabel("ms, one-step round trip (median of trials)")
    ax.set_title("Latency: emit -> completed, sequential")
    ax.legend()
    return _save(fig, path)


def plot_scaling(report: dict[str, Any], path: Path) -> bool:
    entries = report["ironflow"].get("scaling", [])
    if not entries:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for entry in entries:
        offered = [point["offered_per_s"] for point in entry["points"]]
        achieved = [point["across"]["achieved_per_s"]["median"] for point in entry["points"]]
        p99 = [point["across"]["p99_ms"]["median"] for point in entry["points"]]
        left.plot(offered, achieved, marker="o", label=entry["backend"])
        right.plot(offered, p99, marker="o", label=entry["backend"])
    top = max(point["offered_per_s"] for entry in entries for point in entry["points"])
    left.plot([0, top], [0, top], linestyle=":", color="grey", label="offered")
    left.set_xlabel("offered runs/s")
    left.set_ylabel("achieved runs/s")
    left.legend()
    right.set_xlabel("offered runs/s")
    right.set_ylabel("p99 emit -> ended, ms")
    right.set_yscale("log")
    right.legend()
    fig.suptitle("Scaling: two-step runs offered open loop")
    return _save(fig, path)


def plot_memory(report: dict[str, Any], path: Path) -> bool:
    entries = report["ironflow"].get("steady", [])
    if not entries:
        return False
    fig, ax = plt.subplots(figsize=(8, 4))
    for entry in entries:
        minutes = [sample["seconds"] / 60 for sample in entry["samples"]]
        ax.plot(
            minutes, [sample["rss_mib"] for sample in entry["samples"]], label=f"{entry['backend']} server"
        )
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS MiB")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Server memory at a steady {entries[0]['offered_per_s']:g} runs/s")
    ax.legend()
    return _save(fig, path)


def plot_fanout(report: dict[str, Any], path: Path) -> bool:
    rows = report.get("fanout", {}).get("rows", [])
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(8, 4))
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        values = [trial["p99_ms"] for trial in row.get("trials", []) if "p99_ms" in trial]
        if values:
            series.setdefault(f"{row['layer']}, {row['backend']}", []).append(
                (row["subscribers"], _median(values))
            )
    for label, points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.axhline(50, linestyle=":", color="grey", label="target p99")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("subscribers")
    ax.set_ylabel("p99 append -> delivery, ms")
    ax.set_title("Fan-out")
    ax.legend()
    return _save(fig, path)


def write_report(report: dict[str, Any], out: Path) -> None:
    plots = []
    for name, draw in (
        ("throughput.png", plot_throughput),
        ("latency.png", plot_latency),
        ("scaling.png", plot_scaling),
        ("memory.png", plot_memory),
        ("fanout.png", plot_fanout),
    ):
        if draw(report, out / name):
            plots.append(name)
    # The single-purpose scripts write their own tables; they are included as they are.
    extra = [
        (out / name).read_text()
        for name in ("fanout_both.md", "wait_matching_sqlite.md")
        if (out / name).exists()
    ]
    (out / "results.md").write_text(markdown(report, plots, extra))
