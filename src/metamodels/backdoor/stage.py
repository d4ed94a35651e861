"""Backdoor-detection stage (seed 000 §3.1): a zoo of poisoned CNNs and meta-models over it.

Three verbs, one per Snakemake rule:

``cnn-zoo-shard``   (:func:`run_zoo_shard`) trains the models of one shard
                    (:mod:`metamodels.backdoor.cnn`: ``jax.vmap`` groups, or PyTorch on
                    the CPU when ``cnn_zoo.cnn.cpu_path`` says so), on the images of ``images``
                    (:mod:`metamodels.backdoor.images`) poisoned as ``cnn_zoo`` says
                    (:mod:`metamodels.backdoor.poisons`), and writes one zoo shard.
``detect-backdoors`` (:func:`run_detect`) trains the detector meta-model, the
                    weight-statistics baseline and the query-based ULP and MNTD
                    (:mod:`metamodels.backdoor.baselines`) for one *setting* and scores the
                    test models:
                    ``iid`` (train on clean + every training attack, neuron-permutation
                    augmentation as ``detector.model.augment`` says), ``iid_noaug`` or
                    ``iid_aug`` (the same with augmentation switched the other way) and
                    ``ood_<attack>`` (train on clean + that one attack; every other attack,
                    including the hand-crafted OOD patches, is out of distribution).
``backdoor-report`` (:func:`run_report`) turns the settings' scores into
                    ``results/metrics/backdoor.json`` (AUC per trigger type and method) and
                    the ROC table behind figure 2.

Zoo shard format (``data/cnn_zoo/shard_KKK.npz``, written by :func:`metamodels.core.shards.save_npz`;
numpy only, no pickle), one row per model:
    ``weights``     float32 [M, P]: flat weights in :func:`metamodels.backdoor.cnn.layout` order
    ``layout``      1-element unicode array: JSON list of ``[name, shape]``
    ``attack``      unicode [M]: ``clean`` or a poison name (:data:`metamodels.backdoor.poisons.ATTACKS`)
    ``target``      int32 [M]: attack target class (-1 for clean models)
    ``seed``        int64 [M]: the model's data-order seed (and its trigger's: :func:`poison_rng`)
    ``init_seed``   int64 [M]: ``PRNGKey`` seed of its initial weights (:func:`init_seed`)
    ``model_index`` int64 [M]: global index ``shard * models_per_shard + j``
    ``clean_acc``   float64 [M]: test accuracy on clean images
    ``asr``         float64 [M]: attack success rate (NaN for clean models)
    ``poisoned``    bool [M]: a poisoned model whose ASR clears ``cnn_zoo.asr_threshold``
    ``train_loss``  float32 [M, epochs]
    ``mask``, ``pattern`` float32 [M, H, W, C]: each model's trigger (zeros for clean)
    ``meta``        1-element unicode array: JSON of the images/cnn params and the image shape

Model roles (:func:`roles`): clean and training-attack models are split train/val/test per
attack (seeded by ``detector.seed``), OOD-attack models are always test. Poisoned models whose
ASR misses the threshold are left out of detection (counted in the metrics), since nothing
says they carry a backdoor.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Mapping, Sequence

import numpy as np

from metamodels.core import shards as S
from metamodels.core.config import detection_settings as setting_names

CLEAN = "clean"
ROLES = ("train", "val", "test")
#: The ``iid`` setting with the meta-model's permutation augmentation switched off / on.
FLIPPED = ("iid_noaug", "iid_aug")


# ---------------------------------------------------------------------------------------------
# Zoo


def shard_plan(zoo: Mapping, shard: int) -> list[tuple[str, int]]:
    """(attack, seed) of every model of one shard, in order.

    ``zoo["models_per_shard"]`` maps attack -> count; the shard holds that many models of each,
    attacks in name order (not the mapping's: a params file and the rules' ``--config`` JSON,
    whose keys are sorted, must give one zoo). Seeds derive from (``zoo.seed``, shard,
    position) only.
    """
    plan = []
    per_shard = zoo["models_per_shard"]
    for attack in sorted(per_shard):
        for _ in range(int(per_shard[attack])):
            j = len(plan)
            seed = int(np.random.default_rng([int(zoo["seed"]), shard, j]).integers(2**31 - 1))
            plan.append((attack, seed))
    return plan


#: Stream tag of a model's trigger and poisoned indices: ``default_rng([seed, POISON_STREAM])``.
#: :func:`metamodels.backdoor.cnn.epoch_order` draws epoch ``e`` from ``[seed, e]``, and NumPy's
#: SeedSequence gives ``[a, b]`` and ``[a, b, 0]`` one stream, so the tag must differ from every
#: epoch index (the poison stream was ``[seed, 1]``, epoch 1's order, until 2026-12-07).
POISON_STREAM = 2**31 - 1


def poison_rng(seed: int) -> np.random.Generator:
    """The generator of model ``seed``'s trigger and poisoned indices (:data:`POISON_STREAM`)."""
    return np.random.default_rng([int(seed), POISON_STREAM])


