"""Decompiler training at growing zoo sizes: peak memory and time to the first step, with
token shards read on demand (the pipeline's path) against holding the split in memory (the
previous path, ``batches.load_split``), both in one run.

    .venv/bin/python benchmarks/data_scale.py [--sizes 2000 20000 100000] [--old-max 20000]
        [--steps 20] [--out benchmarks/results/data_scale.cpu.jsonl]

The larger zoos are the real compiled programs of ``--base`` (default: data/compiled, run
`snakemake data/dataset/summary.json` first) repeated until there are N of them: memory and
time depend on how many programs there are and how large, not on which programs they are.
Nothing is recompiled or verified for this. For each N the training set is written the way
the pipeline writes it (token shards of ``--shard-programs`` programs; for the previous path,
zoo-format shards), and a fresh process (``python -c``) then trains the default decompiler
(params.yaml) for ``--steps`` steps: it reports the seconds from its start to the end of the
first training step (imports, opening the data, JIT compilation with no persistent
compilation cache included) and its peak RSS
(``ru_maxrss``) after the first and after the last step. One JSON line per (path, N).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

from metamodels.core import config as C
from metamodels.core import shards as S
from metamodels.decompiler import tokens as T
from metamodels.decompiler.stage import TRAIN_KEYS
from metamodels.zoo.dataset import COLUMNS, RAGGED

CHILD = r"""
import json, resource, sys, time
t_start = float(sys.argv[1])
from metamodels.decompiler.tokens import open_split
from metamodels.decompiler.train import train_and_evaluate
from metamodels.rasp.tokenizer import Vocab
cfg = json.loads(sys.argv[2]); train_paths = json.loads(sys.argv[3])
val_paths = json.loads(sys.argv[4]); vocab = Vocab.load(sys.argv[5]); workdir = sys.argv[6]
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MB (Linux: KB)
marks = {}
def log(line):
    if line.startswith("[train] step 1/"):
        marks["first_step_s"] = time.time() - t_start
        marks["peak_rss_first_step_mb"] = rss()
t0 = time.time()
train = open_split(train_paths, cfg["input"], cfg["max_program_tokens"])
val = open_split(val_paths, cfg["input"], cfg["max_program_tokens"])
marks["open_s"] = time.time() - t0
marks["train_programs"] = len(train)
train_and_evaluate(cfg, workdir, train, val, vocab, log=log, stop_after=int(sys.argv[7]))
marks["peak_rss_end_mb"] = rss()
marks["wall_s"] = time.time() - t_start
print(json.dumps(marks))
"""


def token_zoo(base_tokens: list[str], n: int, per_shard: int, outdir: pathlib.Path) -> list[str]:
    """Token shards holding ``n`` programs: the base token shards' rows, repeated."""
    rows = [dict(np.load(p)) for p in base_tokens]
    pool = {k: [] for k in ("features_zlib", "kind", "layer", "index", "program", "length")}
    for a in rows:
        fo, to = a["features_zlib_offsets"], a["token_offsets"]
        for i in range(len(a["length"])):
            pool["features_zlib"].append(a["features_zlib"][fo[i]:fo[i + 1]])
            for t in T.TAGS:
                pool[t].append(a[t][to[i]:to[i + 1]])
            pool["program"].append(a["program"][i])
            pool["length"].append(a["length"][i])
    m = len(pool["length"])
    record = json.loads(str(rows[0]["shard_json"][0]))
    paths = []
    for k, start in enumerate(range(0, n, per_shard)):
        pick = [(start + j) % m for j in range(min(per_shard, n - start))]
        out = {}
        out["features_zlib"], out["features_zlib_offsets"] = S.ragged(
            [pool["features_zlib"][i] for i in pick], np.uint8)
        for t in T.TAGS:
            out[t], out["token_offsets"] = S.ragged([pool[t][i] for i in pick], np.int32)
        out["program"] = np.stack([pool["program"][i] for i in pick])
        out["length"] = np.array([pool["length"][i] for i in pick], np.int32)
        out["row"] = np.arange(len(pick), dtype=np.int32)
        out["shard_json"] = S.text_array([S.dumps_json(dict(
            record, source=f"repeated:{k}", programs=len(pick), skipped={}))])
        path = outdir / f"shard_{k:03d}.npz"
        S.save_npz(path, out, compress=False)
        paths.append(str(path))
    return paths


