#!/usr/bin/env bash
# Set up, then run the test suite (fast CPU tests; slow and GPU tests are opt-in: -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
