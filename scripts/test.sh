#!/usr/bin/env bash
# Set up, lint, then run the test suite (fast CPU tests; slow and GPU tests are opt-in: -m slow).
# Lint: ruff check and ruff format --check over the tree (pyproject.toml); the import-layers contract
# (lint-imports) runs inside the suite, in tests/test_layers.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
exec .venv/bin/python -m pytest -q "$@"
