"""One prepared GPU check: every GPU path of the project, one JSON record per path.

    python3 benchmarks/gpu_check.py run CHECK --out DIR [--tiny] [--timeout-s T] [--budget-s B]
    python3 benchmarks/gpu_check.py finalize CHECK --out DIR --rc RC [--log LOG] [--timeout-s T]
    python3 benchmarks/gpu_check.py summary --out DIR [--tiny]

Called by ``benchmarks/gpu_check.sh``, which runs each CHECK in its own process under its own
timeout and then ``finalize`` (turns a missing or unfinished record into a failed one that says
why). CHECKs (:data:`CHECKS`):

``decompiler_step``
    The decompiler's jitted training step (:class:`metamodels.decompiler.train.Trainer`, as in
    ``benchmarks/train_throughput.py``'s bare step) at params/paper.yaml's model and batch size,
    on synthetic batches of the paper's shapes (the largest weight-token bucket, full-length
    programs): tokens/s, model FLOPs per step and MFU against the device's dense bf16 peak.
``cnn_zoo``
    seed 000's CIFAR recipe (params/paper.yaml ``cnn_zoo.cnn``) through
    :func:`metamodels.backdoor.cnn.train_models` on synthetic 32x32x3 uint8 images, one vmapped
    group, compiled first (``benchmarks/cnn_zoo_throughput.py``'s warm-up and specs); CNNs per
    GPU-hour extrapolated from the measured step and evaluation times to the whole recipe.
``distill``
    Teachers sampled and compiled on the spot (the zoo's sampler and fast tracr compiler), then
    :func:`metamodels.variants.distill.distill` at params/paper.yaml's ``variants.distill``:
    students (and accepted students) per GPU-minute, per kind.
``modadd_mod1``
    seed 002's 10 mod-1 runs at p0 = 113, 30% training data, through
    :func:`metamodels.modadd.stage.train_runs` (vmapped) and
    :func:`metamodels.modadd.stage.patching_table`: grokked or not per run, the patching table.
    ``max_epochs`` is params/paper.yaml's unless the time budget is shorter: the epoch rate is
    measured first and the runs are capped to what fits (the record says so).

Params are read with PyYAML (params.yaml, then params/paper.yaml merged over it key by key, as
``snakemake --configfile`` does), not with ``metamodels.core.config``, so jsonschema is not
needed. ``--tiny`` runs the same code on the CPU at toy sizes (for tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import pathlib
import platform
import sys
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
HERE = pathlib.Path(__file__).resolve().parent

CHECKS = ("decompiler_step", "cnn_zoo", "distill", "modadd_mod1")

# Dense (no sparsity) bf16 tensor-core peak, FLOP/s, by a substring of jax's device_kind; the
# first match wins, so the more specific names come first.
PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),   # SXM
    ("H200", 989e12),   # SXM (same compute as the H100 SXM)
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
)

# Goals of the issue, written into each record next to the measurement.
GOALS = {"decompiler_step": {"mfu": 0.40}, "cnn_zoo": {"cnns_per_gpu_hour": 1000}}


# ---------------------------------------------------------------------------------- records

def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def record_path(out: pathlib.Path, check: str) -> pathlib.Path:
    return out / f"{check}.gpu.json"


def write_record(out: pathlib.Path, check: str, rec: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = record_path(out, check)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=1, sort_keys=False, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(x):
    import numpy as np
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def device_info() -> dict:
    """The device JAX runs on (jax.devices()[0]) and the software around it."""
    import jax
    import jaxlib
    d = jax.devices()[0]
    return {"kind": d.device_kind, "platform": d.platform, "backend": jax.default_backend(),
            "name": str(d), "count": jax.device_count(), "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "python": platform.python_version(),
            "host_cpus": os.cpu_count()}


def peak_bf16(kind: str) -> tuple[str | None, float | None]:
    for key, value in PEAK_BF16:
        if key in kind:
            return key, value
    return None, None


# ---------------------------------------------------------------------------------- params

def merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``, dict by dict (Snakemake's --configfile)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_params(tiny: bool) -> dict:
    """params.yaml with params/paper.yaml over it; ``tiny`` shrinks every size we use."""
    import yaml
    p = merge(yaml.safe_load((ROOT / "params.yaml").read_text()),
              yaml.safe_load((ROOT / "params" / "paper.yaml").read_text()))
    if not tiny:
        return p
    p["zoo"].update(vocab=[1, 2, 3], max_seq_len=3)
    p["sampler"].update(min_length=2, max_length=3)
    d = p["decompiler"]
    d["model"].update(d_model=16, layers=1, heads=2, mlp=32)
    d["input"].update(chunk_size=16, max_tokens=8)
    d["train"].update(batch_size=4)
    d["max_program_tokens"] = 8
    p["cnn_zoo"]["cnn"].update(channels=[2, 2, 2], batch_size=8, vmap_group=2,
                               eval_batch_size=32)
    p["variants"]["distill"].update(group_size=2, steps=10, eval_every=5, warmup_steps=2)
    m = p["modadd"]
    m["runs"]["mod1"] = 3
    m["train"].update(p0=7, train_fraction=0.5, d_model=8, d_head=2, d_mlp=16, max_epochs=20,
                      patience=5, chunk=10)
    return p


# Sizes of each check that are not params (full mode, tiny mode).
SIZES = {
    "decompiler_step": {"full": {"steps": 50, "batches": 4}, "tiny": {"steps": 2, "batches": 2}},
    # steps: training steps measured per model (one epoch of steps * batch_size images);
    # models: one vmapped group; test images as CIFAR-10's test set.
    "cnn_zoo": {"full": {"steps": 64, "test_images": 10000, "recipe_train_images": 50000},
                "tiny": {"steps": 2, "test_images": 32, "recipe_train_images": 64}},
    # skip_when_short: skip a kind when the budget left is under 1.2x the previous kind's time
    # (32 teachers: the NumPy acceptance scoring costs ~0.3-1.4 CPU-s per student)
    "distill": {"full": {"teachers": 32, "kinds": ["compressed", "natural"],
                         "skip_when_short": True},
                "tiny": {"teachers": 2, "kinds": ["compressed", "natural"],
                         "skip_when_short": False}},
    # calibration chunks (after the one that compiles) to time an epoch
    "modadd_mod1": {"full": {"calibration_chunks": 3, "reserve_s": 30.0},
                    "tiny": {"calibration_chunks": 1, "reserve_s": 0.0}},
}


# ---------------------------------------------------------------------------------- checks

def check_decompiler_step(p: dict, size: dict, budget_s: float) -> dict:
    """Tokens/s and MFU of the decompiler's training step at the paper's model and batch."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from metamodels.decompiler import weights as W
    from metamodels.decompiler.stage import TRAIN_KEYS
    from metamodels.decompiler.train import Trainer, _device
    from metamodels.rasp.tokenizer import BOS, Vocab

    cfg = {k: copy.deepcopy(p["decompiler"][k]) for k in TRAIN_KEYS}
    vocab = Vocab.from_params(p)
    m, inp, t = cfg["model"], cfg["input"], cfg["train"]
    b, tw, tp = int(t["batch_size"]), int(inp["max_tokens"]), int(cfg["max_program_tokens"])
    f = W.feature_width(inp)
    def batch(i: int) -> dict:
        r = np.random.default_rng([0, i])
        prog = r.integers(1, len(vocab), (b, tp)).astype(np.int32)
        prog[:, 0] = vocab.index[BOS]
        return {"features": r.standard_normal((b, tw, f)).astype(np.float32),
                "kind": r.integers(1, len(W.KINDS), (b, tw)).astype(np.int32),
                "layer": r.integers(0, int(m["max_layers"]), (b, tw)).astype(np.int32),
                "index": r.integers(0, int(inp["max_index"]), (b, tw)).astype(np.int32),
                "mask": np.ones((b, tw), bool), "program": prog, "valid": np.ones(b, bool)}

    trainer = Trainer(cfg, vocab)
    t0 = time.perf_counter()
    # Trainer.init's parameters and optimizer state, jitted: eager flax init dispatches hundreds
    # of tiny ops (seconds on the CPU); the step below is Trainer.train_step itself.
    ex = _device(batch(0))
    params = jax.jit(lambda key, b_: trainer.model.init(key, b_, b_["program"][:, :-1]))(
        jax.random.PRNGKey(cfg["seed"]), ex)["params"]
    opt = jax.jit(trainer.tx.init)(params)
    dev = [_device(batch(i)) for i in range(int(size["batches"]))]
    jax.block_until_ready(dev)
    compiled = trainer.train_step.lower(params, opt, dev[0]).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla_flops = float(cost.get("flops", 0.0)) if cost else None
    params, opt, metrics = compiled(params, opt, dev[0])  # warm-up
    jax.block_until_ready(params)
    steps = int(size["steps"])
    t0 = time.perf_counter()
    for s in range(steps):
        params, opt, metrics = compiled(params, opt, dev[s % len(dev)])
    jax.block_until_ready(params)
    wall = time.perf_counter() - t0
    step_s = wall / steps

    # Model FLOPs of one training step (3x the forward: backward = 2x forward), counting every
    # matmul of the model, attention scores and values over the whole prefix-LM sequence.
    d, layers, mlp, v = int(m["d_model"]), int(m["layers"]), int(m["mlp"]), len(vocab)
    seq = tw + tp - 1 if m["architecture"] == "prefix_lm" else None
    if seq is None:
        raise ValueError("the paper config is prefix_lm; this check counts its FLOPs only")
    fwd = (2 * b * seq * layers * (4 * d * d + 2 * d * mlp)   # q, k, v, out projections, MLP
           + 2 * 2 * b * layers * seq * seq * d               # scores and weighted values
           + 2 * b * tw * f * d                               # weight-token embedding
           + 2 * b * (tp - 1) * d * v)                        # output head
    model_flops = 3.0 * fwd
    tokens = b * tw + b * (tp - 1)
    kind = jax.devices()[0].device_kind
    peak_key, peak = peak_bf16(kind)
    on_accel = jax.default_backend() in ("gpu", "tpu")
    mfu = model_flops / step_s / peak if (peak and on_accel) else None
    return {
        "synthetic_batches": ("random values of the paper's shapes: speed does not depend on "
                              "the values; every batch at the largest weight-token bucket "
                              "(max_tokens) and full-length programs, so tokens/s is for the "
                              "longest sequences"),
        "config": {"model": m, "batch_size": b, "weight_tokens": tw, "feature_width": f,
                   "program_tokens": tp, "sequence_length": seq, "vocab": v,
                   "precision": t["precision"], "dtype": str(jnp.dtype(trainer.dtype))},
        "params": int(sum(x.size for x in jax.tree_util.tree_leaves(params))),
        "steps_timed": steps, "compile_s": round(compile_s, 2), "step_s": round(step_s, 6),
        "tokens_per_step": tokens, "tokens_per_s": round(tokens / step_s, 1),
        "loss_last": float(metrics["loss"]),
        "model_flops_per_step": model_flops, "xla_flops_per_step": xla_flops,
        "model_flops_per_s": model_flops / step_s,
        "peak_bf16_flops": peak, "peak_source": (f"PEAK_BF16[{peak_key!r}] (dense bf16)"
                                                 if peak else f"no peak known for {kind!r}"),
        "mfu": round(mfu, 4) if mfu is not None else None,
        "mfu_xla_flops": (round(xla_flops / step_s / peak, 4)
                          if (mfu is not None and xla_flops) else None),
        "goal_mfu": GOALS["decompiler_step"]["mfu"],
        "goal_met": (mfu >= GOALS["decompiler_step"]["mfu"]) if mfu is not None else None,
    }


