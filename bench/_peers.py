"""Run the peer benchmark harnesses (bench/peers/), each in a virtualenv of its own.

    python -m bench._peers celery|dbos [--trials 1] [--out FILE] [driver options, e.g. --tasks 1000]

The peers' packages (Celery, DBOS and their dependency trees) must never enter the project's venv,
where they could shift the versions Ironflow itself is measured with, so each gets `bench/.venvs/<peer>/`,
built from the exact pins in `bench/peers/requirements-<peer>.txt`. The drivers are plain scripts run by
that venv's python; this module only builds the venv, runs the driver and reads back its JSON. Standard
library only, since it runs in the project's venv.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
PEERS_DIR = BENCH_DIR / "peers"
VENVS_DIR = BENCH_DIR / ".venvs"
PEERS = ("celery", "dbos")
# Inside the venv: the sha256 of the requirements file it was built from.
STAMP_NAME = "requirements.sha256"
STDERR_TAIL_LINES = 20


def _log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _check_peer(peer: str) -> None:
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; expected one of {', '.join(PEERS)}")


def _peer_env(venv: Path) -> dict[str, str]:
    """The caller's environment minus what would point a child at the project's venv instead of the
    peer's (PYTHONPATH, PYTHONHOME, VIRTUAL_ENV)."""
    env = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "PYTHONHOME"}}
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def ensure_venv(peer: str, *, log: Callable[[str], None] = print) -> Path:
    """Return the python of `bench/.venvs/<peer>/`, (re)building the venv if its requirements changed.

    A changed requirements file rebuilds the venv from scratch (`venv --clear`) rather than installing on
    top, so a pin that was removed does not linger. The stamp is written last, so an interrupted install
    is redone next time.
    """
    _check_peer(peer)
    requirements = PEERS_DIR / f"requirements-{peer}.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    venv = VENVS_DIR / peer
    python = venv / "bin" / "python"
    stamp = venv / STAMP_NAME
    if python.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return python
    log(f"peers: building {venv.relative_to(REPO_ROOT)} from {requirements.relative_to(REPO_ROOT)}")
    steps = (
        ["python3", "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", "--requirement", str(requirements)],
    )
    for command in steps:
        result = subprocess.run(command, env=_peer_env(venv), check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"peers: {' '.join(command[:4])} ... failed with exit code {result.returncode}"
            )
    stamp.write_text(digest + "\n")
    log(f"peers: {peer} venv ready")
    return python


def run_peer(
    peer: str,
    *,
    trials: int,
    out: Path,
    extra_args: Sequence[str] = (),
    log: Callable[[str], None] = _log_stderr,
) -> dict[str, Any]:
    """Run `bench/peers/<peer>_bench.py` in its venv and return the JSON it wrote to `out`.

    The driver's stderr (one progress line per phase) is passed to `log` as it arrives, and its last
    lines are kept for the RuntimeError raised if the driver fails.
    """
    python = ensure_venv(peer, log=log)
    out = out.resolve()  # the driver runs from the repository root, the caller may not
    command = [
        str(python),
        str((PEERS_DIR / f"{peer}_bench.py").relative_to(REPO_ROOT)),
        "--trials",
        str(trials),
        "--out",
        str(out),
        *extra_args,
    ]
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    with subprocess.Popen(
        command, cwd=REPO_ROOT, env=_peer_env(python.parent.parent), stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            tail.append(line.rstrip("\n"))
            log(tail[-1])
    if proc.returncode != 0:
        raise RuntimeError(f"{peer} benchmark failed (exit {proc.returncode}):\n" + "\n".join(tail))
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run one peer benchmark in its own venv and print its JSON.",
        epilog="Unrecognised options are passed to the driver (e.g. --tasks 1000, --workflows 500).",
    )
    parser.add_argument("peer", choices=PEERS)
    parser.add_argument("--trials", type=int, default=1)
    parser.add_argument("--out", type=Path, help="default: bench/results/peer-<peer>.json")
    args, extra = parser.parse_known_args(argv)
    out = args.out or BENCH_DIR / "results" / f"peer-{args.peer}.json"
    try:
        report = run_peer(args.peer, trials=args.trials, out=out, extra_args=extra)
    except RuntimeError as exc:
        # The driver's stderr has already been echoed line by line; the first line says what failed.
        print(str(exc).splitlines()[0], file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
