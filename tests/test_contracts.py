"""The Protobuf contracts stay lint-clean, formatted and backward compatible, and `gen/` (Python and
TypeScript) matches what buf generates from them."""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
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

    # gen/ts is wholly generated: the whole tree must match, so a stray or leftover file fails too.
    fresh_ts, committed_ts = _tree(tmp_path / "gen" / "ts"), _tree(ROOT / "gen" / "ts")
    assert fresh_ts, "buf generate wrote no TypeScript: is protoc-gen-es in buf.gen.yaml?"
    stale = sorted(
        path for path in fresh_ts.keys() | committed_ts.keys() if fresh_ts.get(path) != committed_ts.get(path)
    )
    assert not stale, f"gen/ts is stale ({stale}): run scripts/generate.sh"


def _tree(root: Path) -> dict[str, bytes]:
    if not root.is_dir():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["events", "functions", "runs", "workers", "subscriptions"])
def test_every_contract_has_python_grpc_and_connect_code(name: str) -> None:
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_connect.py"):
        assert (ROOT / "gen" / "ironflow" / "v1" / f"{name}{suffix}").exists()


CONTRACTS = sorted((ROOT / "proto" / "ironflow" / "v1").glob("*.proto"))


@pytest.mark.parametrize("proto", CONTRACTS, ids=lambda p: p.stem)
def test_every_contract_has_typescript_messages_and_services(proto: Path) -> None:
    """One *_pb.ts per contract, exporting each message schema and each service descriptor that
    Connect-ES's createClient takes."""
    generated = ROOT / "gen" / "ts" / "ironflow" / "v1" / f"{proto.stem}_pb.ts"
    assert generated.exists(), f"no TypeScript for {proto.name}: run scripts/generate.sh"
    code = generated.read_text()
    source = proto.read_text()
    for service in re.findall(r"^service (\w+)", source, re.MULTILINE):
        assert f"export const {service}: GenService<" in code, service
    for message in re.findall(r"^message (\w+)", source, re.MULTILINE):
        assert f"export const {message}Schema: GenMessage<" in code, message


# -- backward compatibility (docs/operations.md, "Contract stability") ---------------------------

# What the contracts are checked against: the commit before HEAD, which in CI (a fresh clone of main)
# is the previous commit on main. Override with any buf input, e.g. `.git#branch=main` on a branch.
BREAKING_AGAINST = os.environ.get("IRONFLOW_BREAKING_AGAINST", ".git#ref=HEAD~1")


def test_contracts_have_no_breaking_changes_since_the_previous_commit() -> None:
    listed = _buf("ls-files", BREAKING_AGAINST)
    if listed.returncode != 0:
        pytest.fail(
            f"cannot read the contracts to compare against ({BREAKING_AGAINST}): {listed.stderr.strip()}\n"
            "buf breaking needs the commit before HEAD: use a clone with history (not --depth 1), or "
            "set IRONFLOW_BREAKING_AGAINST to another buf input (`.git#branch=main`, `.git#tag=v1.0.0`)"
        )
    # An empty baseline would make the check pass vacuously.
    assert "ironflow/v1/events.proto" in listed.stdout, f"no contracts in {BREAKING_AGAINST}"
    result = _buf("breaking", "--against", BREAKING_AGAINST)
    assert result.returncode == 0, (
        "breaking change in proto/ (v1 allows additive changes only; see docs/operations.md):\n"
        + result.stdout
        + result.stderr
    )


FIELD = "  string idempotency_key = 3;\n"  # in EmitRequest, the first message of events.proto


@pytest.mark.parametrize(
    ("edit", "breaking"),
    [
        pytest.param(lambda text: text.replace(FIELD, "", 1), True, id="remove-field"),
        pytest.param(
            lambda text: text.replace(FIELD, FIELD.replace("idempotency_key", "dedupe_key"), 1),
            True,
            id="rename-field",
        ),
        pytest.param(
            lambda text: text.replace(FIELD, FIELD.replace("string", "bytes"), 1),
            True,
            id="change-field-type",
        ),
        pytest.param(
            lambda text: re.sub(r"\n  rpc EmitSync\(.*?\);", "", text, count=1), True, id="remove-rpc"
        ),
        pytest.param(
            lambda text: text.replace(FIELD, FIELD + "  string source = 5;\n", 1), False, id="add-field"
        ),
        pytest.param(
            lambda text: text + "\nmessage Extra {\n  string note = 1;\n}\n", False, id="add-message"
        ),
    ],
)
def test_buf_breaking_tells_breaking_from_additive_changes(
    tmp_path: Path, edit: Callable[[str], str], breaking: bool
) -> None:
    """The check above is only worth something if it fails on a breaking edit: the same buf.yaml and
    contracts in a scratch workspace, one edit, compared against the real ones."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    events = tmp_path / "proto" / "ironflow" / "v1" / "events.proto"
    original = events.read_text()
    events.write_text(edit(original))
    assert events.read_text() != original, "the edit did not apply: update the test to the contract"

    result = _buf("breaking", "--against", str(ROOT), cwd=tmp_path)
    if breaking:
        assert result.returncode == 100, result.stdout + result.stderr
        assert "proto/ironflow/v1/events.proto" in result.stdout
    else:
        assert result.returncode == 0, result.stdout + result.stderr
