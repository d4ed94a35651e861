#!/usr/bin/env bash
# Restore versioned data in a clone: `dvc pull`, then tell Snakemake it is up to date.
#
# Pulled files get new modification times, and the .snakemake/ metadata is not
# versioned, so without the second step Snakemake would rerun jobs. The data is
# only marked up to date if `dvc status` confirms it matches dvc.yaml (same
# commands, i.e. same params, same inputs). Extra arguments go to `dvc pull`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
dvc pull "$@"
if ! dvc status --quiet; then
  dvc status >&2
  echo "pull.sh: the pulled data does not match dvc.yaml (params or rules changed since" \
       "dvc.lock was committed); not marking it up to date. Run snakemake to rebuild." >&2
  exit 1
fi
snakemake all --touch --cores 1 --quiet
