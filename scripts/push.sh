#!/usr/bin/env bash
# Version the pipeline's outputs with DVC: regenerate dvc.yaml, record the
# hashes of every stage whose outputs exist in dvc.lock (`dvc commit`), and of
# Snakemake's per-output records in .snakemake/metadata (params, command, input
# checksums) in snakemake-metadata.dvc, and upload both (`dvc push`). Stages not
# built yet (e.g. another paper's figures) are left out. Then commit dvc.yaml,
# dvc.lock and snakemake-metadata.dvc with git. Extra arguments go to `dvc push`.
# With the records versioned, a plain `dvc pull` in a fresh clone leaves
# `snakemake` nothing to do (docs/pipeline.md, "Versioning data with DVC").
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
python -m metamodels dvc-yaml
mapfile -t built < <(python -m metamodels dvc-stages built)
if [ ${#built[@]} -eq 0 ]; then
  echo "push.sh: no stage has all its outputs; run the pipeline first" >&2
  exit 1
fi
meta=()
if [ -n "$(ls -A .snakemake/metadata 2>/dev/null)" ]; then
  [ -f snakemake-metadata.dvc ] || printf 'outs:\n- path: .snakemake/metadata\n' > snakemake-metadata.dvc
  meta=(snakemake-metadata.dvc)
else
  echo "push.sh: no Snakemake records in .snakemake/metadata (outputs not built by snakemake" \
       "here?); a fresh clone will need scripts/pull.sh, and params edits after it go unnoticed" >&2
fi
# Name the stages only when some are not built: DVC resolves each target on its own (slow).
targets=("${built[@]}" "${meta[@]}")
all=$(python -c 'import yaml; print(len(yaml.safe_load(open("dvc.yaml"))["stages"]))')
[ ${#built[@]} -eq "$all" ] && [ ${#meta[@]} -eq 1 ] && targets=()
dvc commit --force --quiet "${targets[@]}"
dvc push "$@" "${targets[@]}"
echo "push.sh: ${#built[@]} stages; now commit the record:" \
     "git add dvc.yaml dvc.lock ${meta[*]} && git commit -m 'data'" >&2
