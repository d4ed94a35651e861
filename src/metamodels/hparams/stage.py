"""Hyperparameter prediction stage (seed 000 §3.2 and App. A.1.1; Figure 4 there).

Three verbs, one per Snakemake rule (rules/hparams.smk):

``hparam-zoo-shard``  (:func:`run_zoo_shard`) trains one shard of the zoo
                      (:mod:`metamodels.hparams.zoo`: CNNs of variable width and depth, each
                      with hyperparameters drawn from ``hparam_zoo.choices``) and writes it.
``predict-hparam``    (:func:`run_predict`) for one target hyperparameter trains, on one
                      split of the zoo shared by every target, the project's chunked-weights
                      meta-model with a K-way head (:mod:`metamodels.backdoor.detector`,
                      neuron-permutation augmentation per architecture) and Eilertsen et
                      al.'s 1-D CNN over random 5,000-long weight segments
                      (:mod:`metamodels.hparams.baseline`), and scores the majority class;
                      writes every test model's predicted class per method.
``hparam-report``     (:func:`run_report`) gathers the targets into
                      ``results/metrics/hparams.json``.

Zoo shard format (``data/hparam_zoo/shard_KKK.npz``, :func:`metamodels.core.shards.save_npz`;
numpy only, no pickle), one row per model:
    ``weights``        float32 [M, P_max]: flat weights in
                       :func:`metamodels.backdoor.cnn.layout` order, zero-padded after
                       ``n_weights`` to the largest architecture the choices allow
    ``n_weights``      int64 [M]
    ``layout``         unicode [M]: JSON list of ``[name, shape]`` of each model
    ``dataset``, ``augmentation``, ``optimizer``, ``activation``, ``initialization``
                       unicode [M]; ``batch_size``, ``width``, ``depth`` int64 [M]
    ``seed``           int64 [M]; ``model_index`` int64 [M] (``shard * models_per_shard + j``)
    ``test_acc``       float64 [M]: accuracy on the model's own data set's test images
    ``train_loss``     float32 [M, epochs]
    ``meta``           1-element unicode array: JSON of ``hparam_zoo``, the image shape, shard
"""

from __future__ import annotations

import json
import sys
import time
from typing import Mapping, Sequence

import numpy as np

from metamodels.core import shards as S

ROLES = ("train", "val", "test")
METHODS = ("meta_model", "segment_cnn", "majority")
"""Predictors, in the order reports and figure 4 list them."""
COLUMNS = ("weights", "n_weights", "dataset", "batch_size", "augmentation", "optimizer",
           "activation", "initialization", "width", "depth", "seed", "model_index", "test_acc")
_INT_COLUMNS = ("batch_size", "width", "depth")
_TEXT_COLUMNS = ("dataset", "augmentation", "optimizer", "activation", "initialization")


# ---------------------------------------------------------------------------------------------
# zoo


def run_zoo_shard(params: Mapping, shard: int, out: str) -> None:
    """Train one shard of the hyperparameter zoo and write it (format in the module
    docstring). Raises DatasetError when a listed data set's files are missing."""
    from metamodels.hparams import data as D
    from metamodels.hparams import zoo as Z
    zoo = params["hparam_zoo"]
    t0 = time.perf_counter()
    plan = Z.shard_plan(zoo, shard)
    datasets = {name: D.load(name, zoo, params.get("images", {}))
                for name in zoo["choices"]["dataset"]}
    shape = next(iter(datasets.values())).shape
    print(f"[hparam-zoo] shard {shard}: {len(plan)} models, {zoo['epochs']} epochs, images "
          f"{shape} from " + ", ".join(f"{n} ({len(d.train_x)} train / {len(d.test_x)} test)"
                                       for n, d in datasets.items()), file=sys.stderr)
    res = Z.train_models(plan, datasets, zoo)
    meta = {"hparam_zoo": dict(zoo), "shape": list(shape), "shard": shard,
            "classes": 10, "max_params": int(res["weights"].shape[1])}
    arrays = {
        "weights": res["weights"], "n_weights": res["n_weights"],
        "layout": S.text_array([json.dumps([[n, list(s)] for n, s in lay])
                                for lay in res["layout"]]),
        "seed": np.array([p["seed"] for p in plan], np.int64),
        "model_index": np.array([p["model_index"] for p in plan], np.int64),
        "test_acc": np.asarray(res["test_acc"], np.float64),
        "train_loss": np.asarray(res["train_loss"], np.float32),
        "meta": S.text_array([json.dumps(meta, sort_keys=True)]),
    }
    for k in _TEXT_COLUMNS:
        arrays[k] = S.text_array([p[k] for p in plan])
    for k in _INT_COLUMNS:
        arrays[k] = np.array([p[k] for p in plan], np.int64)
    S.save_npz(out, arrays)
    print(f"[hparam-zoo] shard {shard}: test accuracy median {np.median(res['test_acc']):.3f}; "
          f"training {res['train_s'].sum():.1f}s (median {np.median(res['train_s']):.2f}s a "
          f"model, compilation included); {time.perf_counter() - t0:.1f}s -> {out}",
          file=sys.stderr)