def zoo_shards(base: list[str], n: int, per_shard: int, outdir: pathlib.Path) -> list[str]:
    """Zoo-format (dataset) shards holding ``n`` programs: the base shards' rows, repeated."""
    loaded = [S.load_npz(p) for p in base]
    picks = [(k, i) for k, a in enumerate(loaded) for i in range(len(a["length"]))]
    paths = []
    for k, start in enumerate(range(0, n, per_shard)):
        mine = [picks[(start + j) % len(picks)] for j in range(min(per_shard, n - start))]
        out = {}
        for col in RAGGED:
            pieces = []
            for s, i in mine:
                off = loaded[s][f"{col}_offsets"]
                pieces.append(loaded[s][col][off[i]:off[i + 1]])
            out[col], out[f"{col}_offsets"] = S.ragged(pieces, loaded[0][col].dtype)
        for col in COLUMNS:
            vals = [loaded[s][col][i] for s, i in mine]
            out[col] = (S.text_array([str(v) for v in vals]) if loaded[0][col].dtype.kind == "U"
                        else np.array(vals, loaded[0][col].dtype))
        path = outdir / f"shard_{k:03d}.npz"
        S.save_npz(path, out)
        paths.append(str(path))
    return paths


def run_child(cfg: dict, train: list[str], val: list[str], vocab: str, workdir: str,
              steps: int) -> dict:
    t = time.time()
    res = subprocess.run([sys.executable, "-c", CHILD, repr(t), json.dumps(cfg),
                          json.dumps(train), json.dumps(val), vocab, workdir, str(steps)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"training child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--base", nargs="+", default=sorted(glob.glob("data/compiled/shard_*.npz")))
    ap.add_argument("--vocab", default="data/vocab.json")
    ap.add_argument("--sizes", nargs="+", type=int, default=[2000, 20000, 100000])
    ap.add_argument("--old-max", type=int, default=20000,
                    help="largest N also run on the previous (in-memory) path")
    ap.add_argument("--shard-programs", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/data_scale.cpu.jsonl")
    args = ap.parse_args()
    if not args.base:
        sys.exit("no base shards: run `snakemake data/dataset/summary.json` (or pass --base)")
    params = C.load(args.params)
    cfg = {k: params["decompiler"][k] for k in TRAIN_KEYS}
    # a long schedule cut after --steps (stop_after): no validation pass at the end
    cfg["train"].update(steps=10 ** 6, log_every=1, eval_every=10 ** 9)
    threads = params["threads"]["train"]
    os.environ.update({k: str(threads) for k in ("OMP_NUM_THREADS", "PJRT_NPROC")})
    with tempfile.TemporaryDirectory(prefix="data_scale.") as tmp:
        tmp = pathlib.Path(tmp)
        base_tokens = []
        for k, p in enumerate(args.base):
            out = tmp / "base" / f"shard_{k:03d}.npz"
            T.tokenize_shard(cfg["input"], cfg["max_program_tokens"], p, str(out))
            base_tokens.append(str(out))
        val = base_tokens[:1]
        lines = []
        for n in args.sizes:
            for path in ("token_shards", "in_memory"):
                if path == "in_memory" and n > args.old_max:
                    continue
                d = tmp / f"{path}_{n}"
                d.mkdir()
                t0 = time.time()
                train = (token_zoo(base_tokens, n, args.shard_programs, d) if path == "token_shards"
                         else zoo_shards(args.base, n, args.shard_programs, d))
                build_s = time.time() - t0
                marks = run_child(cfg, train, val, args.vocab, str(tmp / f"work_{path}_{n}"),
                                  args.steps)
                line = {"benchmark": "data_scale", "path": path, "programs": n,
                        "files_mb": round(sum(os.path.getsize(p) for p in train) / 1e6, 1),
                        "build_files_s": round(build_s, 1), "steps": args.steps,
                        "threads": threads, **{k: (round(v, 2) if isinstance(v, float) else v)
                                               for k, v in marks.items()},
                        "date": time.strftime("%Y-%m-%d"),
                        "device": f"CPU ({os.cpu_count()} cores)",
                        "base_programs": "real compiled programs of "
                                         f"{len(args.base)} shard(s), repeated to N"}
                print(json.dumps(line), flush=True)
                lines.append(line)
                for p in train:
                    os.remove(p)
    pathlib.Path(args.out).write_text("".join(json.dumps(x) + "\n" for x in lines))


if __name__ == "__main__":
    main()
