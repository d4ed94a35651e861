"""Decompiler training throughput: the full step (input pipeline included) vs the bare
jitted step on the same batches, and on a GPU the model-FLOPs utilization.

    .venv/bin/python benchmarks/train_throughput.py [--steps 30] [--set train.batch_size=64 ...]

Reads the train split written by the pipeline (data/dataset/train, run
`snakemake data/dataset/summary.json` first) and prints one JSON line.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time

import jax
import numpy as np

from metamodels.core import config as C
from metamodels.decompiler import batches as B
from metamodels.decompiler.stage import TRAIN_KEYS
from metamodels.decompiler.train import Prefetcher, Trainer, _device
from metamodels.rasp.tokenizer import Vocab

# Dense bf16 peak (no sparsity), FLOP/s, for MFU.
PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def override(cfg: dict, items: list[str]) -> dict:
    for item in items:
        key, value = item.split("=", 1)
        node = cfg
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/dataset/train")
    ap.add_argument("--vocab", default="data/vocab.json")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--set", nargs="*", default=[], help="decompiler params overrides a.b=v")
    args = ap.parse_args()
    params = C.load(args.params)
    cfg = override({k: params["decompiler"][k] for k in TRAIN_KEYS}, args.set)
    vocab = Vocab.load(args.vocab)
    paths = sorted(glob.glob(f"{args.data}/shard_*.npz"))
    if not paths:
        sys.exit(f"no shards under {args.data}; run `snakemake data/dataset/summary.json` first")
    train = B.load_split(paths, cfg["input"], cfg["max_program_tokens"])
    t = cfg["train"]
    trainer = Trainer(cfg, vocab)
    edges = B.bucket_edges(train.n_tokens, cfg["input"]["buckets"])
    order = B.TrainOrder(train, t["batch_size"], cfg["seed"])
    params_, opt = trainer.init(B.make_batch(train, order.step(0), edges))
    steps = list(range(args.steps))

    def tokens(batch):
        return int(batch["mask"].sum()) + int((batch["program"][:, 1:] != 0).sum())

    # warm up: compile every bucket shape the timed steps use
    seen = set()
    for s in steps:
        b = B.make_batch(train, order.step(s), edges)
        if b["features"].shape not in seen:
            seen.add(b["features"].shape)
            params_, opt, m = trainer.train_step(params_, opt, _device(b))
    jax.block_until_ready(params_)

    # full step: batches built on the host (prefetched in a thread) as in training
    t0 = time.perf_counter()
    n_tok = 0
    with Prefetcher(lambda s: B.make_batch(train, order.step(s), edges), steps) as batches:
        for b in batches:
            n_tok += tokens(b)
            params_, opt, m = trainer.train_step(params_, opt, _device(b))
    jax.block_until_ready(params_)
    full = time.perf_counter() - t0

    # bare step: the same batches, already on the device
    dev = [_device(B.make_batch(train, order.step(s), edges)) for s in steps]
    jax.block_until_ready(dev)
    t0 = time.perf_counter()
    for b in dev:
        params_, opt, m = trainer.train_step(params_, opt, b)
    jax.block_until_ready(params_)
    bare = time.perf_counter() - t0

    out = {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
           "steps": args.steps, "batch_size": t["batch_size"],
           "full_tokens_per_s": round(n_tok / full, 1), "bare_tokens_per_s": round(n_tok / bare, 1),
           "pipeline_overhead": round(full / bare - 1, 4),
           "config": {"input": cfg["input"]["tokenization"], **cfg["model"]},
           "dtype": str(np.dtype(trainer.dtype))}
    if jax.default_backend() == "gpu":
        flops, per_shape = 0.0, {}
        for b in dev:
            shape = b["features"].shape
            if shape not in per_shape:
                cost = trainer.train_step.lower(params_, opt, b).compile().cost_analysis()
                per_shape[shape] = (cost[0] if isinstance(cost, list) else cost)["flops"]
            flops += per_shape[shape]
        kind = jax.devices()[0].device_kind
        peak = next((v for k, v in PEAK.items() if k in kind), None)
        out["model_flops_per_s"] = flops / bare
        out["mfu"] = round(flops / bare / peak, 4) if peak else None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
