"""De-sparsified and distilled zoos, and the decompiler compared across them.

One job per (variant, split, dataset shard) turns the first
``variants.programs_per_shard`` programs of ``data/dataset/{split}/shard_JJJ.npz``
into ``data/variants/{variant}/{split}/shard_JJJ.npz``, a shard in the
zoo's own format (docs/data-formats.md), so the decompiler trains on any
variant unchanged:

``standard``    the compiled weights as they are (the same programs as the others);
``orthogonal``  residual stream rotated by a random orthogonal matrix (exact);
``pca``         rotated, then compressed to ``ratio``·D dims by PCA (seed 001 §3.2);
``compressed``  tracr's blocks frozen, a learned D×D' embedding (thesis ch. 6);
``natural``     the same architecture with every parameter learned (thesis ch. 7).

Rows whose model fails the variant's acceptance test (output agreement with
the compiled model, and for students a per-layer loss bound) are left out of
the shard's columns and listed with their figures under ``rejected`` in its
``shard_json``; every kept row's ``meta_json`` carries its figures under
``variant``. Seeds come from ``variants.seed`` and (variant, split, shard, row).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Mapping, Sequence

import numpy as np

from metamodels.core import shards as S
from metamodels.core.config import distill_ratio  # noqa: F401 - part of this stage's API
from metamodels.variants import desparsify as DS
from metamodels.zoo import dataset as D
from metamodels.zoo import stage as zoo
from metamodels.zoo.compiler import CompiledModel

VARIANTS = ("standard", "orthogonal", "pca", "compressed", "natural")
STUDENTS = ("compressed", "natural")
FORMAT_VERSION = 1


def row_seed(params: Mapping, variant: str, split: str, shard: int, row: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(entropy=params["variants"]["seed"], spawn_key=(
        VARIANTS.index(variant), D.SPLITS.index(split), shard, row))


def activation_inputs(inputs: Sequence[np.ndarray], n: int,
                      rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` inputs drawn without replacement from the domain ``inputs`` (grouped by length)."""
    total = sum(len(x) for x in inputs)
    picks = np.sort(rng.choice(total, size=min(n, total), replace=False))
    out, start = [], 0
    for x in inputs:
        mine = picks[(picks >= start) & (picks < start + len(x))] - start
        out.append(x[mine])
        start += len(x)
    return out


def _desparsified(params: Mapping, variant: str, model: CompiledModel,
                  seed: np.random.SeedSequence, inputs: Sequence[np.ndarray]) -> dict:
    rng = np.random.default_rng(seed)
    if variant == "orthogonal":
        new, threshold = DS.orthogonal_variant(model, rng), 1.0
    else:
        p = params["variants"]["pca"]
        acts = activation_inputs(inputs, p["activation_samples"], rng)
        new, threshold = DS.pca_variant(model, rng, p["ratio"], acts), p["min_fidelity"]
    fid = DS.agreement(model, new, inputs, params["verify"]["atol"])
    return {"model": new, "accepted": fid["inputs"] >= threshold, "agreement": fid["inputs"],
            "position_agreement": fid["positions"], "undecided_positions": fid["undecided"]}


def _figures(result: Mapping, d: int) -> dict[str, Any]:
    figs = {k: v for k, v in result.items() if k not in ("model", "C")}
    figs["residual_width"] = result["model"].residual_size
    figs["teacher_residual_width"] = d
    return figs


def run_variant(params: Mapping, variant: str, split: str, shard: int, in_path: str,
                out_path: str, timing_out: str | None = None) -> dict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; one of {VARIANTS}")
    v = params["variants"]
    arrays = S.load_npz(in_path)
    cap = v["programs_per_shard"]
    n = len(arrays["length"]) if cap is None else min(cap, len(arrays["length"]))
    inputs = zoo.verification_inputs(params)
    t0, c0 = time.perf_counter(), time.process_time()
    teachers = [zoo.model_of(arrays, i) for i in range(n)]
    label = f"{variant} {split}/{shard:03d}"
    report = zoo.progress(label)
    if variant == "standard":
        results = [{"model": m, "accepted": True} for m in teachers]
    elif variant in STUDENTS:
        from metamodels.variants.distill import distill
        seeds = [int(row_seed(params, variant, split, shard, i).generate_state(1)[0])
                 for i in range(n)]
        cfg = dict(v["distill"], ratio=distill_ratio(v["distill"], variant))
        results = distill(teachers, variant, cfg, seeds, inputs,
                          params["verify"]["atol"], progress=report)
    else:
        results = []
        for i, m in enumerate(teachers):
            results.append(_desparsified(params, variant, m,
                                         row_seed(params, variant, split, shard, i), inputs))
            report(i + 1, n)
    cpu_s, wall_s = time.process_time() - c0, time.perf_counter() - t0
    kept = [i for i, r in enumerate(results) if r["accepted"]]
    rejected = [dict(_figures(results[i], teachers[i].residual_size), row=i,
                     source=str(arrays["source"][i]))
                for i, r in enumerate(results) if not r["accepted"]]
    out = pack(arrays, kept, [results[i]["model"] for i in kept],
               [_figures(results[i], teachers[i].residual_size) for i in kept], variant)
    summary = {"format_version": FORMAT_VERSION, "variant": variant, "split": split,
               "shard": shard, "source_shard": in_path, "programs": n, "accepted": len(kept),
               "rejected": rejected}
    out["shard_json"] = S.text_array([S.dumps_json(summary)])
    S.save_npz(out_path, out)
    if timing_out:  # kept out of the shard, whose bytes depend on the params only
        S.write_json(timing_out, {"variant": variant, "programs": n, "accepted": len(kept),
                                  "cpu_s": cpu_s, "wall_s": wall_s})
    print(f"[variant {label}] {len(kept)}/{n} accepted, {cpu_s:.1f} CPU-s, {wall_s:.1f} s",
          file=sys.stderr)
    return summary