def load_zoo(paths: Sequence[str], weights: bool = True) -> dict:
    """The zoo shards concatenated (:data:`COLUMNS`), plus ``shape`` (H, W, C) and the
    ``hparam_zoo`` params they were built with. Raises ValueError when the shards were built
    with different params."""
    if not paths:
        raise ValueError("no hyperparameter-zoo shards given")
    columns = [k for k in COLUMNS if weights or k not in ("weights",)]
    parts = [S.load_npz(p, [*columns, "meta"]) for p in paths]
    metas = [json.loads(str(p["meta"][0])) for p in parts]
    if len({json.dumps(m["hparam_zoo"], sort_keys=True) for m in metas}) != 1:
        raise ValueError(f"zoo shards {list(paths)} were built with different hparam_zoo "
                         "params; rebuild them with one params.yaml")
    zoo = {k: np.concatenate([p[k] for p in parts]) for k in columns}
    for k in _TEXT_COLUMNS:
        zoo[k] = zoo[k].astype(str)
    zoo["shape"] = tuple(metas[0]["shape"])
    zoo["params"] = metas[0]["hparam_zoo"]
    return zoo


# ---------------------------------------------------------------------------------------------
# predictors


def split(n: int, cfg: Mapping) -> dict[str, np.ndarray]:
    """Row indices of train / val / test: a permutation from ``default_rng([seed, 7])`` cut at
    ``split.val`` and ``split.test`` fractions (the same for every target)."""
    from metamodels.hparams import split_sizes
    perm = np.random.default_rng([int(cfg["seed"]), 7]).permutation(n)
    n_train, n_val, n_test = split_sizes(n, cfg["split"])
    if n_train < 2:
        raise ValueError(f"hparams.split leaves {n_train} of {n} zoo models to train on; grow "
                         "hparam_zoo.models_per_shard or shrink the split")
    return {"test": np.sort(perm[:n_test]), "val": np.sort(perm[n_test:n_test + n_val]),
            "train": np.sort(perm[n_test + n_val:])}


def labels_of(zoo: Mapping, target: str) -> tuple[np.ndarray, list[str]]:
    """Class index per model of ``target`` (its position in ``hparam_zoo.choices[target]``)
    and the class names. Raises ValueError for a target that is not a hyperparameter."""
    from metamodels.hparams.zoo import HPARAMS
    if target not in HPARAMS:
        raise ValueError(f"hparams.targets: unknown {target!r}; known: {list(HPARAMS)}")
    names = [str(v) for v in zoo["params"]["choices"][target]]
    values = zoo[target].astype(str)
    return np.array([names.index(v) for v in values], np.int64), names


def architecture_groups(zoo: Mapping) -> tuple[np.ndarray, list]:
    """Per model the index of its architecture in a list of (channels, layout), one per
    (width, depth) present in the zoo."""
    from metamodels.backdoor import cnn
    from metamodels.hparams.zoo import channels_of
    archs = sorted(set(zip(zoo["width"].tolist(), zoo["depth"].tolist())))
    layouts = [(channels_of(w, d), cnn.layout_for(zoo["shape"], {"channels":
                                                                list(channels_of(w, d))}))
               for w, d in archs]
    index = {a: i for i, a in enumerate(archs)}
    groups = np.array([index[a] for a in zip(zoo["width"].tolist(), zoo["depth"].tolist())],
                      np.int32)
    return groups, layouts


def permutation_augment(layouts: Sequence, width: int):
    """``augment(flat [B, width], keys [B], groups [B]) -> [B, width]`` (jnp): each row's
    hidden neurons permuted (:func:`metamodels.backdoor.cnn.permute_flat`) with its own
    architecture's layout. Rows longer than ``width`` (truncated inputs) are zero-filled to
    their length, permuted and cut again: exact for the weights within ``width``' reach only
    where no unit moves in from the cut part (documented in docs/hparams.md)."""
    import jax
    import jax.numpy as jnp

    from metamodels.backdoor import cnn

    def augment(flat, keys, groups):
        out = flat
        for a, (_, lay) in enumerate(layouts):
            p = cnn.num_params(lay)
            full = flat[:, :p] if p <= width else jnp.pad(flat, ((0, 0), (0, p - width)))
            moved = jax.vmap(lambda f, k: cnn.permute_flat(f, k, lay))(full, keys)
            moved = moved[:, :width] if p >= width else jnp.pad(moved, ((0, 0), (0, width - p)))
            out = jnp.where((groups == a)[:, None], moved, out)
        return out

    return augment


