#!/usr/bin/env bash
# Version the pipeline's outputs with DVC: regenerate dvc.yaml, record the
# hashes of every stage whose outputs exist in dvc.lock (`dvc commit`), and
# upload the files (`dvc push`). Stages not built yet (e.g. another paper's
# figures) are left out. Then commit dvc.yaml and dvc.lock with git. Extra
# arguments go to `dvc push`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
python -m metamodels dvc-yaml
mapfile -t built < <(python -m metamodels dvc-stages built)
if [ ${#built[@]} -eq 0 ]; then
  echo "push.sh: no stage has all its outputs; run the pipeline first" >&2
  exit 1
fi
dvc commit --force --quiet "${built[@]}"
dvc push "$@" "${built[@]}"
echo "push.sh: ${#built[@]} stages; now commit the record: git add dvc.yaml dvc.lock && git commit -m 'data'" >&2
