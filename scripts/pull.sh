#!/usr/bin/env bash
# Restore the outputs recorded in dvc.lock and Snakemake's records of them
# (snakemake-metadata.dvc): a thin wrapper around `dvc pull` — plain `dvc pull`
# then `snakemake` works as well (docs/pipeline.md, "Versioning data with DVC").
# On top it checks that the pulled data matches the current dvc.yaml (same
# commands, hence the same params) and marks it up to date with
# `snakemake --touch`, so that later dry runs need not compare input checksums
# (pulled files get new modification times). Extra arguments go to `dvc pull`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
mapfile -t locked < <(python -m metamodels dvc-stages locked)
if [ ${#locked[@]} -eq 0 ]; then
  echo "pull.sh: dvc.lock records no stage; nothing to pull" >&2
  exit 1
fi
meta=()
[ -f snakemake-metadata.dvc ] && meta=(snakemake-metadata.dvc)
# Name the stages only when some are not locked: DVC resolves each target on its own (slow).
targets=("${locked[@]}" "${meta[@]}")
all=$(python -c 'import yaml; print(len(yaml.safe_load(open("dvc.yaml"))["stages"]))')
[ ${#locked[@]} -eq "$all" ] && targets=()
dvc pull "$@" "${targets[@]}"
if ! dvc status --quiet "${targets[@]}"; then
  dvc status "${targets[@]}" >&2
  echo "pull.sh: the pulled data does not match dvc.yaml (params or rules changed since" \
       "dvc.lock was committed); not marking it up to date. Run snakemake to rebuild." >&2
  exit 1
fi
if [ ${#meta[@]} -eq 0 ]; then
  echo "pull.sh: this dvc.lock came without Snakemake's records (snakemake-metadata.dvc;" \
       "pushed by an older scripts/push.sh): the outputs are marked up to date by mtime only," \
       "and a params edit will not rerun them until they are rebuilt or pushed again" >&2
fi
mapfile -t outputs < <(python -m metamodels dvc-stages locked --outputs)
snakemake "${outputs[@]}" --touch --cores 1 --quiet
