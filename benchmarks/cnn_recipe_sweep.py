"""Does a CPU recipe implant every backdoor? A few CNNs per attack, median ASR per attack.

    .venv/bin/python benchmarks/cnn_recipe_sweep.py --train-limit 2000 --epochs 3 \\
        --poison-rate 0.1 --scale 2 --placement corners --downsample 2 [--per-attack 3]

Trains ``--per-attack`` models of every attack (clean, the training attacks and the OOD
patches) on Fashion-MNIST (``--test-limit`` test images) with seed 000's CNN and the given
recipe, through :func:`metamodels.backdoor.cnn.train_models` (on the CPU, ``--cpu-path``),
and prints one JSON line: seconds per CNN, and per attack the median clean accuracy
and every model's attack success rate. docs/backdoor.md ("Choosing the CPU recipe") tabulates
the runs behind params.yaml's defaults.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from metamodels.backdoor import cnn, images, poisons


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-limit", type=int, default=2000)
    ap.add_argument("--test-limit", type=int, default=500)
    ap.add_argument("--downsample", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--poison-rate", type=float, default=0.1)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--placement", default="corners", choices=poisons.PLACEMENTS)
    ap.add_argument("--per-attack", type=int, default=3)
    ap.add_argument("--cpu-path", default="jax", choices=cnn.BACKENDS)
    args = ap.parse_args()
    data = images.load_images({"dataset": "fashion_mnist", "train_limit": args.train_limit,
                               "test_limit": args.test_limit, "downsample": args.downsample})
    shape = tuple(int(d) for d in data.train_x.shape[1:])
    n = len(data.train_x)
    zoo = {"alpha": args.alpha, "trigger_scale": args.scale, "trigger_placement": args.placement}
    kinds = ["clean", *poisons.ATTACKS]
    specs, names = [], []
    for k, attack in enumerate(kinds):
        for i in range(args.per_attack):
            seed = 1000 * k + i
            rng = np.random.default_rng([seed, 1])
            if attack == "clean":
                spec = {"mask": np.zeros(shape, np.float32), "pattern": np.zeros(shape, np.float32),
                        "target": 0, "poison_idx": np.zeros(0, np.int64)}
            else:
                spec = poisons.sample_attack(zoo, attack, rng, shape, 10)
                spec["poison_idx"] = poisons.poison_indices(n, args.poison_rate, rng)
            specs.append({**spec, "seed": seed})
            names.append(attack)
    cfg = cnn.settings({"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                        "cpu_path": args.cpu_path})
    t0 = time.perf_counter()
    res = cnn.train_models(data, specs, cfg)
    out = {"recipe": vars(args), "image_shape": list(shape), "backend": cnn.backend_for(cfg),
           "s_per_cnn": round((time.perf_counter() - t0) / len(specs), 2)}
    names = np.array(names)
    for attack in kinds:
        m = names == attack
        out[attack] = {"clean_acc_median": round(float(np.median(res["clean_acc"][m])), 3),
                       "asr": None if attack == "clean"
                       else [round(float(a), 2) for a in res["asr"][m]]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
