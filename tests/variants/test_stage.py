"""Variant zoos (metamodels.variants.stage): format, acceptance bookkeeping, report."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from metamodels.core import shards as S
from metamodels.rasp.tokenizer import Vocab
from metamodels.variants import desparsify as DS
from metamodels.variants import stage as V
from metamodels.zoo import stage as zoo
from metamodels.zoo.dataset import COLUMNS, RAGGED

pytestmark = pytest.mark.xdist_group("variants")


@pytest.fixture(scope="module")
def shard(tmp_path_factory, default_params):
    params = copy.deepcopy(default_params)
    params["zoo"].update(vocab=[1, 2, 3], max_seq_len=4, programs_per_shard=8)
    params["sampler"].update(min_length=2, max_length=4)
    params["variants"].update(programs_per_shard=6)
    d = tmp_path_factory.mktemp("variants")
    S.write_bytes(d / "vocab.json", Vocab.from_params(params).dumps().encode())
    zoo.run_sample(params, 0, str(d / "programs.json"))
    zoo.run_compile(params, str(d / "programs.json"), str(d / "vocab.json"),
                    str(d / "compiled.npz"))
    return params, d


def make(params, d, variant, **pca):
    p = copy.deepcopy(params)
    p["variants"]["pca"].update(pca)
    out = d / f"{variant}.npz"
    summary = V.run_variant(p, variant, "train", 0, str(d / "compiled.npz"), str(out))
    with np.load(out, allow_pickle=False) as z:  # readable without our code
        arrays = {k: z[k] for k in z.files}
    return summary, arrays


def test_standard_is_the_first_rows_unchanged(shard):
    params, d = shard
    summary, arrays = make(params, d, "standard")
    src = S.load_npz(d / "compiled.npz")
    assert summary["programs"] == summary["accepted"] == 6 == len(arrays["length"])
    for col in RAGGED:
        n = int(arrays[f"{col}_offsets"][-1])
        np.testing.assert_array_equal(arrays[col], src[col][:n])
    for col in ("length", "n_layers", "residual_width", "n_params", "source", "layout_json"):
        np.testing.assert_array_equal(arrays[col], src[col][:6])
    assert set(COLUMNS) <= set(arrays)


def test_orthogonal_rows_are_dense_and_exact(shard):
    params, d = shard
    summary, arrays = make(params, d, "orthogonal")
    src = S.load_npz(d / "compiled.npz")
    assert summary["accepted"] == 6 and summary["rejected"] == []
    inputs = zoo.verification_inputs(params)
    for i in range(6):
        original, rotated = zoo.model_of(src, i), zoo.model_of(arrays, i)
        assert rotated.residual_size == original.residual_size
        assert not np.allclose(zoo.row(arrays, i)["weights"], zoo.row(src, i)["weights"])
        assert DS.agreement(original, rotated, inputs, 1e-3)["inputs"] == 1.0
        meta = json.loads(str(arrays["meta_json"][i]))
        assert meta["variant"]["name"] == "orthogonal" and meta["variant"]["agreement"] == 1.0
        assert json.loads(str(arrays["program_json"][i])) == json.loads(str(src["program_json"][i]))


def test_pca_rejections_are_recorded_not_dropped(shard):
    params, d = shard
    summary, arrays = make(params, d, "pca", ratio=0.5, min_fidelity=1.0)
    kept = [json.loads(str(m))["variant"] for m in arrays["meta_json"]]
    rejected = summary["rejected"]
    assert len(kept) + len(rejected) == summary["programs"] == 6
    assert rejected, "halving the residual stream of these programs must lose some outputs"
    assert all(k["agreement"] == 1.0 for k in kept)
    assert all(r["agreement"] < 1.0 and r["source"] for r in rejected)
    assert all(k["residual_width"] == DS.compressed_width(k["teacher_residual_width"], 0.5)
               for k in kept + rejected)
    assert json.loads(str(arrays["shard_json"][0]))["rejected"] == rejected
    src = S.load_npz(d / "compiled.npz")
    kept_sources = set(arrays["source"].tolist())
    assert kept_sources == {str(src["source"][i]) for i in range(6)} - {r["source"] for r in rejected}


def test_report_counts_every_program(shard, tmp_path):
    params, d = shard
    make(params, d, "standard")
    make(params, d, "pca", ratio=0.5, min_fidelity=1.0)
    metrics, histories = [], []
    for name, acc in (("standard", 0.9), ("pca", 0.5)):
        m, h = tmp_path / f"{name}_m.json", tmp_path / f"{name}_h.json"
        S.write_json(m, {"test_token_accuracy": acc, "test_exact_accuracy": 0.0,
                         "test_functional_equivalence": 0.1, "test_wellformed": 1.0,
                         "test_verified_accuracy": 0.4, "test_programs": 3, "test_loss": 1.0, "by_length": {},
                         "decoding": "constrained"})
        S.write_json(h, {"train_programs": 5, "val_programs": 2,
                         "history": [{"step": 1, "val_token_accuracy": acc}]})
        metrics.append(str(m))
        histories.append(str(h))
    doc = V.run_report(["standard", "pca"], [str(d / "standard.npz"), str(d / "pca.npz")],
                       metrics, histories, str(tmp_path / "v.csv"), str(tmp_path / "v.json"))
    lines = (tmp_path / "v.csv").read_text().splitlines()
    assert lines[0].split(",") == list(V.CSV_FIELDS)
    rows = [dict(zip(V.CSV_FIELDS, line.split(","))) for line in lines[1:]]
    assert [r["variant"] for r in rows] == ["standard", "pca"]
    pca = doc["variants"]["pca"]["zoo"]
    assert pca["programs"] == 6 and pca["accepted"] + len(pca["rejected"]) == 6
    assert float(rows[1]["acceptance_rate"]) == pytest.approx(pca["accepted"] / 6)
    assert rows[0]["acceptance_rate"] == "1.0" and rows[0]["agreement_median"] == ""
    assert float(rows[1]["width_ratio_median"]) < 0.6
    from metamodels.variants.figure import figure_variants
    figure_variants(str(tmp_path / "v.json"), str(tmp_path / "f.pdf"))
    assert (tmp_path / "f.pdf").read_bytes()[:4] == b"%PDF"


def test_distill_ratio_is_one_number_or_one_per_kind():
    assert V.distill_ratio({"ratio": 0.5}, "compressed") == 0.5
    both = {"ratio": {"compressed": 0.8, "natural": 0.5}}
    assert V.distill_ratio(both, "compressed") == 0.8 and V.distill_ratio(both, "natural") == 0.5