def model_specs(zoo: Mapping, shard: int, shape: tuple[int, int, int], n_train: int,
                n_classes: int) -> tuple[list[str], list[dict]]:
    """Attack names and :func:`metamodels.backdoor.cnn.train_models` specs of one shard's models.

    Model seed from :func:`shard_plan`; its trigger and poisoned indices from
    :func:`poison_rng`; its initial weights from :func:`init_seed`."""
    from metamodels.backdoor import poisons as P
    attacks, specs = [], []
    for attack, seed in shard_plan(zoo, shard):
        rng = poison_rng(seed)
        if attack == CLEAN:
            spec = {"mask": np.zeros(shape, np.float32), "pattern": np.zeros(shape, np.float32),
                    "target": -1, "poison_idx": np.zeros(0, np.int64)}
        else:
            spec = P.sample_attack(zoo, attack, rng, shape, n_classes)
            spec["poison_idx"] = P.poison_indices(n_train, float(zoo["poison_rate"]), rng)
        attacks.append(attack)
        specs.append({**spec, "seed": seed, "init_seed": init_seed(zoo, seed)})
    return attacks, specs


#: Stream tag of the zoo's shared initial weights: ``default_rng([cnn_zoo.seed, INIT_STREAM])``
#: (:func:`shard_plan` draws model seeds from ``[cnn_zoo.seed, shard, j]``, shards < 2**31 - 1).
INIT_STREAM = 2**31 - 1


def init_seed(zoo: Mapping, seed: int) -> int:
    """The ``PRNGKey`` seed of model ``seed``'s initial weights: its own seed under
    ``cnn_zoo.init: per_model`` (seed 000), one seed for the whole zoo under ``shared``."""
    mode = zoo.get("init", "per_model")
    if mode == "per_model":
        return int(seed)
    if mode == "shared":
        return int(np.random.default_rng([int(zoo["seed"]), INIT_STREAM]).integers(2**31 - 1))
    raise ValueError(f"cnn_zoo.init: unknown {mode!r}; use per_model or shared")


def run_zoo_shard(params: Mapping, shard: int, out: str) -> None:
    """Train one shard of the CNN zoo and write it (format in the module docstring)."""
    from metamodels.backdoor import cnn, images
    zoo, cfg = params["cnn_zoo"], params["cnn_zoo"]["cnn"]
    t0 = time.perf_counter()
    data = images.load_images(params["images"])
    shape = tuple(int(d) for d in data.train_x.shape[1:])
    n_classes = len(data.classes)
    attacks, specs = model_specs(zoo, shard, shape, len(data.train_x), n_classes)
    print(f"[cnn-zoo] shard {shard}: {len(specs)} models on {data.name} "
          f"({len(data.train_x)} train / {len(data.test_x)} test images of {shape}), "
          f"{cfg['epochs']} epochs, " + ("PyTorch, one model at a time"
                                          if cnn.backend_for(cfg) == "torch"
                                          else f"JAX, vmap groups of {cfg['vmap_group']}"),
          file=sys.stderr)
    train_specs = [{**s, "target": max(s["target"], 0)} for s in specs]
    res = cnn.train_models(data, train_specs, cfg)
    attack_arr = np.array(attacks)
    is_clean = attack_arr == CLEAN
    asr = np.where(is_clean, np.nan, res["asr"])
    poisoned = ~is_clean & (np.nan_to_num(asr, nan=0.0) >= float(zoo["asr_threshold"]))
    meta = {"images": dict(params["images"]), "cnn": dict(cfg), "shape": list(shape),
            "classes": list(data.classes), "shard": shard}
    S.save_npz(out, {
        "weights": res["weights"].astype(np.float32),
        "layout": S.text_array([json.dumps([[n, list(s)] for n, s in res["layout"]])]),
        "attack": S.text_array(attacks),
        "target": np.array([s["target"] for s in specs], np.int32),
        "seed": np.array([s["seed"] for s in specs], np.int64),
        "init_seed": np.array([s["init_seed"] for s in specs], np.int64),
        "model_index": shard * len(specs) + np.arange(len(specs), dtype=np.int64),
        "clean_acc": np.asarray(res["clean_acc"], np.float64),
        "asr": np.asarray(asr, np.float64),
        "poisoned": poisoned,
        "train_loss": np.asarray(res["train_loss"], np.float32),
        "mask": np.stack([s["mask"] for s in specs]).astype(np.float32),
        "pattern": np.stack([s["pattern"] for s in specs]).astype(np.float32),
        "meta": S.text_array([json.dumps(meta, sort_keys=True)]),
    })
    print(f"[cnn-zoo] shard {shard}: clean acc median {np.median(res['clean_acc']):.3f}, "
          f"{int(poisoned.sum())}/{int((~is_clean).sum())} poisoned models clear ASR "
          f"{zoo['asr_threshold']}; {time.perf_counter() - t0:.1f}s -> {out}", file=sys.stderr)


