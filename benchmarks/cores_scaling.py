"""Wall time of the zoo stage (sample + compile) and the CNN-zoo stage at ``--cores 1`` and
``--cores 2``, for this checkout and for an earlier revision ("before"), in one run.

    .venv/bin/python benchmarks/cores_scaling.py --before REV [--zoo-shards 4]
        [--programs-per-shard 20] [--cnn-shards 4] [--train-images 1000] [--cores 1 2] [--out FILE]

Each side is a fresh copy of its revision's files (``git archive``) with the same params (the
defaults, scaled down by the options: the zoo stage builds ``data/compiled/``; the CNN-zoo stage
builds ``data/cnn_zoo/`` with 2 clean and 1 noise-blend CNN per shard on a subset of
Fashion-MNIST), run by the same Snakemake, with that copy's ``src/`` first on PYTHONPATH
so its own code runs. Jobs of one stage are independent, so with N shards and enough jobs
``--cores 2`` should take about half the time of ``--cores 1``, unless each job already uses
every core (what declaring ``threads:`` fixes). Prints one JSON line: seconds per (side,
stage, cores) and the speed-up from --cores 1 to the highest count, per side and stage.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import platform
import subprocess
import sys
import tarfile
import tempfile
import time

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent


def checkout(rev: str, dest: pathlib.Path) -> str:
    """The files of ``rev`` (a git revision, or ``WORKTREE`` for this working tree) in ``dest``."""
    if rev == "WORKTREE":
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                               check=True, capture_output=True, text=True).stdout.split()
        for f in files:
            if (ROOT / f).is_file():
                (dest / f).parent.mkdir(parents=True, exist_ok=True)
                (dest / f).write_bytes((ROOT / f).read_bytes())
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip() + "+worktree"
    blob = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    return subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()


def scaled_params(ws: pathlib.Path, args) -> None:
    p = yaml.safe_load((ws / "params.yaml").read_text())
    p["zoo"].update(shards=args.zoo_shards, programs_per_shard=args.programs_per_shard)
    p["cnn_zoo"].update(shards=args.cnn_shards, models_per_shard={"clean": 2, "noise_blend": 1})
    p["images"]["train_limit"] = args.train_images
    (ws / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def run_stage(ws: pathlib.Path, targets: list[str], cores: int) -> float:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(ws / "src"))
    for d in ("data", ".snakemake", "logs"):
        subprocess.run(["rm", "-rf", str(ws / d)], check=True)
    t0 = time.perf_counter()
    res = subprocess.run([str(BIN / "snakemake"), *targets, "--cores", str(cores), "--quiet"],
                         cwd=ws, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if res.returncode:
        sys.exit(f"{ws}: snakemake {' '.join(targets)} --cores {cores} failed:\n"
                 f"{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return round(took, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="git revision of the 'before' side")
    ap.add_argument("--after", default="WORKTREE", help="git revision, or WORKTREE (default)")
    ap.add_argument("--zoo-shards", type=int, default=4)
    ap.add_argument("--programs-per-shard", type=int, default=20)
    ap.add_argument("--cnn-shards", type=int, default=4)
    ap.add_argument("--train-images", type=int, default=1000, help="images.train_limit")
    ap.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", help="also append the JSON line to this file")
    args = ap.parse_args()
    stages = {
        "zoo": lambda n: [f"data/compiled/shard_{k:05d}.npz" for k in range(n.zoo_shards)],
        "cnn_zoo": lambda n: [f"data/cnn_zoo/shard_{k:03d}.npz" for k in range(n.cnn_shards)],
    }
    record = {"benchmark": "cores_scaling", "machine": platform.node(), "cpus": os.cpu_count(),
              "zoo_programs": args.zoo_shards * args.programs_per_shard,
              "cnn_zoo_shards": args.cnn_shards, "cnns": 3 * args.cnn_shards, "seconds": {}, "speedup": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for side, rev in (("before", args.before), ("after", args.after)):
            ws = pathlib.Path(tmp, side)
            ws.mkdir()
            record[f"{side}_rev"] = checkout(rev, ws)
            scaled_params(ws, args)
            for stage, targets in stages.items():
                times = {}
                for cores in args.cores:
                    times[cores] = run_stage(ws, targets(args), cores)
                    print(f"[cores_scaling] {side} {stage} --cores {cores}: {times[cores]} s",
                          file=sys.stderr, flush=True)
                record["seconds"][f"{side}/{stage}"] = {f"cores{c}": t for c, t in times.items()}
                lo, hi = min(args.cores), max(args.cores)
                record["speedup"][f"{side}/{stage}"] = round(times[lo] / times[hi], 2)
    line = json.dumps(record)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