def check_cnn_zoo(p: dict, size: dict, budget_s: float) -> dict:
    """CNNs per GPU-hour at seed 000's CIFAR recipe (one vmapped group, synthetic images)."""
    import jax
    import numpy as np

    sys.path.insert(0, str(HERE))
    import cnn_zoo_throughput as bench  # make_specs, warm_up: same specs and warm-up

    from metamodels.backdoor import cnn
    from metamodels.backdoor.images import Images

    recipe = cnn.settings(p["cnn_zoo"]["cnn"])
    g, bs, epochs = int(recipe["vmap_group"]), int(recipe["batch_size"]), int(recipe["epochs"])
    steps = int(size["steps"])
    shape = (32, 32, 3)
    rng = np.random.default_rng(0)
    n_train, n_test = steps * bs, int(size["test_images"])
    data = Images(train_x=rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
                  train_y=rng.integers(0, 10, n_train).astype(np.int64),
                  test_x=rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
                  test_y=rng.integers(0, 10, n_test).astype(np.int64),
                  name="synthetic_cifar10_shape", classes=[str(i) for i in range(10)])
    specs = bench.make_specs(g, n_train, shape, p["cnn_zoo"])
    cfg = dict(recipe, epochs=1)  # one epoch of `steps` steps; the recipe's count is scaled
    t0 = time.perf_counter()
    bench.warm_up(data, cfg)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = cnn.train_models(data, specs, cfg, backend="jax")
    train_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    # the evaluation train_models ran (its compiled function, warmed up above), on the stacked
    # parameters (unflattened in NumPy: no new XLA compilations)
    cnn.evaluate(cnn.unflatten(res["weights"], res["layout"]), data, specs, cfg)
    eval_wall = time.perf_counter() - t0
    step_s = max(train_wall - eval_wall, 1e-9) / steps
    recipe_steps = epochs * (int(size["recipe_train_images"]) // bs)
    group_s = recipe_steps * step_s + eval_wall
    per_hour = g * 3600.0 / group_s
    on_cpu = jax.devices()[0].platform == "cpu"
    return {
        "synthetic_images": ("uniform random uint8 images of CIFAR-10's shape 32x32x3 and "
                             "random labels: speed does not depend on the values"),
        "recipe": {"channels": list(recipe["channels"]), "epochs": epochs, "batch_size": bs,
                   "vmap_group": g, "lr": recipe["lr"], "wd": recipe["wd"],
                   "train_images": int(size["recipe_train_images"]),
                   "test_images": n_test, "params_per_cnn": int(res["weights"].shape[1])},
        "measured": {"models": g, "steps_per_model": steps, "train_images": n_train,
                     "compile_s": round(compile_s, 2), "train_models_wall_s": round(train_wall, 3),
                     "evaluate_wall_s": round(eval_wall, 3), "step_s": round(step_s, 6),
                     "images_per_s": round(g * bs / step_s, 1)},
        "recipe_steps_per_model": recipe_steps,
        "extrapolated_group_s": round(group_s, 2),
        "cnns_per_gpu_hour": round(per_hour, 1),
        "unit": "CNNs per hour of the device named in the record (the CPU in --tiny)",
        "how": ("(recipe steps x measured step time + measured evaluation time) per vmapped "
                "group of vmap_group CNNs; step time = (train_models wall - evaluate wall) / "
                "steps, compilation excluded"),
        "goal_cnns_per_gpu_hour": GOALS["cnn_zoo"]["cnns_per_gpu_hour"],
        "goal_met": (per_hour >= GOALS["cnn_zoo"]["cnns_per_gpu_hour"]) if not on_cpu else None,
        "max_weight_abs": float(np.abs(res["weights"]).max()),
        "weights_finite": bool(np.isfinite(res["weights"]).all()),
    }


def sample_teachers(p: dict, n: int) -> tuple[list, dict]:
    """``n`` programs from the zoo's sampler, compiled with the fast tracr path."""
    import numpy as np

    from metamodels.rasp import lambdas as L
    from metamodels.rasp.program import num_layers, to_rasp
    from metamodels.rasp.sampler import SamplerConfig, sample_shard
    from metamodels.zoo.compiler import compile_program

    sc = SamplerConfig.from_params(p)
    tables = L.Tables(sc.map_constants)
    teachers, failed = [], 0
    t0 = time.perf_counter()
    shard = 0
    while len(teachers) < n and shard < 4:
        sampled, _ = sample_shard(sc, int(p["zoo"]["seed"]) + 1000, shard, n - len(teachers))
        for s in sampled:
            try:
                model = compile_program(to_rasp(s.program, tables), set(p["zoo"]["vocab"]),
                                        p["zoo"]["max_seq_len"],
                                        mlp_exactness=p["compile"]["mlp_exactness"])
                if model.num_layers != num_layers(s.program):
                    raise AssertionError("layer allocation mismatch")
                teachers.append(model)
            except Exception:  # noqa: BLE001 - counted: the zoo drops these too
                failed += 1
        shard += 1
    widths = [m.residual_size for m in teachers]
    return teachers, {"teachers": len(teachers), "compile_failures": failed,
                      "sample_compile_s": round(time.perf_counter() - t0, 2),
                      "residual_width": {"min": int(np.min(widths)), "max": int(np.max(widths)),
                                         "median": float(np.median(widths))},
                      "layers": sorted({int(m.num_layers) for m in teachers})}


def check_distill(p: dict, size: dict, budget_s: float) -> dict:
    """Distilled students per GPU-minute, per kind, on teachers compiled here."""
    import numpy as np

    from metamodels.variants import distill
    from metamodels.variants.stage import distill_ratio
    from metamodels.zoo.stage import verification_inputs

    t_start = time.perf_counter()
    teachers, facts = sample_teachers(p, int(size["teachers"]))
    inputs = verification_inputs(p)
    atol = float(p["verify"]["atol"])
    base = dict(distill.DEFAULTS, **p["variants"]["distill"])
    out = {"teachers": facts, "domain_inputs": int(sum(len(x) for x in inputs)),
           "config": {k: base[k] for k in ("group_size", "steps", "eval_every", "batch_random",
                                           "batch_vocab", "min_agreement", "max_layer_loss")},
           "kinds": {}}
    last = None
    for kind in size["kinds"]:
        left = budget_s - (time.perf_counter() - t_start)
        if size["skip_when_short"] and last is not None and left < 1.2 * last:
            out["kinds"][kind] = {"skipped": f"{left:.0f}s of the budget left, the previous "
                                             f"kind took {last:.0f}s"}
            continue
        cfg = dict(base, ratio=distill_ratio(base, kind))
        t0 = time.perf_counter()
        res = distill.distill(teachers, kind, cfg, list(range(len(teachers))), inputs, atol)
        wall = time.perf_counter() - t0
        last = wall
        acc = sum(r["accepted"] for r in res)
        out["kinds"][kind] = {
            "ratio": cfg["ratio"], "students": len(res), "accepted": acc, "wall_s": round(wall, 2),
            "students_per_gpu_minute": round(len(res) * 60.0 / wall, 2),
            "accepted_per_gpu_minute": round(acc * 60.0 / wall, 2),
            "groups": len(distill.groups(teachers, int(cfg["group_size"]))),
            "mean_agreement": round(float(np.mean([r["agreement"] for r in res])), 4),
            "mean_steps": round(float(np.mean([r["steps"] for r in res])), 1)}
    out["how"] = ("wall time of distill.distill over all teachers: XLA compilation of each "
                  "group shape, the vmapped training and the NumPy acceptance scoring included")
    return out


def check_modadd_mod1(p: dict, size: dict, budget_s: float) -> dict:
    """seed 002's mod-1 runs: grokked or not, and the patching table of each run."""
    import numpy as np

    from metamodels.modadd import stage as M

    t_start = time.perf_counter()
    m = p["modadd"]
    cfg = dict(M.with_defaults(m["train"]), vmap=True)  # vmapped, as "auto" is on a GPU
    seeds = M.task_seeds(int(m["seed"]), "mod1", int(m["runs"]["mod1"]))
    chunk, wanted = int(cfg["chunk"]), int(cfg["max_epochs"])
    # 1. compile + one chunk; 2. time `calibration_chunks` chunks (compiled: same structure)
    t0 = time.perf_counter()
    M.train_runs(dict(cfg, max_epochs=chunk - 1), 1, seeds)
    first_s = time.perf_counter() - t0
    k = int(size["calibration_chunks"])
    t0 = time.perf_counter()
    M.train_runs(dict(cfg, max_epochs=k * chunk - 1), 1, seeds)
    epoch_s = (time.perf_counter() - t0) / (k * chunk)
    left = budget_s - (time.perf_counter() - t_start) - float(size["reserve_s"])
    fit = int(left / epoch_s) // chunk * chunk - 1
    max_epochs = max(min(wanted, fit), chunk - 1)
    t0 = time.perf_counter()
    params, history, stops = M.train_runs(dict(cfg, max_epochs=max_epochs), 1, seeds)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    runs = []
    for r in range(len(seeds)):
        last = M._final_row(history[r])
        grokked = bool(last[2] >= cfg["stop_accuracy"] and last[3] >= cfg["stop_accuracy"])
        table = M.patching_table(M.run_params(params, r), int(cfg["p0"]), 1)
        runs.append({"seed": seeds[r], "stop_epoch": int(stops[r]),
                     "plateau_stop": bool(stops[r] < max_epochs),
                     "clean_accuracy": round(float(last[2]), 4),
                     "backdoor_accuracy": round(float(last[3]), 4),
                     "grokked": grokked,
                     "patching": {k2: (round(v, 4) if isinstance(v, float) else v)
                                  for k2, v in table.items()},
                     "single_head": M.single_head_finding(table, int(cfg["n_heads"]))})
    patch_s = time.perf_counter() - t0
    return {
        "task": "mod1", "p1": 1, "p0": int(cfg["p0"]), "train_fraction": cfg["train_fraction"],
        "runs": len(seeds),
        "config": {k2: cfg[k2] for k2 in ("d_model", "n_heads", "d_head", "d_mlp",
                                           "learning_rate", "weight_decay", "stop_accuracy",
                                           "patience", "chunk")},
        "max_epochs_params": wanted, "max_epochs_run": max_epochs,
        "budget_limited": max_epochs < wanted,
        "compile_and_first_chunk_s": round(first_s, 2), "epoch_s": round(epoch_s, 6),
        "train_s": round(train_s, 2), "patching_s": round(patch_s, 2),
        "epochs_per_s": round(1.0 / epoch_s, 1),
        "grokked_runs": sum(r["grokked"] for r in runs),
        "single_head_runs": sum(r["single_head"] for r in runs),
        "patching_mean": {c: round(float(np.mean([r["patching"][c] for r in runs])), 4)
                          for c in runs[0]["patching"] if c != "top_head"},
        "per_run": runs,
        "patching_columns": "backdoor accuracy after patching none / one head (0-based) / all "
                            "heads but the top one / all heads with their (a, b, 0) outputs",
    }


RUNNERS = {"decompiler_step": check_decompiler_step, "cnn_zoo": check_cnn_zoo,
           "distill": check_distill, "modadd_mod1": check_modadd_mod1}


# ---------------------------------------------------------------------------------- commands

def cmd_run(args) -> int:
    out = pathlib.Path(args.out)
    mode = "tiny" if args.tiny else "full"
    rec = {"check": args.check, "status": "running", "reason": None, "mode": mode,
           "device": None, "started": now(), "timeout_s": args.timeout_s,
           "budget_s": args.budget_s, "sizes": SIZES[args.check][mode]}
    write_record(out, args.check, rec)
    t0 = time.perf_counter()
    try:
        rec["device"] = device_info()
        write_record(out, args.check, rec)
        p = load_params(args.tiny)
        rec["result"] = RUNNERS[args.check](p, SIZES[args.check][mode], args.budget_s)
        rec["status"] = "ok"
    except BaseException as e:  # noqa: BLE001 - the record says why
        rec["status"] = "failed"
        rec["reason"] = f"{type(e).__name__}: {e}"
        rec["traceback"] = traceback.format_exc()[-4000:]
    rec["wall_s"] = round(time.perf_counter() - t0, 2)
    rec["finished"] = now()
    write_record(out, args.check, rec)
    print(f"[gpu_check] {args.check}: {rec['status']} in {rec['wall_s']}s"
          + (f" ({rec['reason']})" if rec["reason"] else ""), file=sys.stderr, flush=True)
    return 0 if rec["status"] == "ok" else 1


def cmd_finalize(args) -> int:
    """After the check's process: a missing or still-'running' record becomes a failed one."""
    out = pathlib.Path(args.out)
    path = record_path(out, args.check)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        rec = {"check": args.check, "status": "running", "reason": None,
               "mode": "tiny" if args.tiny else "full", "device": None}
    if rec.get("status") == "ok":
        return 0
    tail = ""
    if args.log and os.path.exists(args.log):
        tail = pathlib.Path(args.log).read_text(errors="replace")[-2000:]
    if rec.get("status") == "running":
        rec["status"] = "failed"
        if args.rc in (124, 137):
            rec["reason"] = f"timeout: killed after {args.timeout_s}s (exit {args.rc})"
        else:
            rec["reason"] = f"process ended with exit status {args.rc} before writing its result"
    rec["exit_status"] = args.rc
    if tail:
        rec["log_tail"] = tail
    if not rec.get("device"):
        rec["device"] = {"kind": _nvidia_name() or "unknown (the check failed before JAX "
                                                    "named its device)"}
    write_record(out, args.check, rec)
    return 1


def _nvidia_name() -> str | None:
    import shutil
    import subprocess
    if not shutil.which("nvidia-smi"):
        return None
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def cmd_summary(args) -> int:
    out = pathlib.Path(args.out)
    bad = 0
    for check in args.checks or CHECKS:
        try:
            rec = json.loads(record_path(out, check).read_text())
        except (OSError, ValueError):
            print(f"{check:16s} MISSING")
            bad += 1
            continue
        r = rec.get("result") or {}
        kind = (rec.get("device") or {}).get("kind")
        if check == "decompiler_step":
            what = f"tokens/s {r.get('tokens_per_s')} mfu {r.get('mfu')}"
        elif check == "cnn_zoo":
            what = f"cnns/h {r.get('cnns_per_gpu_hour')}"
        elif check == "distill":
            what = " ".join(f"{k}: {v.get('students_per_gpu_minute', 'skipped')}/min "
                            f"({v.get('accepted', '-')} accepted)"
                            for k, v in (r.get("kinds") or {}).items())
        else:
            what = (f"grokked {r.get('grokked_runs')}/{r.get('runs')} "
                    f"max_epochs {r.get('max_epochs_run')} single-head {r.get('single_head_runs')}")
        line = f"{check:16s} {rec.get('status'):7s} {rec.get('wall_s', '-')!s:>7}s  [{kind}]  "
        print(line + (what if rec.get("status") == "ok" else str(rec.get("reason"))))
        bad += rec.get("status") != "ok"
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("check", choices=CHECKS)
    fin = sub.add_parser("finalize")
    fin.add_argument("check", choices=CHECKS)
    fin.add_argument("--rc", type=int, required=True)
    fin.add_argument("--log")
    summ = sub.add_parser("summary")
    summ.add_argument("checks", nargs="*")
    for sp in (run, fin, summ):
        sp.add_argument("--out", required=True)
        sp.add_argument("--tiny", action="store_true")
        sp.add_argument("--timeout-s", type=float, default=0.0)
    run.add_argument("--budget-s", type=float, default=60.0)
    args = ap.parse_args()
    return {"run": cmd_run, "finalize": cmd_finalize, "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
