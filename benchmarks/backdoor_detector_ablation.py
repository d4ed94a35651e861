"""What lets a weight-space detector work on a small CNN zoo? Meta-model variants on one zoo.

    .venv/bin/python benchmarks/backdoor_detector_ablation.py --zoo 'data/cnn_zoo/shard_*.npz' \\
        [--params params.yaml] [--variants seed000 per_chunk ...] [--fractions 0.5 1.0]

Loads the zoo shards (``data/cnn_zoo``, built under ``cnn_zoo.init: shared`` or ``per_model``:
the zoo's ``init_seed`` column says which), takes the ``iid`` split of ``detector`` params, and
for each training fraction trains each meta-model variant (:data:`VARIANTS`, over
``detector.model`` from the params) on that fraction of the training models, plus the
weight-statistics baseline and a ridge regression on the standardised weights (:func:`ridge`)
on the same models; every method is scored on the whole test split.
Appends one JSON line per (fraction, variant) to ``--out``: overall test AUC and AUC per
trigger (OOD patches included), the training models' count and the zoo's init. The runs behind
docs/backdoor.md ("What the meta-model needs") are in
``benchmarks/results/backdoor_detector_ablation.cpu.jsonl``.
"""

from __future__ import annotations

import argparse
import glob
import json
import pathlib

import numpy as np

from metamodels.backdoor import cnn
from metamodels.backdoor import detector as D
from metamodels.backdoor import stage as B
from metamodels.core import config

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: Meta-model variants: overrides of ``detector.model``, and whether the weights are first put
#: in canonical neuron order (:func:`metamodels.backdoor.cnn.canonical`).
VARIANTS = {
    "seed000": ({"embedding": "shared", "normalize": False, "augment": True}, False),
    "seed000_noaug": ({"embedding": "shared", "normalize": False, "augment": False}, False),
    "canonical": ({"embedding": "shared", "normalize": True, "augment": False}, True),
    "per_chunk": ({"embedding": "per_chunk", "normalize": True, "augment": False}, False),
    "per_chunk_aug": ({"embedding": "per_chunk", "normalize": True, "augment": True}, False),
    "per_chunk_canonical": ({"embedding": "per_chunk", "normalize": True, "augment": False}, True),
}


def ridge(train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray, lam: float = 100.0
          ) -> np.ndarray:
    """Scores of kernel ridge regression with a linear kernel on the weights standardised over
    the training models (float64; ``lam`` the L2 penalty): the linear probe of a zoo.
    ``train_x [N, P]``, ``train_y [N]`` 0/1, ``x [M, P]`` -> ``[M]``."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-8
    z = (train_x - mu) / sd
    alpha = np.linalg.solve(z @ z.T + lam * np.eye(len(z)), train_y - train_y.mean())
    return ((x - mu) / sd) @ (z.T @ alpha)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", required=True, help="glob of zoo shards (quote it)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--fractions", nargs="+", type=float, default=[1.0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/"
                                         "backdoor_detector_ablation.cpu.jsonl"))
    args = ap.parse_args()
    paths = sorted(glob.glob(args.zoo))
    if not paths:
        raise SystemExit(f"--zoo {args.zoo!r} matches no file; build the zoo first "
                         "(snakemake --cores N backdoors)")
    params = config.load(args.params)
    det = params["detector"]
    zoo = B.load_zoo(paths)
    init = "shared" if len(set(zoo["init_seed"].tolist())) == 1 else "per_model"
    x, y = zoo["weights"], (zoo["attack"] != B.CLEAN).astype(np.int32)
    lay = zoo["layout"]
    split = B.setting_split(zoo, det, "iid")
    tr, va, te = split["train"], split["val"], split["test"]
    canonical = None
    feats = D.weight_stats(x, lay)
    augment = B.permutation_augment(lay)

    def record(rec: dict, scores: np.ndarray) -> None:
        by = D.evaluate_by_attack(scores, y[te], zoo["attack"][te].tolist())
        rec.update(test_auc=round(by["overall"]["auc"], 4),
                   auc_by_attack={a: round(v["auc"], 4) for a, v in by["by_attack"].items()})
        print(json.dumps(rec), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(rec) + "\n")

    for frac in args.fractions:
        sub = np.sort(np.random.default_rng([int(det["seed"]), 7]).permutation(tr)
                      [:max(2, int(round(frac * len(tr))))])
        base = {"zoo": args.zoo, "models": len(x), "init": init, "fraction": frac,
                "train_models": len(sub), "test_models": len(te)}
        lr = D.fit_logreg(feats[sub], y[sub], float(det["baseline"]["l2"]),
                          int(det["baseline"]["steps"]))
        record({**base, "method": "weight_stats"},
               D.predict_logreg(lr, feats[te]))
        record({**base, "method": "ridge", "lam": 100.0},
               ridge(x[sub].astype(np.float64), y[sub].astype(np.float64),
                     x[te].astype(np.float64)))
        for name in args.variants:
            over, canon = VARIANTS[name]
            if canon and canonical is None:
                canonical = cnn.canonical_flat(x, lay)
            xx = canonical if canon else x
            cfg = {**det["model"], **over}
            model, hist = D.train(cfg, xx[sub], y[sub], xx[va], y[va],
                                  augment=augment if cfg["augment"] else None, log=None)
            record({**base, "method": "meta_model", "variant": name, **over,
                    "canonical": canon, "final_train_loss": round(hist[-1]["train_loss"], 4)},
                   D.predict(model, xx[te]))


if __name__ == "__main__":
    main()
