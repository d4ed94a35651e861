"""Verified programs per second of the program zoo (sample + compile + verify), this checkout
against an earlier revision on the same programs.

    .venv/bin/python benchmarks/zoo_throughput.py --programs 300 --baseline 06510f4

Each side runs in fresh processes, ``--cores`` of them at once, each producing its share of
``--programs`` accepted programs from its own sampler shard (seeded as the zoo's shards are,
so both sides sample the same programs). Every kept program is verified on the whole input
domain, as the zoo does. The baseline side runs the same code from a ``git worktree`` of
``--baseline`` (removed afterwards). Prints one JSON line (appended to
benchmarks/results/zoo_throughput.cpu.jsonl): per side, seconds per program of each stage
(summed over processes), kept programs and end-to-end programs per second of wall time, and
the ratio. The params are params.yaml's (``--params`` for another file).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, time
import yaml
from metamodels.rasp.sampler import SamplerConfig, sample_shard
from metamodels.zoo import stage as Z
params = yaml.safe_load(open(sys.argv[1])); shard, n = int(sys.argv[2]), int(sys.argv[3])
t0 = time.perf_counter()
sampled, _ = sample_shard(SamplerConfig.from_params(params), params["zoo"]["seed"], shard, n)
t1 = time.perf_counter()
state = Z._worker_init(params)
compile_s = verify_s = 0.0
kept = 0
for s in sampled:
    try:
        r = Z.compile_and_verify(state, s.program.to_json())
    except Exception:
        continue
    compile_s += r["compile_s"]; verify_s += r["verify_s"]
    kept += int(r["verification"]["passed"] and bool(r["verification"]["exhaustive"]))
print(json.dumps({"sampled": len(sampled), "kept": kept, "sample_s": t1 - t0,
                  "compile_s": compile_s, "verify_s": verify_s,
                  "total_s": time.perf_counter() - t0}))
"""


def run_side(src: pathlib.Path, params: str, programs: int, cores: int) -> dict:
    """One side's measurement (the params file is read as it is, without the side's schema:
    the zoo's stages read only their own sections)."""
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    per = [programs // cores + (k < programs % cores) for k in range(cores)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, params, str(k), str(n)],
                              stdout=subprocess.PIPE, env=env, cwd=ROOT)
             for k, n in enumerate(per)]
    outs = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"worker failed (exit {p.returncode}) with PYTHONPATH={src}")
        outs.append(json.loads(out.decode().strip().splitlines()[-1]))
    wall = time.perf_counter() - t0
    tot = {k: sum(o[k] for o in outs) for k in outs[0]}
    n = tot["sampled"]
    return {"kept": tot["kept"], "sampled": n, "wall_s": round(wall, 2),
            "programs_per_s": round(tot["kept"] / wall, 2),
            "s_per_program": {k: round(tot[f"{k}_s"] / n, 4)
                              for k in ("sample", "compile", "verify", "total")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=300)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--baseline", default="06510f4", help="git revision of the previous path")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/zoo_throughput.cpu.jsonl"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wt = pathlib.Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(wt), a.baseline], cwd=ROOT,
                       check=True, capture_output=True)
        try:
            base = run_side(wt / "src", a.params, a.programs, a.cores)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT,
                           capture_output=True)
    ours = run_side(ROOT / "src", a.params, a.programs, a.cores)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                          capture_output=True).stdout.strip()
    rec = {"benchmark": "zoo_throughput", "programs": a.programs, "cores": a.cores,
           "params": os.path.relpath(a.params, ROOT), "baseline_rev": a.baseline,
           "rev": head, "baseline": base, "ours": ours,
           "speedup_end_to_end": round(ours["programs_per_s"] / base["programs_per_s"], 2)}
    line = json.dumps(rec)
    print(line)
    pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
