#!/usr/bin/env bash
# The SLURM profile (profiles/slurm) against a real SLURM, not a mock: starts a one-node
# cluster on this machine (Debian's slurmctld/slurmd 22.05 and munge, installed with apt-get
# when missing; a generated slurm.conf without cgroups or an accounting database), runs the
# tiny configuration's `all` (tests/tiny.py) through `snakemake --profile profiles/slurm`,
# checks that every job ran as a SLURM job (job ids from Snakemake, their records in
# slurmctld's log and squeue) and that the outputs equal a local `--cores 2` run's bit for bit
# (data/, models/, results/; not logs/ or work/, as tests/test_pipeline.py's determinism test).
#
#   bash scripts/slurm_test.sh          # after scripts/setup.sh (.ci/run: after the suite)
#
# Needs root and apt-get (or the daemons already installed). Where it cannot run it prints
# "SKIPPED: <reason>" and exits 0; SLURM_TEST_REQUIRED=1 turns a skip into a failure.
# KEEP=1 keeps the scratch directory (workspaces, slurm.conf, daemon logs).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$ROOT/.venv/bin:$PATH"
START=$SECONDS
LIMIT_S=${SLURM_TEST_LIMIT_S:-900}   # the SLURM run's timeout (it must never wait forever)

skip() {
  echo "slurm_test: SKIPPED: $*"
  [ "${SLURM_TEST_REQUIRED:-0}" = 1 ] && { echo "slurm_test: FAILED (SLURM_TEST_REQUIRED=1)"; exit 1; }
  exit 0
}
fail() { echo "slurm_test: FAILED: $*"; exit 1; }
log() { echo "slurm_test [$((SECONDS - START)) s]: $*"; }

[ "$(id -u)" = 0 ] || skip "not root (starting slurmctld/slurmd and munged needs root)"
need=()
for b in slurmctld slurmd sbatch squeue munged; do command -v "$b" >/dev/null 2>&1 || need+=("$b"); done
if [ ${#need[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || skip "no apt-get to install ${need[*]}"
  log "installing slurmctld slurmd slurm-client munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  pkgs=(slurmctld slurmd slurm-client munge)
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 \
         && apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1; } \
    || skip "apt-get install ${pkgs[*]} failed (no network or no package lists?)"
fi
.venv/bin/python -c "import snakemake_executor_plugin_slurm" 2>/dev/null \
  || fail "snakemake-executor-plugin-slurm is not installed: run bash scripts/setup.sh"

T=$(mktemp -d /tmp/slurm_test.XXXXXX)
PIDS=()
cleanup() {
  local rc=$?
  [ -n "${POLLER:-}" ] && kill "$POLLER" 2>/dev/null || true
  [ "${LINKED:-0}" = 1 ] && rm -f /etc/slurm/slurm.conf
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  if [ "${KEEP:-0}" = 1 ] || [ $rc != 0 ]; then echo "slurm_test: scratch kept: $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT

# --- munge: reuse a running munged, else start one as the munge user ----------------------------
if ! (munge -n | unmunge) >/dev/null 2>&1; then
  [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; }
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- munged --foreground >"$T/munged.out" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 50); do (munge -n | unmunge) >/dev/null 2>&1 && break; sleep 0.1; done
  (munge -n | unmunge) >/dev/null 2>&1 || fail "munged did not start: $(cat "$T/munged.out")"
  log "munged started (pid ${PIDS[-1]})"
else
  log "munged already running: reused"
fi

# --- a one-node cluster: no cgroups, no accounting database --------------------------------------
HOST=$(hostname -s)
read -r CTLD_PORT SLURMD_PORT < <(python3 - <<'PY'
import socket
ports = []
for _ in range(2):
    s = socket.socket(); s.bind(("", 0)); ports.append(s.getsockname()[1]); s.close()
print(*ports)
PY
)
NODE=$(slurmd -C | head -1 | sed -E 's/ RealMemory=[0-9]+//')
DETECTED_MB=$(slurmd -C | sed -nE 's/.*RealMemory=([0-9]+).*/\1/p')
REAL_MB=$((DETECTED_MB * 8 / 10))   # below what slurmd detects, or the node is drained
mkdir -p "$T/etc" "$T/state" "$T/spool"
export SLURM_CONF="$T/etc/slurm.conf"
# SLURM_CONF reaches the jobs, but the plugin's job step drops every SLURM_* variable before
# it calls srun, which then reads /etc/slurm/slurm.conf: link ours there for the test's time.
SYSCONF=/etc/slurm/slurm.conf
if [ -e "$SYSCONF" ] || [ -L "$SYSCONF" ]; then
  skip "$SYSCONF exists (a configured SLURM on this machine): not replacing it"
fi
mkdir -p /etc/slurm && ln -s "$SLURM_CONF" "$SYSCONF" && LINKED=1
cat > "$SLURM_CONF" <<EOF
ClusterName=metamodels-test
SlurmctldHost=$HOST
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=300
MailProg=/bin/true
$NODE RealMemory=$REAL_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -D -c -f "$SLURM_CONF" >"$T/slurmctld.out" 2>&1 &
PIDS+=($!)
slurmd -D -f "$SLURM_CONF" >"$T/slurmd.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
  state=$(sinfo -h -o %T 2>/dev/null || true)
  case "$state" in idle*|mixed*|allocated*) break ;; esac
  sleep 0.3
