#!/usr/bin/env bash
# Set up .venv/ and run the pipeline to TARGET (default: all, which ends in results/figure3.pdf).
#   bash scripts/run.sh                      # default target, all cores
#   bash scripts/run.sh data/dataset/summary.json --configfile my-params.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec snakemake --cores "${CORES:-$(nproc)}" "${@:-all}"
