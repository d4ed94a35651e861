#!/usr/bin/env bash
# Version what Snakemake produced: regenerate dvc.yaml from the DAG, record the
# hashes in dvc.lock (`dvc commit`), and upload the files (`dvc push`).
# Then commit dvc.yaml and dvc.lock with git. Extra arguments go to `dvc push`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
python -m metamodels dvc-yaml
dvc commit --force --quiet
dvc push "$@"
echo "push.sh: now commit the record: git add dvc.yaml dvc.lock && git commit -m 'data'" >&2
