"""What both peer drivers share (standard library only: it runs in each peer's own venv, where
neither the project nor the other peer is installed). The drivers run as scripts, so bench/peers/ is
on their path and they import this as `peer_common`."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence


class BenchError(Exception):
    """A failure worth one line on stderr (the driver's contract with bench/_peers.py)."""


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(ordered: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending sequence: the smallest value with at least pct% at or
    below it. Always an observed sample, which keeps p99 of 300-500 samples honest."""
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def summarise_ns(samples_ns: Sequence[int]) -> dict[str, float]:
    ms = sorted(sample / 1e6 for sample in samples_ns)
    return {
        "count": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(ms[-1], 3),
        "mean_ms": round(sum(ms) / len(ms), 3),
    }
