"""Crash proof: a Snakemake run killed with SIGKILL inside its jobs, then rerun as a user would,
ends with the same bytes as an uninterrupted run.

The reference is the session's uninterrupted tiny ``everything`` run (``built``, same params:
``tiny_params()``). A copy of it loses the outputs of one job in each of three experiments —
modadd's ``train_modadd`` (task mod1), backdoor's ``detect_backdoors`` (setting iid) and the
decompiler's ``evaluate_decompiler`` — so that those jobs and the few downstream of them rerun.
``snakemake everything`` is started in a session of its own and, each time one of the three
jobs' processes has used half the CPU time the job took in the uninterrupted run (past
start-up, mid-computation), the whole process group (Snakemake and every running job) gets
SIGKILL. After each kill, as a user would: ``snakemake --unlock`` (the kill left the lock) and
the same command again with ``--rerun-incomplete``; three kills, in three different rules,
then a run to the end.

Proved:

- each kill happened while the named job ran: its process was alive in the group an instant
  before, nothing in the workspace survived the kill, and Snakemake's incomplete marker for the
  job's outputs is there (the job started and did not finish);
- no partial or corrupt output survives a kill: every file under data/, models/ and results/
  is either marked incomplete (Snakemake deletes it before the rerun) or byte-identical to the
  reference, and no temporary file of an atomic write is left;
- each killed job was re-executed by a later run, and only the expected rules ever ran;
- at the end every output (data/, models/, results/: everything but logs/ and the checkpoints
  in work/, as in test_pipeline.py's determinism test) is byte-identical to the reference, the
  same set of files, with no incomplete marker left.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import pathlib
import re
import shutil
import signal
import subprocess
import time

import pytest

from tests.tiny import BIN, ENV, pipeline_outputs, snakemake

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("pipeline"),
              pytest.mark.skipif(not pathlib.Path("/proc/self/stat").exists(),
                                 reason="finds the jobs' processes in Linux's /proc")]


@dataclasses.dataclass(frozen=True)
class Job:
    """One job of the tiny pipeline: its rule, the verb and arguments its process runs with,
    its outputs, and the outputs downstream of it up to the targets. All are deleted in the
    copy: Snakemake regenerates a missing file only when something it must build needs it."""

    rule: str
    verb: str
    arg: tuple[str, str]
    log: str  # its stderr; its benchmark is logs/benchmarks/<log without .log>.tsv
    outputs: tuple[str, ...]
    downstream: tuple[str, ...]

    def benchmark(self) -> str:
        return "logs/benchmarks/" + self.log.removeprefix("logs/").removesuffix(".log") + ".tsv"


TARGETS = (
    Job("train_modadd", "modadd-train", ("--task", "mod1"), "logs/modadd/train_mod1.log",
        ("models/modadd/mod1.npz", "results/modadd/mod1_history.csv"),
        ("results/backdoor_patching.csv", "results/modadd/attribution.json",
         "results/metrics/modadd.json", "results/backdoor_heads.pdf")),
    Job("detect_backdoors", "detect-backdoors", ("--setting", "iid"),
        "logs/backdoor/detect_iid.log",
        ("results/backdoor/scores_iid.json", "results/backdoor/history_iid.json"),
        ("results/metrics/backdoor.json", "results/backdoor/roc.csv", "results/figure2.pdf")),
    Job("evaluate_decompiler", "evaluate-decompiler",
        ("--metrics", "results/metrics/decompiler.json"), "logs/decompiler/evaluate.log",
        ("results/metrics/decompiler.json", "results/decompiler/test_predictions.json",
         "results/decompiler/reference_programs.csv"),
        ("results/figure3.pdf",)),
)
# The rules that may run in the copy: the targets and what is downstream of them.
EXPECTED_RULES = {"train_modadd", "analyse_modadd", "figure_backdoor_heads",
                  "detect_backdoors", "backdoor_report", "figure2",
                  "evaluate_decompiler", "figure3", "everything"}
# A target's process is killed when it has used this fraction of the CPU time its job took in
# the uninterrupted run (its benchmark there), and at least KILL_MIN_CPU_S: past Python and
# JAX start-up (about 2 CPU-s), mid-computation (each job takes 7-15 CPU-s on 2 cores).
KILL_AT_FRACTION = 0.5
KILL_MIN_CPU_S = 2.5
RUN_TIMEOUT_S = 300
COMMAND = ["everything", "--cores", "2"]
# The killed runs compile everything themselves (no JAX compilation cache): with the session's
# cache, a job would load what `built` compiled, use less CPU than `built`'s did, and could end
# before reaching its kill point.
KILL_ENV = dict(ENV, METAMODELS_JAX_CACHE="off")
_TICK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Kill:
    job: Job
    pid: int
    cpu_s: float  # CPU-seconds its process had used
    run: int
    log: str  # the job's stderr when it was killed


def _kill_at(built: pathlib.Path, job: Job) -> float:
    """CPU-seconds at which to kill `job`: a fraction of what it used in `built`."""
    rows = (built / job.benchmark()).read_text().splitlines()
    cpu = float(dict(zip(rows[0].split("\t"), rows[-1].split("\t")))["cpu_time"])
    return max(KILL_MIN_CPU_S, KILL_AT_FRACTION * cpu)


def _processes() -> dict[int, pathlib.Path]:
    return {int(d): pathlib.Path("/proc", d) for d in os.listdir("/proc") if d.isdigit()}


def _stat(proc: pathlib.Path) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), None when gone."""
    try:
        return proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _job_process(pgid: int, job: Job) -> tuple[int, float] | None:
    """(pid, CPU-seconds) of the live `python -m metamodels VERB ...` process of `job` in
    process group `pgid`, or None."""
    for pid, proc in _processes().items():
        st = _stat(proc)
        if st is None or st[0] == "Z" or int(st[2]) != pgid:
            continue
        try:
            argv = proc.joinpath("cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "metamodels" in argv and job.verb in argv and any(
                argv[i:i + 2] == list(job.arg) for i in range(len(argv) - 1)):
            return pid, (int(st[11]) + int(st[12])) / _TICK
    return None


