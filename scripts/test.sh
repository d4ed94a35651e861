#!/usr/bin/env bash
# Set up .venv/ and run the whole test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest -n 2 --dist loadgroup "$@"