def inputs(zoo: Mapping, length: int) -> np.ndarray:
    """The meta-model's input: weights truncated or zero-padded to ``length`` (0: the zoo's
    padded width), float32 [M, length]."""
    w = zoo["weights"]
    length = int(length) or w.shape[1]
    if length <= w.shape[1]:
        return np.ascontiguousarray(w[:, :length])
    return np.pad(w, ((0, 0), (0, length - w.shape[1])))


def run_predict(params: Mapping, zoo_paths: Sequence[str], target: str, scores_out: str,
                history_out: str) -> None:
    """Train and score the three predictors (:data:`METHODS`) of one target; write the test
    models' true and predicted classes per method (JSON) and the training histories."""
    from metamodels.backdoor import detector as DET
    from metamodels.hparams import baseline as B
    cfg = params["hparams"]
    zoo = load_zoo(zoo_paths)
    y, classes = labels_of(zoo, target)
    k = len(classes)
    parts = split(len(y), cfg)
    tr, va, te = (parts[r] for r in ROLES)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    log(f"[hparams] {target}: {k} classes {classes}; {len(tr)} train / {len(va)} val / "
        f"{len(te)} test models")
    seconds, predicted, history = {}, {}, {}

    t0 = time.perf_counter()
    x = inputs(zoo, int(cfg["input_length"]))
    mcfg = {**cfg["meta_model"], "classes": k}
    groups, layouts = architecture_groups(zoo)
    augment = permutation_augment(layouts, x.shape[1]) if mcfg.get("augment", True) else None
    model, history["meta_model"] = DET.train(mcfg, x[tr], y[tr], x[va], y[va], augment=augment,
                                             log=log, groups=groups[tr])
    predicted["meta_model"] = np.argmax(DET.logits(model, x[te]), axis=1)
    seconds["meta_model"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    w, n = zoo["weights"], zoo["n_weights"]
    seg, history["segment_cnn"] = B.train(cfg["segment_cnn"], w[tr], n[tr], y[tr], k, log=log)
    predicted["segment_cnn"] = np.argmax(B.predict_proba(seg, w[te], n[te]), axis=1)
    seconds["segment_cnn"] = time.perf_counter() - t0

    majority = int(np.bincount(y[tr], minlength=k).argmax())
    predicted["majority"] = np.full(len(te), majority)
    seconds["majority"] = 0.0

    acc = {m: float(np.mean(predicted[m] == y[te])) for m in METHODS}
    log(f"[hparams] {target}: test accuracy " + ", ".join(f"{m} {a:.3f}" for m, a in acc.items()))
    S.write_json(scores_out, {
        "target": target, "classes": classes,
        "model_index": zoo["model_index"][te].tolist(), "label": y[te].tolist(),
        "predicted": {m: [int(v) for v in predicted[m]] for m in METHODS},
        "accuracy": acc, "n": {r: int(len(parts[r])) for r in ROLES},
        "train_class_counts": np.bincount(y[tr], minlength=k).tolist(),
    })
    log(f"[hparams] {target}: seconds "
        + json.dumps({m: round(v, 1) for m, v in seconds.items()}))
    S.write_json(history_out, {"target": target, "history": {
        m: [{kk: v for kk, v in e.items() if kk not in ("train_s", "examples_per_s")} for e in h]
        for m, h in history.items()}})


# ---------------------------------------------------------------------------------------------
# report


def run_report(params: Mapping, score_paths: Sequence[str], zoo_paths: Sequence[str],
               metrics_out: str) -> None:
    """``results/metrics/hparams.json``: per target the test accuracy of every method, chance
    (1 / K) and the test set's majority share; the zoo's size and test accuracy per data set.
    (Seconds are in the jobs' logs and benchmark files: outputs depend on params only.)"""
    zoo = load_zoo(zoo_paths, weights=False)
    targets = {}
    for path in score_paths:
        s = S.read_json(path)
        label = np.asarray(s["label"])
        k = len(s["classes"])
        targets[s["target"]] = {
            "classes": s["classes"], "accuracy": s["accuracy"], "chance": 1.0 / k,
            "test_majority_share": float(np.bincount(label, minlength=k).max() / len(label)),
            "n": s["n"],
            "meta_model_minus_segment_cnn": s["accuracy"]["meta_model"]
            - s["accuracy"]["segment_cnn"]}
    order = [t for t in params["hparams"]["targets"] if t in targets]
    by_dataset = {d: {"models": int((zoo["dataset"] == d).sum()),
                      "test_acc_median": float(np.median(zoo["test_acc"][zoo["dataset"] == d]))}
                  for d in sorted(set(zoo["dataset"].tolist()))}
    S.write_json(metrics_out, {
        "zoo": {"models": int(len(zoo["seed"])), "by_dataset": by_dataset},
        "methods": list(METHODS),
        "target_order": order,  # hparams.targets order (JSON objects are written key-sorted)
        "targets": {t: targets[t] for t in order},
        "meta_model_wins": {t: targets[t]["meta_model_minus_segment_cnn"] > 0 for t in order},
    })