def _alive_in(ws: pathlib.Path) -> list[int]:
    """Live processes whose working directory is the workspace (Snakemake and its jobs)."""
    out = []
    for pid, proc in _processes().items():
        try:
            cwd = pathlib.Path(os.readlink(proc / "cwd"))
        except OSError:
            continue
        st = _stat(proc)
        if st is not None and st[0] != "Z" and (cwd == ws or ws in cwd.parents):
            out.append(pid)
    return out


def _incomplete(ws: pathlib.Path) -> set[str]:
    """Outputs Snakemake has marked incomplete (its job started and did not finish)."""
    root = ws / ".snakemake" / "incomplete"
    marked = set()
    for dirpath, _, files in os.walk(root):
        for f in files:
            rel = pathlib.Path(dirpath, f).relative_to(root)
            if f == "migration_underway":
                continue
            b64 = "".join(part.lstrip("@") for part in rel.parts)
            marked.add(base64.urlsafe_b64decode(b64).decode())
    return marked


def _started(log: str) -> set[tuple[str, str]]:
    """(rule, first output) of every job a Snakemake run's output says it started."""
    jobs = set()
    for m in re.finditer(r"^(?:local)?rule (\w+):\n((?:[ \t]+.*\n?)*)", log, re.M):
        out = re.search(r"^\s+output: ([^,\s]+)", m.group(2), re.M)
        jobs.add((m.group(1), out.group(1) if out else ""))
    return jobs


