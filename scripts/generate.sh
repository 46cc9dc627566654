#!/usr/bin/env bash
# Regenerate gen/ from proto/ with buf and protoc-gen-es (pinned in package.json) and the local Python
# plugins (pinned in pyproject's dev extra): Python into gen/ironflow, TypeScript into gen/ts.
# gen/ is committed; tests/test_contracts.py fails when it is stale.
set -euo pipefail
cd "$(dirname "$0")/.."

buf=node_modules/.bin/buf
if [ ! -x "$buf" ] || [ ! -x node_modules/.bin/protoc-gen-es ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
# The plugins run with the Python that runs this script (the project's virtualenv).
python_bin=$(command -v python)
export PATH="$(dirname "$python_bin"):$PATH"

rm -rf gen/ironflow gen/ts
"$buf" generate
# Package markers so gen/ironflow/v1 imports as ironflow.v1 (buf's Python plugins write none).
echo '"""Generated Protobuf, gRPC and Connect code for ironflow.v1 (scripts/generate.sh)."""' > gen/ironflow/v1/__init__.py