COLUMNS = ("weights", "attack", "target", "seed", "init_seed", "model_index", "clean_acc", "asr",
           "poisoned")


def load_zoo(paths: Sequence[str], weights: bool = True) -> dict:
    """The zoo shards concatenated (the :data:`COLUMNS` plus ``layout``); ``weights=False``
    skips reading the weights (all a summary needs is the labels)."""
    if not paths:
        raise ValueError("no CNN zoo shards given")
    columns = [k for k in COLUMNS if weights or k != "weights"]
    parts = [S.load_npz(p, [*columns, "layout"]) for p in paths]
    zoo = {k: np.concatenate([p[k] for p in parts]) for k in columns}
    layouts = {str(p["layout"][0]) for p in parts}
    if len(layouts) != 1:
        raise ValueError(f"zoo shards {list(paths)} have different CNN layouts; rebuild them "
                         "with one params.yaml")
    zoo["layout"] = [(n, tuple(s)) for n, s in json.loads(layouts.pop())]
    zoo["attack"] = zoo["attack"].astype(str)
    zoo["shape"] = tuple(json.loads(str(S.load_npz(paths[0], ["meta"])["meta"][0]))["shape"])
    return zoo


def roles(attacks: Sequence[str], ood_attacks: Sequence[str], split: Mapping,
          seed: int) -> np.ndarray:
    """Role (train / val / test) of every model: per attack, a seeded split; OOD: test."""
    a = np.asarray(attacks)
    out = np.empty(len(a), dtype=object)
    for k, name in enumerate(sorted(set(a.tolist()))):
        idx = np.nonzero(a == name)[0]
        if name in ood_attacks:
            out[idx] = "test"
            continue
        idx = np.random.default_rng([seed, k]).permutation(idx)
        n_val = int(round(float(split["val"]) * len(idx)))
        n_test = int(round(float(split["test"]) * len(idx)))
        out[idx[:n_val]] = "val"
        out[idx[n_val:n_val + n_test]] = "test"
        out[idx[n_val + n_test:]] = "train"
    return out.astype(str)


def setting_split(zoo: Mapping, det: Mapping, setting: str) -> dict[str, np.ndarray]:
    """Indices of the train / val / test models of one setting (usable models only)."""
    from metamodels.backdoor import poisons as P
    attacks = zoo["attack"]
    usable = (attacks == CLEAN) | zoo["poisoned"]
    role = roles(attacks, P.OOD_ATTACKS, det["split"], int(det["seed"]))
    if setting in ("iid", *FLIPPED):
        trainable = np.isin(attacks, (CLEAN, *P.TRAIN_ATTACKS))
    elif setting.startswith("ood_") and setting[4:] in P.TRAIN_ATTACKS:
        trainable = np.isin(attacks, (CLEAN, setting[4:]))
    else:
        raise ValueError(f"unknown detection setting {setting!r}; params give "
                         f"{setting_names(det)} (detector.ood_train_attacks takes names from "
                         f"{list(P.TRAIN_ATTACKS)})")
    out = {r: np.nonzero(usable & (role == r) & (trainable if r != "test" else True))[0]
           for r in ROLES}
    for r in ("train", "val"):
        labels = attacks[out[r]] != CLEAN
        if labels.all() or not labels.any():
            raise ValueError(f"setting {setting}: the {r} set has only one class "
                             f"({len(out[r])} models); grow cnn_zoo.models_per_shard or "
                             "cnn_zoo.shards, or lower cnn_zoo.asr_threshold")
    return out