def pack(arrays: Mapping[str, np.ndarray], rows: Sequence[int], models: Sequence[CompiledModel],
         figures: Sequence[Mapping], variant: str) -> dict[str, np.ndarray]:
    """Columns of a variant shard: rows of ``arrays`` with their weights replaced by ``models``."""
    picked = D.take([arrays], [(0, i) for i in rows])
    metas = []
    for i, m, figs in zip(rows, models, figures):
        meta = json.loads(str(arrays["meta_json"][i]))
        meta.update(residual_width=m.residual_size, n_params=m.num_params, model=m.metadata(),
                    variant=dict(figs, name=variant))
        metas.append(meta)
    weights, offsets = S.ragged([m.flat() for m in models], np.float32)
    k = len(rows)
    picked.update(
        weights=weights, weights_offsets=offsets,
        residual_width=np.array([m.residual_size for m in models], np.int32).reshape(k),
        n_params=np.array([m.num_params for m in models], np.int64).reshape(k),
        layout_json=S.json_array([m.layout() for m in models]),
        meta_json=S.json_array(metas))
    return picked


# ---------------------------------------------------------------------------
# report: results/variants.csv and results/metrics/variants.json

CSV_FIELDS = ("variant", "zoo_programs", "zoo_accepted", "acceptance_rate", "agreement_median",
              "agreement_min", "width_ratio_median", "train_programs",
              "val_programs", "test_programs", "test_token_accuracy", "test_exact_accuracy",
              "test_functional_equivalence", "test_wellformed", "test_verified_accuracy")


def zoo_figures(shard_paths: Sequence[str]) -> dict[str, dict]:
    """Per variant: programs attempted and accepted, agreement and width ratio."""
    acc: dict[str, dict] = {}
    for path in shard_paths:
        arrays = S.load_npz(path, keys=["meta_json", "shard_json"])
        info = json.loads(str(arrays["shard_json"][0]))
        a = acc.setdefault(info["variant"], {"programs": 0, "accepted": 0, "agreement": [],
                                             "width_ratio": [], "rejected": []})
        a["programs"] += info["programs"]
        a["accepted"] += info["accepted"]
        figs = [json.loads(str(m))["variant"] for m in arrays["meta_json"]]
        figs += info["rejected"]
        a["rejected"] += [dict(r, split=info["split"], shard=info["shard"])
                          for r in info["rejected"]]
        a["agreement"] += [f["agreement"] for f in figs if "agreement" in f]
        a["width_ratio"] += [f["residual_width"] / f["teacher_residual_width"] for f in figs]
    out = {}
    for name, a in acc.items():
        agree = np.asarray(a["agreement"], np.float64)
        out[name] = {
            "programs": a["programs"], "accepted": a["accepted"],
            "acceptance_rate": a["accepted"] / a["programs"] if a["programs"] else None,
            "agreement": _quantiles(agree),
            "width_ratio_median": float(np.median(a["width_ratio"])) if a["width_ratio"] else None,
            "rejected": a["rejected"],
        }
    return out


def _quantiles(x: np.ndarray) -> dict | None:
    if not len(x):
        return None
    q = np.quantile(x, [0.0, 0.1, 0.5, 0.9, 1.0])
    return {"min": float(q[0]), "p10": float(q[1]), "median": float(q[2]), "p90": float(q[3]),
            "max": float(q[4]), "mean": float(x.mean()), "n": int(len(x))}


def run_report(names: Sequence[str], shard_paths: Sequence[str], metrics_paths: Sequence[str],
               history_paths: Sequence[str], csv_out: str, json_out: str) -> dict:
    if not len(names) == len(metrics_paths) == len(history_paths):
        raise ValueError("give one --metrics and one --history per --names entry")
    zoos = zoo_figures(shard_paths)
    rows, doc = [], {"variants": {}}
    for name, mpath, hpath in zip(names, metrics_paths, history_paths):
        if name not in zoos:
            raise ValueError(f"no variant shard among --shards is of variant {name!r}")
        m, h, z = S.read_json(mpath), S.read_json(hpath), zoos[name]
        doc["variants"][name] = {
            "zoo": z, "decompiler": {k: m[k] for k in m if k.startswith("test_") or k in
                                     ("by_length", "decoding")},
            "train_programs": h["train_programs"], "val_programs": h["val_programs"],
            "history": h["history"]}
        agree = z["agreement"] or {}
        rows.append({
            "variant": name, "zoo_programs": z["programs"], "zoo_accepted": z["accepted"],
            "acceptance_rate": z["acceptance_rate"], "agreement_median": agree.get("median"),
            "agreement_min": agree.get("min"), "width_ratio_median": z["width_ratio_median"],
            "train_programs": h["train_programs"], "val_programs": h["val_programs"],
            **{k: m[k] for k in CSV_FIELDS if k.startswith("test_")}})
    S.write_bytes(csv_out, S.csv_text(rows, list(CSV_FIELDS)).encode())
    S.write_json(json_out, doc)
    return doc

