#!/usr/bin/env bash
# Download the pure-Python wheels that the GPU machine lacks into .whl/ (git-ignored), for
#   run tool: carry [".whl"], command "bash benchmarks/gpu_check.sh --copy-to $OUT"
# (benchmarks/gpu_check.sh installs them with pip --no-index --no-deps --target when tracr is
# not importable there). Run it here, where pip reaches PyPI; versions are requirements.lock's.
#
# What the GPU image lacks, from the import chains of benchmarks/gpu_check.py:
#   tracr-pypi (the RASP zoo, its compiler; imported by rasp/, zoo/ and so by the decompiler's
#   vocabulary and batches too) -> dm-haiku (tracr.compiler imports it) -> jmp (haiku imports it).
# Everything else they need is in the image (numpy, jax, chex, einops, networkx,
# typing-extensions, absl-py, tabulate; flax, optax, pyyaml for the checks). jsonschema is not
# needed: gpu_check.py reads params with PyYAML and never imports metamodels.core.config.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
pin() {  # NAME -> NAME==VERSION from requirements.lock
  local v
  v=$(grep -i "^$1==" requirements.lock | head -1 | cut -d= -f3)
  [ -n "$v" ] || { echo "gpu_wheels.sh: $1 is not in requirements.lock" >&2; exit 1; }
  echo "$1==$v"
}
PKGS=("$(pin tracr-pypi)" "$(pin dm-haiku)" "$(pin jmp)")

mkdir -p .whl
rm -f .whl/*.whl   # one version of each: two would stop the install
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl "${PKGS[@]}"
ls -l .whl
du -sh .whl
