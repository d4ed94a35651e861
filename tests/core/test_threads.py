"""Each job's process keeps to the threads its rule declares (params.yaml `threads`).

The census is read from inside the job: ``python -m metamodels`` prints, at the end of a verb
whose thread count was set, the size of XLA's CPU compute pool and the process's OS threads
(/proc/self/status). A tiny modular-addition training (JAX on the CPU) is the job.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from metamodels.core import threads
from tests.tiny import ROOT, tiny_params

# Threads a JAX process has beside its compute pools: the main thread, JAX's dispatch and
# host-callback threads, LLVM compile workers, ... Measured in this job with threads = 1: 17
# (the XLA pool and BLAS at 1 thread each), on a 2-core machine.
HELPER_THREADS = 24


def test_wanted_comes_from_the_rules_threads_section_first():
    cfg = json.dumps({"threads": {"train": 3}, "modadd": {"seed": 0}})
    assert threads.wanted(cfg, environ={"OMP_NUM_THREADS": "1"}) == 3
    assert threads.wanted(json.dumps({"modadd": {}}), environ={"OMP_NUM_THREADS": "2"}) == 2
    assert threads.wanted(None, environ={}) is None


@pytest.mark.parametrize("cfg,env,needle", [
    ({"threads": {"train": 2, "zoo": 1}}, {}, "one group"),
    ({"threads": {"train": 0}}, {}, "--config threads"),
    ({}, {"OMP_NUM_THREADS": "two"}, "OMP_NUM_THREADS"),
])
def test_wanted_rejects_what_is_not_one_positive_count(cfg, env, needle):
    with pytest.raises(ValueError, match=needle):
        threads.wanted(json.dumps(cfg), environ=env)


def test_limit_sets_every_pool_before_the_libraries_load():
    code = ("import os, sys; from metamodels.core import threads; env = {}; "
            "ok = threads.limit(3, env); print(ok, sorted(env.items()), 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("True")
    assert all(f"('{v}', '3')" in out for v in threads.POOL_VARIABLES)
    assert out.strip().endswith("False")  # metamodels.core.threads itself imports no NumPy


def test_limit_changes_nothing_once_numpy_is_loaded(capsys):
    import numpy  # noqa: F401  (already loaded by the test session; made explicit)
    env: dict = {}
    assert threads.limit(1, env) is False and env == {}
    assert "already loaded" in capsys.readouterr().err


def run_job(tmp_path: pathlib.Path, n: int) -> dict[str, int]:
    """Train the tiny modadd 'clean' task with threads.train = n; the job's own census."""
    p = tiny_params()
    m = p["modadd"]
    cfg = {"threads": {"train": n},
           "modadd": {"seed": m["seed"], "train": m["train"], "runs": {"clean": 1}}}
    env = {k: v for k, v in os.environ.items() if k not in threads.POOL_VARIABLES}
    res = subprocess.run(
        [sys.executable, "-m", "metamodels", "modadd-train", "--config", json.dumps(cfg),
         "--task", "clean", "--model", str(tmp_path / f"m{n}.npz"),
         "--history", str(tmp_path / f"h{n}.csv")],
        cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    m = re.search(r"\[threads\] kept to (\d+): XLA CPU pool (\d+), BLAS/OpenMP (\d+); "
                  r"(\d+) OS threads", res.stderr)
    assert m, res.stderr[-2000:]
    return {"kept": int(m[1]), "xla_pool": int(m[2]), "blas": int(m[3]), "os": int(m[4])}


@pytest.mark.skipif(not pathlib.Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_job_runs_with_the_threads_its_rule_declares(tmp_path):
    one, two = run_job(tmp_path, 1), run_job(tmp_path, 2)
    assert one["kept"] == 1 and two["kept"] == 2
    assert one["xla_pool"] == 1 and one["blas"] == 1, one     # one compute thread ...
    assert one["os"] <= 1 + HELPER_THREADS, one               # ... and a constant few helpers
    assert two["xla_pool"] == 2 and two["blas"] == 2, two
    assert one["os"] < two["os"] <= one["os"] + 2 * (2 - 1) + 2, (one, two)


def dry_run_jobs(cores: int) -> list[dict]:
    """Rule, threads and shell command of every job of `everything` (a forced dry run)."""
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "everything", "--dry-run", "--forceall",
         "--printshellcmds", "--cores", str(cores)],
        cwd=ROOT, capture_output=True, text=True,
        env=dict(os.environ, PATH=f"{pathlib.Path(sys.executable).parent}{os.pathsep}"
                                  f"{os.environ['PATH']}"))
    assert res.returncode == 0, res.stderr[-2000:]
    jobs: list[dict] = []
    for line in (res.stdout + res.stderr).splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line.strip()):
            jobs.append({"rule": m[1], "threads": 1, "cmd": None})
        elif jobs and (m := re.match(r"^\s+threads: (\d+)$", line)):
            jobs[-1]["threads"] = int(m[1])
        elif jobs and line.startswith("Shell command: "):
            jobs[-1]["cmd"] = line[len("Shell command: "):]
    return [j for j in jobs if j["cmd"]]


def test_every_job_keeps_to_the_threads_its_rule_declares(default_params):
    """Each rule's `threads:` comes from params.yaml, and its verb, given the command line the
    rule writes and the OMP_NUM_THREADS Snakemake sets, keeps to exactly that many."""
    jobs = dry_run_jobs(cores=64)
    assert {j["rule"] for j in jobs} >= {"train_decompiler", "cnn_zoo_shard", "figure2"}
    groups = default_params["threads"]
    for job in jobs:
        cfg = re.search(r"--config '(\{.*?\})'", job["cmd"])
        kept = threads.wanted(cfg[1] if cfg else None,
                              environ={"OMP_NUM_THREADS": str(job["threads"])})
        assert kept == job["threads"], job
        if cfg and "threads" in json.loads(cfg[1]):
            (group,) = json.loads(cfg[1])["threads"]
            assert job["threads"] == groups[group], job
    declared = {j["rule"]: j["threads"] for j in jobs}
    assert declared["train_decompiler"] == groups["train"]
    assert declared["cnn_zoo_shard"] == groups["cnn_zoo"]
    assert declared["compile_shard"] == groups["zoo"]


def test_a_job_keeps_the_params_count_when_snakemake_gives_it_fewer_cores(default_params):
    """With --cores 1 Snakemake runs a 2-thread rule as 1 thread (OMP_NUM_THREADS=1); its
    process still uses the params' 2, so its outputs do not depend on --cores."""
    cfg = json.dumps({"threads": {"train": default_params["threads"]["train"]}})
    assert threads.wanted(cfg, environ={"OMP_NUM_THREADS": "1"}) == 2
