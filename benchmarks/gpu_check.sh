#!/usr/bin/env bash
# One prepared GPU check: every GPU path of the project in <= 8 minutes on one GPU, one JSON
# record per path (benchmarks/gpu_check.py has the details of each check).
#
#   bash benchmarks/gpu_check.sh                 # full: records -> benchmarks/results/*.gpu.json
#   bash benchmarks/gpu_check.sh --tiny          # same code on the CPU, toy sizes (< 1 minute);
#                                                # records -> a temp dir (printed) or --out DIR
#   options: --out DIR   --copy-to DIR (also copy the records and one log there, e.g. "$OUT"
#            on the device machine)   --only "CHECK ..."   --jobs N (checks at once; default 1,
#            tiny 4)   PYTHON=... (default: python3 if it imports jax, else .venv/bin/python)
#
# Each check runs in its own process under its own timeout, so one failure or hang costs only
# its own record, which then says failed and why. Missing pure-Python packages (tracr, haiku,
# jmp) are installed from .whl/ (benchmarks/gpu_wheels.sh) into a temp dir when absent.
set -u
cd "$(dirname "$0")/.."

TINY=0 OUTDIR="" COPY_TO="" ONLY="" JOBS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) TINY=1 ;;
    --out) OUTDIR="$2"; shift ;;
    --copy-to) COPY_TO="$2"; shift ;;
    --only) ONLY="$2"; shift ;;
    --jobs) JOBS="$2"; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

CHECKS=${ONLY:-"decompiler_step cnn_zoo distill modadd_mod1"}  # (record order)
if [ "$TINY" = 1 ]; then
  # the CPU even where a GPU is present. About 45 CPU-seconds in all (mostly XLA compiling):
  # ~30 s wall on 2 idle cores; the timeouts are a safety net for a shared, loaded machine.
  # and XLA's CPU compiler at its cheapest: compilation is most of a tiny run's time
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
  declare -A TIMEOUT=([decompiler_step]=240 [cnn_zoo]=240 [distill]=240 [modadd_mod1]=240)
  declare -A BUDGET=([decompiler_step]=200 [cnn_zoo]=200 [distill]=200 [modadd_mod1]=200)
  OUTDIR=${OUTDIR:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
  LOGDIR="$OUTDIR/logs"
  JOBS=${JOBS:-4}
  MODE=(--tiny)
else
  # 60 + 75 + 100 + 205 = 440 s at most, one after the other (one GPU; timings). BUDGET is
  # what a check plans for (distill skips its second kind, modadd caps its epochs, to fit)
  declare -A TIMEOUT=([decompiler_step]=60 [cnn_zoo]=75 [distill]=100 [modadd_mod1]=205)
  declare -A BUDGET=([decompiler_step]=50 [cnn_zoo]=60 [distill]=85 [modadd_mod1]=185)
  OUTDIR=${OUTDIR:-benchmarks/results}
  LOGDIR=benchmarks/logs/gpu_check
  JOBS=${JOBS:-1}
  MODE=()
fi
mkdir -p "$OUTDIR" "$LOGDIR"

if [ -z "${PYTHON:-}" ]; then
  if python3 -c 'import jax' 2>/dev/null; then PYTHON=python3
  elif [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python
  else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# tracr (+ dm-haiku, jmp) from the carried wheels when this Python lacks them
if ! "$PYTHON" -c 'import tracr.compiler, haiku' 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    SITE="${TMPDIR:-/tmp}/gpu_check_site"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" .whl/*.whl && export PYTHONPATH="$PYTHONPATH:$SITE"
  else
    echo "gpu_check.sh: tracr/haiku not importable and no .whl/ (run benchmarks/gpu_wheels.sh" \
         "where pip can reach PyPI); the checks that need them will fail" >&2
  fi
fi

echo "gpu_check: mode $([ "$TINY" = 1 ] && echo tiny || echo full), python $("$PYTHON" -V 2>&1)," \
     "records -> $OUTDIR, logs -> $LOGDIR"
command -v nvidia-smi >/dev/null && [ "$TINY" = 0 ] && nvidia-smi -L

run_check() {  # CHECK: its own process, its own timeout, then a record whatever happened
  local c=$1 log="$LOGDIR/$1.log" rc
  timeout -k 10 "${TIMEOUT[$c]}" "$PYTHON" benchmarks/gpu_check.py run "$c" --out "$OUTDIR" \
    "${MODE[@]}" --timeout-s "${TIMEOUT[$c]}" --budget-s "${BUDGET[$c]}" >"$log" 2>&1
  rc=$?
  "$PYTHON" benchmarks/gpu_check.py finalize "$c" --out "$OUTDIR" "${MODE[@]}" --rc "$rc" \
    --log "$log" --timeout-s "${TIMEOUT[$c]}" >/dev/null
  echo "gpu_check: $c exit $rc"
}

T0=$SECONDS
running=0
for c in $CHECKS; do
  [ -n "${TIMEOUT[$c]:-}" ] || { echo "gpu_check.sh: unknown check $c" >&2; exit 2; }
  if [ "$JOBS" -le 1 ]; then
    run_check "$c"
  else
    run_check "$c" &
    running=$((running + 1))
    if [ "$running" -ge "$JOBS" ]; then wait -n; running=$((running - 1)); fi
  fi
done
wait
echo "gpu_check: all checks done in $((SECONDS - T0))s"

"$PYTHON" benchmarks/gpu_check.py summary --out "$OUTDIR" "${MODE[@]}" $CHECKS
status=$?
if [ -n "$COPY_TO" ]; then
  mkdir -p "$COPY_TO"
  for c in $CHECKS; do cp -f "$OUTDIR/$c.gpu.json" "$COPY_TO/" 2>/dev/null; done
  for c in $CHECKS; do echo "===== $c"; cat "$LOGDIR/$c.log" 2>/dev/null; done >"$COPY_TO/gpu_check.log"
fi
exit $status