#: Wall-clock fields of the detector's history: they go to the timing log, never into outputs
#: (same params, same bytes).
TIMING_KEYS = ("train_s", "examples_per_s")


def permutation_augment(lay):
    """The meta-model's ``augment(flat_batch [B, P], keys [B]) -> [B, P]``: every row's neurons
    permuted by :func:`metamodels.backdoor.cnn.permute_flat` under its own key (layout ``lay``)."""
    import jax

    from metamodels.backdoor import cnn

    def augment(flat, keys):
        return jax.vmap(lambda f, k: cnn.permute_flat(f, k, lay))(flat, keys)
    return augment


def run_detect(params: Mapping, zoo_paths: Sequence[str], setting: str, scores_out: str,
               history_out: str, timing_out: str | None = None) -> None:
    """Train the four detectors (:data:`METHODS`; ULP and MNTD not in :data:`FLIPPED`) for one
    setting on the same split; write the test models' scores and the meta-model's training
    history (JSON), and the wall-clock seconds to ``timing_out`` (JSON) when given."""
    from metamodels.backdoor import detector as D
    det = params["detector"]
    zoo = load_zoo(zoo_paths)
    split = setting_split(zoo, det, setting)
    x, labels = zoo["weights"], (zoo["attack"] != CLEAN).astype(np.int32)
    cfg = dict(det["model"])
    if setting in FLIPPED:
        cfg["augment"] = setting == "iid_aug"
    lay = zoo["layout"]
    augment = permutation_augment(lay) if cfg.get("augment", True) else None
    tr, va, te = (split[r] for r in ROLES)
    print(f"[detect] {setting}: {len(tr)} train / {len(va)} val / {len(te)} test models",
          file=sys.stderr)
    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    seconds = {}
    t0 = time.perf_counter()
    model, history = D.train(cfg, x[tr], labels[tr], x[va], labels[va], augment=augment, log=log)
    seconds["meta_model"] = time.perf_counter() - t0
    scores = {"meta_model": D.predict(model, x[te])}
    t0 = time.perf_counter()
    feats = D.weight_stats(x, lay)
    base = D.fit_logreg(feats[tr], labels[tr], float(det["baseline"]["l2"]),
                        int(det["baseline"]["steps"]))
    scores["weight_stats"] = D.predict_logreg(base, feats[te])
    seconds["weight_stats"] = time.perf_counter() - t0
    if setting not in FLIPPED:  # the query methods see no weights: they would repeat iid
        from metamodels.backdoor import baselines as Q
        for name, fit, score in (("ulp", Q.fit_ulp, Q.score_ulp),
                                 ("mntd", Q.fit_mntd, Q.score_mntd)):
            t0 = time.perf_counter()
            fitted = fit(det[name], x[tr], labels[tr], lay, zoo["shape"],
                         val=(x[va], labels[va]), log=log)
            scores[name] = score(fitted, x[te], lay)
            seconds[name] = time.perf_counter() - t0
            log(f"[detect] {setting}: {name} fitted and scored in {seconds[name]:.1f}s")
    S.write_json(scores_out, {
        "setting": setting,
        "train_attacks": sorted(set(zoo["attack"][tr].tolist())),
        "model_index": zoo["model_index"][te].tolist(),
        "attack": zoo["attack"][te].tolist(),
        "label": labels[te].tolist(),
        "scores": {m: [float(v) for v in s] for m, s in scores.items()},
        "n": {r: int(len(split[r])) for r in ROLES},
    })
    S.write_json(history_out, {"setting": setting, "history": [
        {k: v for k, v in e.items() if k not in TIMING_KEYS} for e in history]})
    if timing_out:
        S.write_json(timing_out, {
            "setting": setting, "train_s": round(seconds["meta_model"], 1),
            "seconds_by_method": {m: round(v, 1) for m, v in seconds.items()},
            "history": [{k: e[k] for k in ("step", *TIMING_KEYS)} for e in history]})


