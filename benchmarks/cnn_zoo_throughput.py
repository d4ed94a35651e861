"""CNN zoo training throughput: the PyTorch CPU path vs the JAX path, on the same models.

    .venv/bin/python benchmarks/cnn_zoo_throughput.py [--models 8] [--params params.yaml]
        [--threads 1] [--group 8]

Both sides train the same specs through :func:`metamodels.backdoor.cnn.train_models` at the
recipe of ``--params`` (images, cnn_zoo: train/test subset, epochs, batch size, poison rate,
trigger scale), half clean and half patch4-poisoned, differing only in ``backend``:
``torch`` (the zoo's CPU path) vs ``jax`` with ``vmap_group`` 1 (the CPU path before it).
``--group G`` adds the JAX vmapped step with G models per step (the accelerator path) as a
third side. Evaluation on the test subset is included; compilation is not (:func:`warm_up`
compiles each JAX side's step and evaluation first; the PyTorch side has nothing to compile). Prints one JSON
line: CNNs per CPU-core-hour (``--threads`` cores) of each side and the ratio, and how far the
two paths' models are apart (weights, clean accuracy).

FLOPs (:func:`training_gflop`): the seed's CNN on 28x28x1 costs 7.3 M multiply-adds per image
forward (14.7 MFLOP), about 44 MFLOP forward + backward (3x the forward); on 14x14 a quarter.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def training_gflop(shape: tuple[int, ...], channels, n_train: int, epochs: int) -> float:
    """Forward + backward GFLOP of training one model: 3 x 2 x the convolutions' multiply-adds
    per image (two 3x3 convolutions per block, each block at half the previous resolution)."""
    h, w, c = shape
    macs, cin = 0, c
    for k, ch in enumerate(channels):
        macs += (h >> k) * (w >> k) * 9 * (cin * ch + ch * ch)
        cin = ch
    return 6 * macs * n_train * epochs / 1e9


def make_specs(n_models: int, n_train: int, shape: tuple[int, ...], zoo: dict) -> list[dict]:
    from metamodels.backdoor import poisons
    specs = []
    for i in range(n_models):
        rng = np.random.default_rng([20240, i])
        if i % 2:
            att = poisons.sample_attack(zoo, "patch4", rng, shape, 10)
            att["poison_idx"] = poisons.poison_indices(n_train, float(zoo["poison_rate"]), rng)
        else:
            att = {"mask": np.zeros(shape, np.float32), "pattern": np.zeros(shape, np.float32),
                   "poison_idx": np.zeros(0, np.int64), "target": 0}
        specs.append({**att, "seed": 1000 + i})
    return specs


def warm_up(data, cfg: dict) -> None:
    """Compile the JAX step and evaluation for cfg's group size on these image shapes (no
    training; benchmarks/gpu_check.py times it as the compile cost)."""
    import jax
    import jax.numpy as jnp

    from metamodels.backdoor import cnn
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


def timed(data, specs: list[dict], cfg: dict, backend: str) -> tuple[float, dict]:
    from metamodels.backdoor import cnn
    if backend == "jax":  # compile the step and the evaluation outside the timed part
        warm_up(data, cfg)
    t0 = time.perf_counter()
    res = cnn.train_models(data, specs, cfg, backend=backend)
    return time.perf_counter() - t0, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--threads", type=int, default=1, help="threads (= cores) of each side")
    ap.add_argument("--group", type=int, default=0, help="also time the vmapped JAX step")
    args = ap.parse_args()
    for var in ("PJRT_NPROC", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import jax
    import yaml

    from metamodels.backdoor import cnn, images
    with open(args.params) as f:
        params = yaml.safe_load(f)
    zoo = params["cnn_zoo"]
    try:
        data = images.load_images(params["images"])
    except (images.DatasetError, FileNotFoundError) as e:
        sys.exit(f"cannot load {params['images']['dataset']}: {e}")
    shape = tuple(int(d) for d in data.train_x.shape[1:])
    specs = make_specs(args.models, len(data.train_x), shape, zoo)
    base = cnn.settings(dict(zoo["cnn"], vmap_group=1))
    sides = {"torch": timed(data, specs, base, "torch"),
             "jax_one_at_a_time": timed(data, specs, base, "jax")}
    if args.group:
        sides[f"jax_vmapped_{args.group}"] = timed(data, specs, dict(base, vmap_group=args.group),
                                                   "jax")
    def per_hour(wall: float) -> float:
        return args.models * 3600.0 / (wall * args.threads)

    n_train, epochs = len(data.train_x), int(base["epochs"])
    gflop = training_gflop(shape, base["channels"], n_train, epochs)
    ref = sides["jax_one_at_a_time"][1]
    out = {
        "device": str(jax.devices()[0]), "threads": args.threads,
        "load_avg_1m": round(os.getloadavg()[0], 2), "params": args.params,
        "dataset": data.name, "train_images": n_train, "test_images": len(data.test_x),
        "models": args.models, "epochs": epochs, "batch_size": int(base["batch_size"]),
        "poison_rate": zoo["poison_rate"], "trigger_scale": zoo.get("trigger_scale", 1),
        "gflop_per_cnn_training": round(gflop, 1),
    }
    for name, (wall, res) in sides.items():
        out[name] = {"wall_s": round(wall, 2), "s_per_cnn": round(wall / args.models, 2),
                     "cnns_per_cpu_core_hour": round(per_hour(wall), 1),
                     "training_gflop_per_s": round(gflop * args.models / wall, 1),
                     "mean_clean_acc": round(float(np.mean(res["clean_acc"])), 4),
                     "max_abs_weight_diff_vs_jax": float(np.abs(res["weights"]
                                                                - ref["weights"]).max()),
                     "max_abs_clean_acc_diff_vs_jax": float(np.abs(res["clean_acc"]
                                                                   - ref["clean_acc"]).max())}
    out["ratio_torch_over_jax"] = round(sides["jax_one_at_a_time"][0] / sides["torch"][0], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
