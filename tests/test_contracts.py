"""The Protobuf contracts stay lint-clean, formatted, and `gen/` matches what buf generates from them."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUF = ROOT / "node_modules" / ".bin" / "buf"


def _buf(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    assert BUF.exists(), "the buf CLI is missing: run `npm ci` in the repository root"
    # The local plugins (grpc_tools, protoc-gen-mypy, protoc-gen-connect-python) run from this Python.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [str(BUF), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_buf_lint_is_clean() -> None:
    result = _buf("lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_protos_are_buf_formatted() -> None:
    result = _buf("format", "--diff", "--exit-code")
    assert result.returncode == 0, "run `buf format -w`:\n" + result.stdout + result.stderr


def test_gen_matches_a_fresh_buf_generate(tmp_path: Path) -> None:
    result = _buf("generate", "--output", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    fresh = tmp_path / "gen" / "ironflow" / "v1"
    committed = ROOT / "gen" / "ironflow" / "v1"
    fresh_files = sorted(p.name for p in fresh.iterdir())
    committed_files = sorted(
        p.name for p in committed.iterdir() if p.name not in ("__init__.py", "__pycache__")
    )
    assert committed_files == fresh_files, "gen/ is stale: run scripts/generate.sh"
    _, mismatch, errors = filecmp.cmpfiles(fresh, committed, fresh_files, shallow=False)
    assert not errors, f"could not compare {errors}"
    assert not mismatch, f"gen/ is stale ({mismatch}): run scripts/generate.sh"


@pytest.mark.parametrize("name", ["events", "functions", "runs", "workers", "subscriptions"])
def test_every_contract_has_python_grpc_and_connect_code(name: str) -> None:
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_connect.py"):
        assert (ROOT / "gen" / "ironflow" / "v1" / f"{name}{suffix}").exists()