#: Detection methods, in the order reports and figures list them: the weight-space meta-model,
#: the weight-statistics baseline, and seed 000's two query-based baselines (ULP, MNTD).
METHODS = ("meta_model", "weight_stats", "ulp", "mntd")


def _auc_table(scores: Mapping) -> dict:
    """Per-attack AUC and accuracy of every method on one setting's test models."""
    from metamodels.backdoor import detector as D
    train_attacks = set(scores["train_attacks"])
    out = {}
    for method, values in scores["scores"].items():
        res = D.evaluate_by_attack(values, scores["label"], scores["attack"])
        out[method] = {
            "overall_auc": res["overall"]["auc"], "overall_accuracy": res["overall"]["accuracy"],
            "by_attack": {a: {"auc": r["auc"], "accuracy": r["accuracy"],
                              "n_poisoned": r["n_poisoned"], "ood": a not in train_attacks}
                          for a, r in res["by_attack"].items()}}
    return out


def run_report(params: Mapping, score_paths: Sequence[str], zoo_paths: Sequence[str],
               metrics_out: str, roc_out: str) -> None:
    """``results/metrics/backdoor.json`` and the ROC table (CSV) from the settings' scores."""
    from metamodels.backdoor import detector as D
    zoo = load_zoo(zoo_paths, weights=False)
    settings = {}
    roc_rows = ["setting,method,attack,ood,fpr,tpr"]
    for path in score_paths:
        sc = S.read_json(path)
        settings[sc["setting"]] = {**_auc_table(sc), "n_models": sc["n"]}
        train_attacks = set(sc["train_attacks"])
        for method, values in sc["scores"].items():
            s, y = np.asarray(values), np.asarray(sc["label"], bool)
            a = np.asarray(sc["attack"])
            for name in sorted(set(a[y].tolist())):
                m = ~y | (a == name)
                fpr, tpr, _ = D.roc_curve(s[m], y[m])
                ood = int(name not in train_attacks)
                roc_rows += [f"{sc['setting']},{method},{name},{ood},{f:.6g},{t:.6g}"
                             for f, t in zip(fpr, tpr)]
    attacks = zoo["attack"]
    poisoned_try = attacks != CLEAN
    asr = zoo["asr"][poisoned_try]
    zoo_summary = {
        "models": int(len(attacks)),
        "clean_models": int((~poisoned_try).sum()),
        "poison_attempts": int(poisoned_try.sum()),
        "poisoned_models": int(zoo["poisoned"].sum()),
        "asr_threshold": float(params["cnn_zoo"]["asr_threshold"]),
        "clean_acc": _quantiles(zoo["clean_acc"]),
        "clean_acc_clean_models": _quantiles(zoo["clean_acc"][~poisoned_try]),
        "asr": _quantiles(asr),
        "by_attack": {a: {"models": int((attacks == a).sum()),
                          "poisoned": int(zoo["poisoned"][attacks == a].sum()),
                          "asr_median": _median(zoo["asr"][attacks == a]),
                          "asr": _quantiles(zoo["asr"][attacks == a]),
                          "clean_acc_median": _median(zoo["clean_acc"][attacks == a]),
                          "clean_acc_minus_clean_models": _gap(zoo["clean_acc"][attacks == a],
                                                               zoo["clean_acc"][~poisoned_try])}
                      for a in sorted(set(attacks.tolist()))},
    }
    S.write_json(metrics_out, {"zoo": zoo_summary, "settings": settings})
    S.write_bytes(roc_out, ("\n".join(roc_rows) + "\n").encode())


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, float)
    return x[~np.isnan(x)]


def _quantiles(x: np.ndarray) -> dict:
    """min / p10 / median / p90 / max of the non-NaN values, rounded ({} when there are none)."""
    x = _finite(x)
    if not len(x):
        return {}
    q = np.quantile(x, [0.0, 0.1, 0.5, 0.9, 1.0])
    return dict(zip(("min", "p10", "median", "p90", "max"), (round(float(v), 4) for v in q)))


def _gap(x: np.ndarray, reference: np.ndarray) -> float | None:
    """Median of `x` minus the median of `reference` (clean accuracy points lost to a poison)."""
    a, b = _median(x), _median(reference)
    return None if a is None or b is None else round(a - b, 4)


def _median(x: np.ndarray) -> float | None:
    """Median of the non-NaN values, unrounded (None when there are none)."""
    x = _finite(x)
    return float(np.median(x)) if len(x) else None