done
case "$state" in idle*|mixed*|allocated*) ;; *)
  tail -5 "$T/slurmctld.log" "$T/slurmd.log" 2>/dev/null || true
  fail "the node did not come up (sinfo: '${state:-nothing}')" ;;
esac
log "cluster up: $NODE RealMemory=$REAL_MB, node $state (slurmctld ${PIDS[-2]}, slurmd ${PIDS[-1]})"

# --- the local reference, then the same through SLURM --------------------------------------------
python scripts/tiny_workspace.py make "$T/local" >/dev/null
python scripts/tiny_workspace.py make "$T/slurm" >/dev/null
t0=$SECONDS
(cd "$T/local" && snakemake --cores 2 all --quiet) >"$T/local.out" 2>&1 \
  || { tail -30 "$T/local.out"; fail "the local run failed"; }
log "local run (--cores 2): $((SECONDS - t0)) s"

# What SLURM sees of each job, every 2 s: id, comment (rule + wildcards), memory, time limit, CPUs.
while sleep 2; do squeue -h -o '%i|%k|%m|%l|%C|%T' 2>/dev/null; done >"$T/squeue.log" &
POLLER=$!
t0=$SECONDS
set +e
# a CPU-only cluster (METAMODELS_GPUS=0), the partition from the user's environment, no
# account (no accounting database), the first status check after 5 s instead of 40.
(cd "$T/slurm" && METAMODELS_GPUS=0 SBATCH_PARTITION=debug timeout -k 30 "$LIMIT_S" \
  snakemake --profile profiles/slurm all --slurm-no-account \
    --slurm-init-seconds-before-status-checks 5 --jobs 4) >"$T/slurm.out" 2>&1
rc=$?
set -e
SLURM_S=$((SECONDS - t0))
kill "$POLLER" 2>/dev/null || true; POLLER=
[ $rc = 124 ] || [ $rc = 137 ] && { tail -30 "$T/slurm.out"; fail "the SLURM run timed out after $LIMIT_S s"; }
[ $rc = 0 ] || { tail -40 "$T/slurm.out"; fail "the SLURM run failed (exit $rc)"; }
log "SLURM run (--profile profiles/slurm): $SLURM_S s"

# --- the jobs ran under SLURM --------------------------------------------------------------------
mapfile -t IDS < <(sed -nE 's/.*submitted with SLURM jobid ([0-9]+).*/\1/p' "$T/slurm.out" | sort -un)
n_rules=$(grep -cE '^rule [a-z_0-9]+:' "$T/local.out" || true)
[ ${#IDS[@]} -ge 7 ] || { tail -30 "$T/slurm.out"; fail "only ${#IDS[@]} SLURM job ids in Snakemake's log"; }
echo "SLURM jobs (id | rule + wildcards | memory | time limit | CPUs, as squeue listed them):"
for id in "${IDS[@]}"; do
  grep -qE "_job_complete: JobId=$id WEXITSTATUS 0" "$T/slurmctld.log" \
    || fail "slurmctld did not record job $id completing with exit status 0"
  line=$(grep -m1 "^$id|" "$T/squeue.log" || echo "$id|(finished between polls)")
  echo "  $line"
done
echo "  ${#IDS[@]} jobs, each recorded by slurmctld as complete with exit status 0"
grep -qE "Launching batch job|launch task" "$T/slurmd.log" || fail "slurmd's log shows no launched job"

# --- bit for bit the local run's outputs ---------------------------------------------------------
python scripts/tiny_workspace.py compare "$T/local" "$T/slurm" || fail "outputs differ from the local run"
log "PASSED in $((SECONDS - START)) s (local $((t0 - START)) s before the SLURM run, SLURM run $SLURM_S s)"
