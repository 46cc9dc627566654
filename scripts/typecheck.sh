#!/usr/bin/env bash
# Strict mypy over sdk/ and services/ as the one `ironflow` package they install as.
#
# The package is assembled from three source roots (sdk/ironflow, gen/ironflow/v1, services), which
# setuptools maps at install time; mypy cannot follow an editable install's import hook, so this
# builds the same tree out of symlinks in .typecheck/ and checks that.
set -euo pipefail
cd "$(dirname "$0")/.."
farm=.typecheck
rm -rf "$farm"
mkdir -p "$farm/ironflow"
for entry in sdk/ironflow/*; do
  ln -s "../../$entry" "$farm/ironflow/$(basename "$entry")"
done
ln -s ../../services "$farm/ironflow/services"
ln -s ../../gen/ironflow/v1 "$farm/ironflow/v1"
cd "$farm" && exec mypy --config-file ../pyproject.toml -p ironflow
