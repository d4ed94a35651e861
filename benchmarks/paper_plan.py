"""What seed 001's scale (params/paper.yaml, 1.6M programs) needs, from measurements.

    .venv/bin/python benchmarks/paper_plan.py [--programs 40] [--out benchmarks/results/paper_plan.cpu.json]

Measures here, at the paper's params: sampling, compiling + verifying and tokenizing
``--programs`` programs of 4-9 ops (one shard, one core), and the bytes each program takes
in a compiled (= dataset) shard and in a token shard. Reads the training process's peak RSS
from ``benchmarks/results/data_scale.cpu.jsonl`` (benchmarks/data_scale.py). Then prints the
plan: jobs per rule with what each asks the cluster for (``core/resources.py``), core-hours
of the zoo, storage of the DVC remote, and the training's GPU-hours. The GPU-hours come from
the model's FLOPs at ``resources.GPU_FLOPS`` (an assumed sustained rate: no GPU was measured
here), which the JSON says.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import tempfile
import time

import yaml

from metamodels.core import config as C
from metamodels.core import resources as R

ROOT = pathlib.Path(__file__).resolve().parents[1]


def paper_params() -> dict:
    """params.yaml with params/paper.yaml merged over it (as ``--configfile`` does)."""
    out = C.merged(yaml.safe_load((ROOT / "params.yaml").read_text()),
                   yaml.safe_load((ROOT / "params" / "paper.yaml").read_text()))
    C.validate(out, "params.yaml + params/paper.yaml", check_paths=False)
    return out


def measure(p: dict, n: int) -> dict:
    """Seconds per program (sample, compile + verify, tokenize) and bytes per program."""
    from metamodels.core import shards as S
    from metamodels.decompiler.tokens import tokenize_shard
    from metamodels.rasp.tokenizer import Vocab
    from metamodels.zoo import stage as zoo
    q = copy.deepcopy(p)
    q["zoo"]["programs_per_shard"] = n
    with tempfile.TemporaryDirectory() as d:
        vocab = Vocab.from_params(q)
        pathlib.Path(d, "vocab.json").write_text(vocab.dumps())
        t = time.perf_counter()
        zoo.run_sample(q, 0, f"{d}/programs.json")
        sample_s = time.perf_counter() - t
        t = time.perf_counter()
        zoo.run_compile(q, f"{d}/programs.json", f"{d}/vocab.json", f"{d}/compiled.npz")
        compile_s = time.perf_counter() - t
        kept = len(S.load_npz(f"{d}/compiled.npz", keys=["length"])["length"])
        t = time.perf_counter()
        rec = tokenize_shard(q["decompiler"]["input"], q["decompiler"]["max_program_tokens"],
                             f"{d}/compiled.npz", f"{d}/tokens.npz")
        tokenize_s = time.perf_counter() - t
        return {"programs_sampled": n, "programs_kept": kept,
                "tokenized": rec["programs"], "tokenize_skipped": rec["skipped"],
                "sample_s_per_program": sample_s / n,
                "compile_s_per_program": compile_s / n,
                "tokenize_s_per_program": tokenize_s / max(kept, 1),
                "compiled_bytes_per_program": os.path.getsize(f"{d}/compiled.npz") / max(kept, 1),
                "token_bytes_per_program": os.path.getsize(f"{d}/tokens.npz") / max(kept, 1)}


def jobs(p: dict) -> dict[str, tuple[int, dict]]:
    """rule -> (number of jobs, one job's resources) for the figure-3 DAG at params p."""
    ds = p["dataset"]["shards"]
    split = {"source": "dataset", "split": "train", "vshard": "000"}
    return {"sample": (p["zoo"]["shards"], R.job_resources("sample", p)),
            "compile_shard": (p["zoo"]["shards"], R.job_resources("compile_shard", p)),
            "split": (1, R.job_resources("split", p)),
            "tokenize": (sum(ds.values()), R.job_resources("tokenize", p, split)),
            "train_decompiler": (1, R.job_resources("train_decompiler", p)),
            "evaluate_decompiler": (1, R.job_resources("evaluate_decompiler", p))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=40)
    ap.add_argument("--data-scale", default="benchmarks/results/data_scale.cpu.jsonl")
    ap.add_argument("--out", default="benchmarks/results/paper_plan.cpu.json")
    args = ap.parse_args()
    p = paper_params()
    m = measure(p, args.programs)
    n = R.zoo_programs(p)
    kept = m["programs_kept"] / m["programs_sampled"]
    dec = p["decompiler"]
    gpu_s = R._train_seconds(dec, dec["train"], 1, 1, p)
    scale = []
    if pathlib.Path(args.data_scale).exists():
        scale = [json.loads(x) for x in pathlib.Path(args.data_scale).read_text().splitlines()]
    plan = {
        "benchmark": "paper_plan", "date": time.strftime("%Y-%m-%d"),
        "device": f"CPU ({os.cpu_count()} cores), one core per job",
        "programs_sampled": n, "measured": m,
        "zoo_core_hours": {
            "sample": n * m["sample_s_per_program"] / 3600,
            "compile_and_verify": n * m["compile_s_per_program"] / 3600,
            "tokenize": n * kept * m["tokenize_s_per_program"] / 3600},
        "storage_gb": {
            "compiled": n * kept * m["compiled_bytes_per_program"] / 1e9,
            "dataset": n * kept * m["compiled_bytes_per_program"] / 1e9,
            "tokens": n * kept * m["token_bytes_per_program"] / 1e9},
        "training_gpu_hours_at_assumed_rate": gpu_s / 3600,
        "assumed_gpu_flops": R.GPU_FLOPS,
        "training_peak_rss_mb_measured": {f"{x['path']}@{x['programs']}": x["peak_rss_end_mb"]
                                          for x in scale},
        "jobs": {rule: {"jobs": k, **r} for rule, (k, r) in jobs(p).items()},
    }
    plan["zoo_core_hours"]["total"] = sum(plan["zoo_core_hours"].values())
    plan["storage_gb"]["total"] = sum(plan["storage_gb"].values())
    pathlib.Path(args.out).write_text(json.dumps(plan, indent=1) + "\n")
    print(json.dumps(plan, indent=1))


if __name__ == "__main__":
    main()
