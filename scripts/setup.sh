#!/usr/bin/env bash
# Create .venv/ at the repository root with the pinned dependencies and the
# metamodels package (editable). Safe to rerun: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" - <<'PY' || { echo "metamodels needs Python 3.11 (jax 0.10.2 and its pins)." >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)
PY

# Real images for the CNN backdoor zoo (default dataset): Debian's dataset-fashion-mnist (MIT),
# IDX files under /usr/share/datasets/fashion-mnist/. Installed when apt is usable; otherwise
# the backdoor stage says where to put the files (params: images.fashion_mnist_root).
FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -e "$FMNIST/train-images-idx3-ubyte.gz" ] && [ "${SKIP_APT:-0}" != 1 ] \
   && command -v apt-get >/dev/null 2>&1; then
  SUDO=()
  [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null 2>&1 && SUDO=(sudo -n); }
  if [ "$(id -u)" = 0 ] || [ ${#SUDO[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
      || { "${SUDO[@]}" apt-get update -qq >/dev/null 2>&1 \
           && "${SUDO[@]}" apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } \
      || echo "note: could not apt-get install dataset-fashion-mnist; the backdoor zoo needs it" >&2
  else
    echo "note: dataset-fashion-mnist is not installed (needs root: apt-get install dataset-fashion-mnist)" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# GPU=1 adds the CUDA 12 build of JAX (requirements-gpu.txt); JAX then uses the GPU itself.
extra=()
[ "${GPU:-0}" = 1 ] && extra=(-r requirements-gpu.txt)
stamp=.venv/.requirements.lock.sha256
want=$( (sha256sum requirements.lock pyproject.toml; echo "gpu=${GPU:-0}") | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.lock "${extra[@]}"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
.venv/bin/python -c "import metamodels, tracr, jax; print('metamodels', metamodels.__version__, '| jax', jax.__version__, '| devices', jax.devices())"