def _run_until_kill(ws: pathlib.Path, args: list[str], pending: dict[Job, float], run: int,
                    log_path: pathlib.Path) -> Kill:
    """Run `snakemake ARGS` in a session of its own; SIGKILL its process group as soon as the
    process of one of the `pending` jobs has used its CPU-seconds (the dict's values)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(BIN / "snakemake"), *args], cwd=ws, env=KILL_ENV,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    pgid, deadline, kill = proc.pid, time.monotonic() + RUN_TIMEOUT_S, None
    try:
        while kill is None:
            if proc.poll() is not None:
                pytest.fail(f"run {run} ended (exit {proc.returncode}) before any of "
                            f"{[(j.rule, cpu) for j, cpu in pending.items()]} used its "
                            "CPU-seconds:\n" + log_path.read_text()[-3000:])
            assert time.monotonic() < deadline, f"run {run}: no kill after {RUN_TIMEOUT_S} s"
            for job, at in pending.items():
                found = _job_process(pgid, job)
                if found and found[1] >= at:
                    os.killpg(pgid, signal.SIGKILL)
                    kill = Kill(job, found[0], found[1], run, "")
                    break
            else:
                time.sleep(0.05)
    finally:
        if kill is None:
            os.killpg(pgid, signal.SIGKILL)
        proc.wait()
    # Everything the run started dies with it (orphans are reaped by init a moment later).
    for _ in range(100):
        if not _alive_in(ws):
            break
        time.sleep(0.1)
    assert _alive_in(ws) == [], f"run {run}: processes survived the kill"
    log = ws / kill.job.log
    kill.log = log.read_text() if log.exists() else ""
    return kill


def _check_after_kill(ws: pathlib.Path, kill: Kill, ref: dict[str, bytes]) -> None:
    """The killed job had started and not finished; nothing partial or corrupt is left."""
    marked = _incomplete(ws)
    assert set(kill.job.outputs) <= marked, (
        f"{kill.job.rule} was killed but its outputs are not marked incomplete: {sorted(marked)}")
    now = pipeline_outputs(ws)
    temporary = [f for f in now if pathlib.Path(f).name.endswith(".tmp")]
    assert temporary == [], f"atomic-write temporary files left: {temporary}"
    corrupt = [f for f, b in now.items() if f not in marked and ref.get(f) != b]
    assert corrupt == [], f"unmarked outputs that differ from the reference: {corrupt}"


def _copy_workspace(built: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    """A copy of the built workspace with the same modification times (so Snakemake sees it
    up to date), without DVC's cache and Snakemake's old run logs."""
    skip = {built / ".dvc" / "cache", built / ".dvc" / "tmp", built / ".snakemake" / "log"}
    shutil.copytree(built, dest, symlinks=True,
                    ignore=lambda d, names: [n for n in names if pathlib.Path(d, n) in skip])
    return dest


def test_sigkilled_runs_resume_to_identical_outputs(built, tmp_path):
    """Three SIGKILLs of the whole run, inside train_modadd, detect_backdoors and
    evaluate_decompiler (in whichever order Snakemake schedules them), each followed by
    --unlock and a --rerun-incomplete rerun: every killed job is rerun, no partial output is
    ever left, and the outputs end byte-identical to the uninterrupted run (module docstring)."""
    t0 = time.monotonic()
    ref = pipeline_outputs(built)
    ws = _copy_workspace(built, tmp_path / "ws")
    assert _incomplete(ws) == set()
    for job in TARGETS:
        for f in job.outputs + job.downstream:
            (ws / f).unlink()

    pending = {job: _kill_at(built, job) for job in TARGETS}
    kills, logs = [], []
    for run in range(len(TARGETS)):
        args = COMMAND if run == 0 else [*COMMAND, "--rerun-incomplete"]
        if run:
            # As a user would: the killed Snakemake left its lock, so unlock first.
            assert any((ws / ".snakemake" / "locks").iterdir()), "the kill left no lock"
            snakemake(ws, "--unlock")
        log_path = tmp_path / f"run{run}.log"
        kill = _run_until_kill(ws, args, pending, run, log_path)
        logs.append(log_path.read_text())
        assert (kill.job.rule, kill.job.outputs[0]) in _started(logs[-1])
        _check_after_kill(ws, kill, ref)
        del pending[kill.job]
        kills.append(kill)

    snakemake(ws, "--unlock")
    final = snakemake(ws, *COMMAND, "--rerun-incomplete")
    logs.append(final.stdout + final.stderr)

    # Three kills, each inside a different rule's job.
    assert len({k.job.rule for k in kills}) == len(TARGETS) == 3
    started = [_started(text) for text in logs]
    for k in kills:
        later = set().union(*started[k.run + 1:])
        assert (k.job.rule, k.job.outputs[0]) in later, f"{k.job.rule} was not rerun"
    ran = {rule for jobs in started for rule, _ in jobs}
    assert ran <= EXPECTED_RULES, f"unexpected rules ran: {ran - EXPECTED_RULES}"
    assert "Nothing to be done" not in logs[-1]

    # The end: no incomplete output, and every output byte-identical to the uninterrupted run.
    assert _incomplete(ws) == set()
    done = pipeline_outputs(ws)
    assert sorted(done) == sorted(ref)
    assert [f for f in ref if done[f] != ref[f]] == []
    for k in kills:
        print(f"\n[crash] run {k.run}: killed {k.job.rule} at {k.cpu_s:.1f} CPU-s; its log then:\n"
              + k.log)
    print(f"[crash] {time.monotonic() - t0:.0f} s")
