#!/usr/bin/env bash
# Restore the outputs recorded in dvc.lock (`dvc pull`), check that they match
# the current dvc.yaml (same commands, hence the same params), and mark them up
# to date for Snakemake (`snakemake --touch`: pulled files get new modification
# times and .snakemake/ metadata is not versioned). Extra arguments go to `dvc pull`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
mapfile -t locked < <(python -m metamodels dvc-stages locked)
if [ ${#locked[@]} -eq 0 ]; then
  echo "pull.sh: dvc.lock records no stage; nothing to pull" >&2
  exit 1
fi
dvc pull "$@" "${locked[@]}"
if ! dvc status --quiet "${locked[@]}"; then
  dvc status "${locked[@]}" >&2
  echo "pull.sh: the pulled data does not match dvc.yaml (params or rules changed since" \
       "dvc.lock was committed); not marking it up to date. Run snakemake to rebuild." >&2
  exit 1
fi
mapfile -t outputs < <(python -m metamodels dvc-stages locked --outputs)
snakemake "${outputs[@]}" --touch --cores 1 --quiet
