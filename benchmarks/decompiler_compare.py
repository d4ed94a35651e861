"""Compare decompiler variants at an equal training budget on the default dataset.

    .venv/bin/python benchmarks/decompiler_compare.py --steps 300 \
        --variant model.architecture=encoder_decoder \
        --variant model.architecture=prefix_lm model.layers=5 \
        --variant input.tokenization=chunks

Each --variant is a list of decompiler params overrides (a.b=value) applied to
params.yaml; `--train-limit N` trains on the first N training programs (for a
learning curve over dataset sizes). Prints one JSON line per variant: the final
validation entry (token accuracy teacher-forced, exact accuracy of freely
decoded validation programs), parameters and wall-clock seconds.
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import tempfile
import time

from train_throughput import override

from metamodels.core import config as C
from metamodels.decompiler import batches as B
from metamodels.decompiler.stage import TRAIN_KEYS, _domain, _grammar
from metamodels.decompiler.train import train_and_evaluate
from metamodels.rasp.tokenizer import Vocab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--train-limit", type=int, nargs="*", default=[None])
    ap.add_argument("--variant", nargs="*", action="append", default=None)
    args = ap.parse_args()
    params = C.load(args.params)
    vocab = Vocab.load("data/vocab.json")
    grammar = _grammar(vocab, _domain(params))
    for limit in args.train_limit:
        for variant in args.variant or [[]]:
            cfg = override(copy.deepcopy({k: params["decompiler"][k] for k in TRAIN_KEYS}),
                           variant)
            cfg["train"].update(steps=args.steps, eval_every=args.steps,
                                warmup_steps=min(cfg["train"]["warmup_steps"], args.steps // 10))
            train = B.load_split(sorted(glob.glob("data/dataset/train/shard_*.npz")),
                                 cfg["input"], cfg["max_program_tokens"], limit=limit)
            val = B.load_split(sorted(glob.glob("data/dataset/val/shard_*.npz")),
                               cfg["input"], cfg["max_program_tokens"])
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as work:
                res = train_and_evaluate(cfg, work, train, val, vocab, grammar=grammar,
                                         log=lambda s: None)
            n_params = sum(x.size for x in __import__("jax").tree_util.tree_leaves(res["params"]))
            print(json.dumps({"variant": variant, "train_programs": len(train),
                              "steps": args.steps, "seconds": round(time.perf_counter() - t0, 1),
                              "parameters": int(n_params), **res["history"][-1]}), flush=True)


if __name__ == "__main__":
    main()
