"""CNN zoo training throughput: G models vmapped in one step vs the same models one at a time.

    .venv/bin/python benchmarks/cnn_zoo_throughput.py [--models 8] [--group 8] [--epochs 1]
        [--train-limit 1000] [--test-limit 1000] [--dataset fashion_mnist] [--batch-size 64]

Both sides train the same specs (half clean, half patch4-poisoned at 1%) with the same recipe
and number of steps through :func:`metamodels.backdoor.cnn.train_models`, differing only in
``vmap_group`` (G vs 1); evaluation on the test subset is included, compilation is not (each
side's step and evaluation are compiled by a warm-up call first). Prints one JSON line: CNNs
per CPU-core-hour (on a GPU: per GPU-hour) for each side and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from metamodels.backdoor import cnn, images, poisons


def make_specs(n_models: int, n_train: int, shape: tuple[int, ...]) -> list[dict]:
    specs = []
    for i in range(n_models):
        rng = np.random.default_rng([20240, i])
        if i % 2:
            mask, pattern = poisons.trigger("patch4", rng, shape)
            idx = poisons.poison_indices(n_train, 0.01, rng)
            target = int(rng.integers(0, 10))
        else:
            mask = pattern = np.zeros(shape, np.float32)
            idx, target = np.zeros(0, np.int64), 0
        specs.append({"seed": 1000 + i, "mask": mask, "pattern": pattern, "poison_idx": idx,
                      "target": target})
    return specs


def warm_up(data, cfg: dict) -> None:
    """Compile the step and the evaluation for cfg's group size on these image shapes."""
    g = int(cfg["vmap_group"])
    model = cnn.make_model(cfg)
    shape = tuple(data.train_x.shape[1:])
    tx, step = cnn._make_step(model, float(cfg["lr"]), float(cfg["wd"]))
    init = cnn._init_fn(shape, model.channels, model.classes)
    params = cnn._stack([init(jax.random.PRNGKey(i)) for i in range(g)])
    opt_state = jax.vmap(tx.init)(params)
    n = len(data.train_x)
    zeros = jnp.zeros((g, *shape), jnp.float32)
    out = step(params, opt_state, jnp.asarray(data.train_x), jnp.asarray(data.train_y, jnp.int32),
               jnp.zeros((g, int(cfg["batch_size"])), jnp.int32), jnp.zeros((g, n), bool),
               zeros, zeros, jnp.zeros(g, jnp.int32))
    jax.block_until_ready(out)
    spec = {"seed": 0, "mask": np.zeros(shape, np.float32), "poison_idx": []}
    cnn.evaluate(params, data, [spec] * g, cfg)


def timed(data, specs: list[dict], cfg: dict) -> tuple[float, dict]:
    warm_up(data, cfg)
    t0 = time.perf_counter()
    res = cnn.train_models(data, specs, cfg)
    return time.perf_counter() - t0, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--train-limit", type=int, default=1000)
    ap.add_argument("--test-limit", type=int, default=1000)
    ap.add_argument("--dataset", default="fashion_mnist", choices=images.DATASETS)
    ap.add_argument("--batch-size", type=int, default=cnn.DEFAULTS["batch_size"])
    args = ap.parse_args()
    try:
        data = images.load_images({"dataset": args.dataset, "train_limit": args.train_limit,
                                   "test_limit": args.test_limit})
    except (images.DatasetError, FileNotFoundError) as e:
        sys.exit(f"cannot load {args.dataset}: {e}")
    shape = tuple(int(d) for d in data.train_x.shape[1:])
    specs = make_specs(args.models, len(data.train_x), shape)
    base = cnn.settings({"epochs": args.epochs, "batch_size": args.batch_size})
    wall_v, res_v = timed(data, specs, dict(base, vmap_group=args.group))
    wall_1, res_1 = timed(data, specs, dict(base, vmap_group=1))

    dev = jax.devices()[0]
    cores = len(os.sched_getaffinity(0))
    on_cpu = dev.platform == "cpu"
    unit = "cnns_per_cpu_core_hour" if on_cpu else "cnns_per_gpu_hour"
    per_hour = lambda wall: args.models * 3600.0 / (wall * (cores if on_cpu else 1))  # noqa: E731
    steps = args.epochs * (len(data.train_x) // args.batch_size)
    print(json.dumps({
        "device": str(dev), "platform": dev.platform, "cores": cores,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "dataset": args.dataset, "train_images": len(data.train_x),
        "test_images": len(data.test_x), "models": args.models, "group": args.group,
        "epochs": args.epochs, "batch_size": args.batch_size, "steps_per_model": steps,
        "vmapped": {"wall_s": round(wall_v, 2), unit: round(per_hour(wall_v), 1),
                    "mean_clean_acc": round(float(np.mean(res_v["clean_acc"])), 4)},
        "one_at_a_time": {"wall_s": round(wall_1, 2), unit: round(per_hour(wall_1), 1),
                          "mean_clean_acc": round(float(np.mean(res_1["clean_acc"])), 4)},
        "ratio_vmapped_over_one_at_a_time": round(wall_1 / wall_v, 3),
        "max_abs_weight_diff": float(np.abs(res_v["weights"] - res_1["weights"]).max()),
    }))


if __name__ == "__main__":
    main()
