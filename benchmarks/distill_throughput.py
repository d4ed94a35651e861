"""Distillation throughput: students trained in vmapped groups vs one at a time.

    .venv/bin/python benchmarks/distill_throughput.py [--n 32] [--kind compressed|natural]
        [--shard data/dataset/train/shard_000.npz] [--params params.yaml] [--out PATH]

Both sides distil the same ``--n`` teachers (spread evenly over the shard) with the same
config -- ``variants.distill`` of the params file, with the ratio of ``--kind`` -- and seeds, differing only in ``group_size`` (the config's vs
1). Cost is CPU time of this process (``time.process_time``: all threads, compilation and the
final NumPy scoring included) per accepted student. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax

from metamodels.core import config
from metamodels.core import shards as S
from metamodels.variants import distill
from metamodels.variants import stage as variants
from metamodels.zoo import stage as zoo


def load_teachers(shard: str, n: int) -> list:
    arrays = S.load_npz(shard)
    total = zoo.shard_programs(arrays)
    return [zoo.model_of(arrays, i * total // n) for i in range(min(n, total))]


def measure(teachers: list, kind: str, cfg: dict, inputs: list, atol: float) -> dict:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    results = distill.distill(teachers, kind, cfg, list(range(len(teachers))), inputs, atol)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    accepted = sum(r["accepted"] for r in results)
    return {"cpu_s": round(cpu, 1), "wall_s": round(wall, 1), "accepted": accepted,
            "cpu_s_per_accepted": round(cpu / accepted, 2) if accepted else None,
            "mean_agreement": round(sum(r["agreement"] for r in results) / len(results), 4),
            "mean_steps": round(sum(r["steps"] for r in results) / len(results), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--kind", choices=distill.KINDS, default="compressed")
    ap.add_argument("--shard", default="data/dataset/train/shard_000.npz")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out")
    args = ap.parse_args()
    params = config.load(args.params)
    cfg = dict(params["variants"]["distill"])
    cfg["ratio"] = variants.distill_ratio(cfg, args.kind)  # one number, or one per kind
    inputs = zoo.verification_inputs(params)
    atol = float(params["verify"]["atol"])
    teachers = load_teachers(args.shard, args.n)
    batched = measure(teachers, args.kind, cfg, inputs, atol)
    single = measure(teachers, args.kind, dict(cfg, group_size=1), inputs, atol)
    per = (batched["cpu_s_per_accepted"], single["cpu_s_per_accepted"])
    record = {
        "kind": args.kind, "teachers": len(teachers), "group_size": int(cfg["group_size"]),
        "ratio_compression": cfg["ratio"], "steps": cfg["steps"], "batched": batched,
        "one_at_a_time": single,
        "ratio": round(per[0] / per[1], 3) if all(per) else None,
        "device": jax.default_backend(), "cores": len(os.sched_getaffinity(0)),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    line = json.dumps(record)
    print(line)
    if args.out:
        S.write_json(args.out, record)


if __name__ == "__main__":
    main()
