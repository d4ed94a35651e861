"""How the hyperparameter predictors scale with the number of training models.

Trains the meta-model and the 1-D CNN baseline of ``predict-hparam`` on growing fractions of the
default zoo's training split (same validation and test models, same params otherwise) for the
given targets, and prints one JSON line per (target, fraction): test accuracy of both and of the
majority class. Run after the default zoo exists (``snakemake --cores 2 hparams``):

    PATH=.venv/bin:$PATH python benchmarks/hparams_scaling.py --targets optimizer initialization \
        --fractions 0.25 0.5 1.0 --out benchmarks/results/hparams_scaling.cpu.jsonl
"""

from __future__ import annotations

import argparse
import glob
import json
import time

import numpy as np
import yaml


def main(argv=None) -> None:
    from metamodels.backdoor import detector as DET
    from metamodels.hparams import baseline as B
    from metamodels.hparams import stage as ST

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--zoo", default="data/hparam_zoo/shard_*.npz")
    ap.add_argument("--targets", nargs="+", default=["optimizer", "initialization"])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.25, 0.5, 1.0])
    ap.add_argument("--out", help="append the JSON lines here too")
    args = ap.parse_args(argv)
    params = yaml.safe_load(open(args.params))
    cfg = params["hparams"]
    paths = sorted(glob.glob(args.zoo))
    zoo = ST.load_zoo(paths)
    parts = ST.split(len(zoo["seed"]), cfg)
    tr_all, te = parts["train"], parts["test"]
    x = ST.inputs(zoo, int(cfg["input_length"]))
    groups, layouts = ST.architecture_groups(zoo)
    augment = ST.permutation_augment(layouts, x.shape[1])
    w, n = zoo["weights"], zoo["n_weights"]
    for target in args.targets:
        y, classes = ST.labels_of(zoo, target)
        for frac in args.fractions:
            k = max(2, int(round(frac * len(tr_all))))
            tr = np.sort(np.random.default_rng([int(cfg["seed"]), 11]).permutation(tr_all)[:k])
            t0 = time.perf_counter()
            model, _ = DET.train({**cfg["meta_model"], "classes": len(classes)}, x[tr], y[tr],
                                 None, None, augment=augment, log=None, groups=groups[tr])
            meta = float(np.mean(np.argmax(DET.logits(model, x[te]), 1) == y[te]))
            seg, _ = B.train(cfg["segment_cnn"], w[tr], n[tr], y[tr], len(classes), log=None)
            base = float(np.mean(np.argmax(B.predict_proba(seg, w[te], n[te]), 1) == y[te]))
            majority = float(np.mean(y[te] == np.bincount(y[tr], minlength=len(classes)).argmax()))
            line = json.dumps({"target": target, "train_models": int(k), "test_models": len(te),
                               "meta_model": round(meta, 4), "segment_cnn": round(base, 4),
                               "majority": round(majority, 4), "zoo": len(y),
                               "seconds": round(time.perf_counter() - t0, 1)})
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
