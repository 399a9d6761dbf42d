#!/usr/bin/env bash
# The container test (tests/test_container.py): build the CPU image around a tiny model with
# scripts/containerize.sh, run it, call every route and compare with the same export served outside,
# check the serving switches, the start-up log, a SIGTERM during a request and a tampered graph.
# Needs docker or podman (or root and apt-get, to install podman); a few minutes.
#
#   bash scripts/container_test.sh                    # output also in benchmarks/results/container_test.txt
#   GENLAB_TEST_MORE_IMAGES=genlab:gpu bash scripts/container_test.sh   # also check that image's start-up log
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${CONTAINER_TEST_OUT:-benchmarks/results/container_test.txt}
mkdir -p "$(dirname "$out")"
{
  echo "# bash scripts/container_test.sh   ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
  TQDM_DISABLE=1 .venv/bin/python -m pytest -m container -n 0 -s -p no:cacheprovider -o console_output_style=classic -rfEs \
    tests/test_container.py "$@"
} 2>&1 | sed -u "s/[^\r]*\r//g" | tee "$out" # a progress bar: its last state only
