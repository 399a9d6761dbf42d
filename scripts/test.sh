#!/usr/bin/env bash
# Set up, lint, then run the test suite (fast CPU tests; slow and GPU tests are opt-in: -m slow).
# Lint: ruff check and ruff format --check over the tree, mypy --strict on the serving code (pyproject.toml); the
# import-layers contract (lint-imports) runs inside the suite, in tests/test_layers.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the browser tests (tests/test_page.py) drive Debian's Chromium: installed here where the machine allows it (root
# with apt); elsewhere they are skipped with one line saying how to enable them
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "test: installing Debian's chromium for the browser tests (about a minute)" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } >.venv/apt.log 2>&1; then
    cat .venv/apt.log >&2
    echo "test: apt-get install chromium failed (log above, kept in .venv/apt.log)" >&2
    exit 1
  fi
fi
command -v chromium >/dev/null || [ -n "${GENLAB_CHROMIUM:-}" ] ||
  echo "test: no Chromium, so the browser tests are skipped: apt-get install chromium (or run this as root)" >&2
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
.venv/bin/mypy  # strict on service/ and export/reader.py ([tool.mypy] in pyproject.toml)
exec .venv/bin/python -m pytest -q "$@"
